"""Code is an input: the script a command runs and the study's code_paths, judged by content."""

import json
import subprocess
import sys

import jsonschema
import pytest
import yaml

from conftest import load_manifest
from study_layout import build_study_tree, make_study_repo, read_runs, studylib_env
from test_real_study import SCHEMA

GRIDSUBMIT = [sys.executable, "-m", "gridsubmit"]
CELLS = [f"dose_500/{v}/{s}" for v in ("dense", "sparse") for s in ("train", "test")]


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                   check=True, capture_output=True)  # fmt: skip


@pytest.fixture
def study_repo(tmp_path):
    """The stand-in study repository as a git repository (no scripts/__init__.py), its artifact
    tree, and a study file that names its code_paths."""
    roots = build_study_tree(tmp_path / "artifacts", doses=(500,))
    repo = make_study_repo(tmp_path / "PtychoPINN")
    (repo / "README.md").write_text("the study\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "study")
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"code_paths": ["studies/**/*.py"]}))
    flags = [f"--{name.replace('_', '-')}-root={path}" for name, path in roots.items()]
    return repo, ["--study", study, *flags], tmp_path / "run"


def gridsubmit(*args, cwd):
    return subprocess.run([*GRIDSUBMIT, *map(str, args)], cwd=cwd, env=studylib_env(), capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def stale_lines(repo, root):
    proc = gridsubmit("status", root, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    return {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("dose_")}


def test_an_edited_script_makes_every_cell_stale_and_a_commit_of_other_files_does_not(study_repo):
    repo, flags, root = study_repo
    proc = gridsubmit("submit", *flags, "--artifact-root", root, "--quiet", cwd=repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = load_manifest(root)
    jsonschema.validate(manifest, SCHEMA)
    first = manifest["jobs"][0]["attempts"][-1]
    # the module of `python -m scripts.compare_models`, found in the namespace package, hashed per attempt
    assert first["code"]["script"]["path"] == "scripts/compare_models.py" and len(first["code"]["script"]["sha256"]) == 16
    assert first["code"]["paths"]["globs"] == ["studies/**/*.py"] and first["code"]["paths"]["files"] == 3
    assert set(manifest["code_trees"][first["code"]["paths"]["sha256"]]) == {
        "studies/__init__.py", "studies/fly64_dose_overlap/__init__.py", "studies/fly64_dose_overlap/comparison.py"}
    commit = manifest["submissions"][-1]["git"]
    assert commit["dirty"] is False and len(commit["commit"]) == 40
    assert all("stale" not in line for line in stale_lines(repo, root).values())

    # a commit that changes only the README: nothing is stale, and the next submit records the new commit
    (repo / "README.md").write_text("the study, better explained\n")
    git(repo, "commit", "-q", "-am", "docs")
    assert all("stale" not in line for line in stale_lines(repo, root).values())
    proc = gridsubmit("submit", *flags, "--artifact-root", root, "--quiet", cwd=repo)
    assert proc.returncode == 0 and "nothing to run" in proc.stdout, proc.stdout + proc.stderr
    submissions = load_manifest(root)["submissions"]
    assert submissions[-1]["git"]["commit"] != commit["commit"] and submissions[-1]["git"]["dirty"] is False

    # the script edited: every cell is stale, for that reason, in status
    script = repo / "scripts" / "compare_models.py"
    original = script.read_text()
    script.write_text(original + "\n# a change of the comparison\n")
    lines = stale_lines(repo, root)
    assert set(lines) == set(CELLS)
    assert all("stale: code: scripts/compare_models.py changed" in line for line in lines.values()), lines
    status = json.loads(gridsubmit("status", root, "--json", cwd=repo).stdout)
    assert {c["key"]: c["stale"] for c in status["jobs"]} == {k: ["code: scripts/compare_models.py changed"] for k in CELLS}

    # put back as it was (a new mtime, the same bytes): fresh again
    script.write_text(original)
    assert all("stale" not in line for line in stale_lines(repo, root).values())

    # a file of code_paths edited: named as the reason
    helper = repo / "studies" / "fly64_dose_overlap" / "comparison.py"
    helper.write_text(helper.read_text() + "\n# tuned\n")
    lines = stale_lines(repo, root)
    assert all("stale: code: studies/fly64_dose_overlap/comparison.py changed" in line for line in lines.values()), lines

    # --rerun-stale runs them again, once each, and they are fresh after
    proc = gridsubmit("submit", *flags, "--artifact-root", root, "--quiet", "--rerun-stale", cwd=repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cells = {c["key"]: c for c in load_manifest(root)["jobs"]}
    assert all(len(read_runs(cells[k]["output_dir"])) == 2 for k in CELLS)
    assert all("stale" not in line for line in stale_lines(repo, root).values())


def test_code_paths_must_be_relative_globs(tmp_path):
    from gridsubmit import load_study
    from gridsubmit.errors import ConfigError

    for bad in (["/abs/*.py"], ["../other/*.py"], [""], "ptycho/*.py"):
        with pytest.raises(ConfigError, match="code_paths"):
            load_study({"code_paths": bad})
    assert load_study({"code_paths": ["ptycho/**/*.py"]}).code_paths == ("ptycho/**/*.py",)
