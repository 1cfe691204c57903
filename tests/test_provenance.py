"""Results you can trust: what each attempt ran from, stale cells, one study per root,
the submissions history, and reports that say which cells their figures stand on."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import cells, load_manifest, rewrite_npz, run_cli
from gridsubmit.demo.generate import make_study

SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "manifest.schema.json").read_text())
ORDER = [f"dose_{d}/{v}/{s}" for d in (1000, 10000, 100000) for v in ("dense", "sparse") for s in ("train", "test")]
CELL = "dose_1000/dense/train"


def attempts(root: Path) -> dict[str, int]:
    return {key: len(cell["attempts"]) for key, cell in cells(root).items()}


def test_every_attempt_records_what_it_ran_from(finished, tmp_path):
    study, root = finished
    manifest = load_manifest(root)
    jsonschema.validate(manifest, SCHEMA)
    [submission] = manifest["submissions"]
    assert submission["submitted"] == ORDER and submission["stale_left"] == []
    assert submission["versions"]["gridsubmit"] and submission["versions"]["submitit"] and submission["versions"]["python"]
    assert submission["cluster"]["backend"] == "local" and submission["user"] and submission["host"]
    assert submission["command"].startswith("gridsubmit submit --study")
    for cell in manifest["jobs"]:
        [attempt] = cell["attempts"]
        assert attempt["submission"] == 1 and len(attempt["fingerprint"]) == 16
        assert attempt["max_rss_bytes"] > 2**20 and attempt["cpu_s"] > 0  # the node's figures, locally too
        assert attempt["workdir"] == str(tmp_path / "work") and attempt["argv"] == cell["argv"]
        assert attempt["options"] == cell["options"] and attempt["options"]["ms_ssim_sigma"] == 1.0
        for name, path in cell["inputs"].items():
            st = os.stat(path)
            assert attempt["inputs"][name] == {"path": path, "size": st.st_size, "mtime": st.st_mtime}
    out = subprocess.run([sys.executable, "-m", "gridsubmit", "status", str(root), CELL], capture_output=True, text=True).stdout
    assert "input phase_c_npz:" in out and "bytes, modified" in out and "not in a git repository" in out


def test_a_changed_input_makes_exactly_its_cells_stale_and_only_rerun_stale_runs_them(finished, capsys):
    study, root = finished
    path = cells(root)[CELL]["inputs"]["phase_c_npz"]
    users = {key for key, cell in cells(root).items() if path in cell["inputs"].values()}
    assert CELL in users and len(users) < 12
    rewrite_npz(path)
    capsys.readouterr()
    assert run_cli("status", root) == 0
    out = capsys.readouterr().out
    stale_lines = [line for line in out.splitlines() if "stale: input phase_c_npz changed" in line]
    assert sorted(line.split()[0] for line in stale_lines) == sorted(users)

    before = attempts(root)
    assert run_cli("submit", "--study", study, "--artifact-root", root, "--quiet") == 1  # stale left: no success
    out = capsys.readouterr().out
    assert f"{len(users)} COMPLETED cell(s) are stale" in out and "nothing to run" in out and CELL in out
    assert attempts(root) == before  # plain submit reruns nothing

    assert run_cli("submit", "--study", study, "--artifact-root", root, "--quiet", "--rerun-stale") == 0
    after = attempts(root)
    assert {key for key in after if after[key] != before[key]} == users
    assert all(after[key] == 2 for key in users)
    manifest = load_manifest(root)
    assert [c["key"] for c in manifest["jobs"]] == ORDER
    assert manifest["submissions"][-1]["submitted"] == [k for k in ORDER if k in users]
    assert manifest["submissions"][-1]["rerun"]["stale"] is True
    assert all(not c["stale"] for c in manifest["jobs"])
    capsys.readouterr()
    run_cli("status", root)
    assert "stale" not in capsys.readouterr().out


def test_a_changed_option_makes_every_cell_stale(finished, capsys, tmp_path):
    study, root = finished
    data = yaml.safe_load(Path(study).read_text())
    data.setdefault("options", {})["ms_ssim_sigma"] = 2.0
    changed = Path(study).with_name("sigma2.yaml")
    changed.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert run_cli("plan", "--study", changed, "--artifact-root", root) == 0
    out = capsys.readouterr().out
    assert out.count("stale: option ms_ssim_sigma: 1.0 -> 2.0") == 12 and "0 would run" in out
    before = attempts(root)
    assert run_cli("submit", "--study", changed, "--artifact-root", root, "--quiet") == 1  # stale left: no success
    assert "12 COMPLETED cell(s) are stale" in capsys.readouterr().out
    assert attempts(root) == before
    assert all(c["stale"] == ["option ms_ssim_sigma: 1.0 -> 2.0"] for c in cells(root).values())
    assert run_cli("report", root, "--require-complete") == 1  # stale figures are not a complete report
    assert "0 of 12 cells contribute" in capsys.readouterr().out
    assert run_cli("submit", "--study", changed, "--artifact-root", root, "--quiet", "--rerun-stale", "--dose", 1000) == 1
    assert "8 stale" in capsys.readouterr().out  # the other doses: still stale, so no success yet
    now = cells(root)
    assert {k for k, c in now.items() if len(c["attempts"]) == 2} == {k for k in ORDER if k.startswith("dose_1000/")}
    assert all("--ms-ssim-sigma" in c["argv"] and c["argv"][c["argv"].index("--ms-ssim-sigma") + 1] == "2.0"
               for k, c in now.items() if k.startswith("dose_1000/"))  # fmt: skip
    assert [c["key"] for c in load_manifest(root)["jobs"]] == ORDER  # a filtered rerun keeps the study's order
    history = load_manifest(root)["submissions"]
    assert [h["filters"]["dose"] for h in history] == [[], [], [1000]]


def test_another_study_into_the_same_root_is_refused_and_changes_nothing(finished, capsys):
    study, root = finished
    data = yaml.safe_load(Path(study).read_text())
    data["name"] = "another-study"
    other = Path(study).with_name("other.yaml")
    other.write_text(yaml.safe_dump(data))
    before = (root / "comparison_manifest.json").read_bytes()
    capsys.readouterr()
    assert run_cli("submit", "--study", other, "--artifact-root", root, "--quiet") == 2
    err = capsys.readouterr().err
    assert "another study" in err and "'fly64-synthetic' here, 'another-study' now" in err
    assert "new --artifact-root" in err and "--rerun-all" in err and "Traceback" not in err
    assert (root / "comparison_manifest.json").read_bytes() == before
    assert run_cli("submit", "--study", other, "--artifact-root", root, "--quiet", "--dose", 1000, "--rerun-all") == 0
    manifest = load_manifest(root)
    assert manifest["study"]["name"] == "another-study"
    assert {k: len(c["attempts"]) for k, c in cells(root).items()} == {k: 2 if k.startswith("dose_1000/") else 1 for k in ORDER}


def test_rerun_one_cell_and_refuse_an_unknown_one(finished, capsys):
    study, root = finished
    before = (root / "comparison_manifest.json").read_bytes()
    assert run_cli("submit", "--study", study, "--artifact-root", root, "--rerun", "dose_7/dense/train") == 2
    assert "--rerun dose_7/dense/train: no such cell" in capsys.readouterr().err
    assert (root / "comparison_manifest.json").read_bytes() == before
    assert run_cli("submit", "--study", study, "--artifact-root", root, "--quiet", "--rerun", CELL) == 0
    assert {k for k, n in attempts(root).items() if n == 2} == {CELL}
    assert load_manifest(root)["submissions"][-1]["rerun"]["cells"] == [CELL]


def test_a_command_that_exits_0_without_its_metrics_never_completes(scripted, capsys):
    study, profile, root = scripted({"*": "nometrics"}, doses=(1000,))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 1
    for cell in cells(root).values():
        assert cell["state"] == "FAILED"
        assert cell["attempts"][-1]["error"] == "exit 0 but comparison_metrics.csv missing"
    capsys.readouterr()
    assert run_cli("report", root, "--require-complete") == 1
    out = capsys.readouterr().out
    assert "0 of 4 cells contribute" in out
    assert out.count("FAILED: exit 0 but comparison_metrics.csv missing") == 4


def test_report_flags_nan_and_empty_metrics_and_require_complete_passes_only_when_complete(scripted, capsys):
    study, profile, root = scripted({"dose_1000/dense/train": "nan", "dose_1000/dense/test": "norows"}, doses=(1000,))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    capsys.readouterr()
    assert run_cli("report", root, "--require-complete") == 1
    out = capsys.readouterr().out
    assert "3 of 4 cells contribute" in out
    assert "not included: dose_1000/dense/test: no metrics: no rows" in out
    assert "flagged: dose_1000/dense/train: 1 value(s) NaN or infinite: pinn mae" in out
    ok_study, ok_profile, ok_root = scripted({}, doses=(1000,))
    ok_root = ok_root.with_name("ok")
    assert run_cli("submit", "--study", ok_study, "--cluster", ok_profile, "--artifact-root", ok_root, "--quiet") == 0
    assert run_cli("report", ok_root, "--require-complete") == 0
    assert "4 of 4 cells contribute" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_a_run_from_a_git_repository_records_its_commit_and_whether_it_was_dirty(tmp_path, monkeypatch):
    repo = tmp_path / "study-repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True, text=True).stdout.strip()  # noqa: E731
    git("init", "-q")
    (repo / "compare.py").write_text("# the study's code\n")
    git("add", "compare.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "v1")
    monkeypatch.chdir(repo)
    study = make_study(tmp_path / "study", doses=(1000,))
    root = tmp_path / "run"
    assert run_cli("submit", "--study", study, "--artifact-root", root, "--quiet") == 0
    git_state = load_manifest(root)["submissions"][0]["git"]
    assert git_state == {"commit": git("rev-parse", "HEAD"), "dirty": False, "repository": str(repo)}
    (repo / "compare.py").write_text("# changed, not committed\n")
    assert run_cli("submit", "--study", study, "--artifact-root", root, "--quiet", "--rerun", CELL) == 0
    manifest = load_manifest(root)
    assert manifest["submissions"][1]["git"]["dirty"] is True
    assert manifest["jobs"][0]["attempts"][1]["submission"] == 2


def test_hash_inputs_records_sha256_and_a_touched_input_is_not_stale(finished, capsys):
    study, root = finished
    assert run_cli("submit", "--study", study, "--artifact-root", root, "--quiet", "--rerun", CELL, "--hash-inputs") == 0
    attempt = cells(root)[CELL]["attempts"][-1]
    path = attempt["inputs"]["phase_c_npz"]["path"]
    assert attempt["inputs"]["phase_c_npz"]["sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    os.utime(path, (1e9, 1e9))  # touched: new mtime, same bytes
    capsys.readouterr()
    run_cli("status", root)
    out = capsys.readouterr().out
    assert not [line for line in out.splitlines() if line.startswith(CELL) and "stale" in line]
    rewrite_npz(path)
    run_cli("status", root)
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith(CELL) and "stale: input phase_c_npz" in line]


def test_gpu_model_and_driver_come_from_nvidia_smi_for_the_gpus_the_cell_saw(scripted, tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    smi = bindir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '0, GPU-aaaa, NVIDIA H100 80GB HBM3, 550.54.15'\n"
                   "echo '1, GPU-bbbb, NVIDIA A100-SXM4-40GB, 550.54.15'\n")  # fmt: skip
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")  # captured at submit, seen by every task
    study, profile, root = scripted({}, doses=(1000,), gpus=[0, 1], gpus_per_job=1)
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    names = {"0": "NVIDIA H100 80GB HBM3", "1": "NVIDIA A100-SXM4-40GB"}
    for cell in cells(root).values():
        attempt = cell["attempts"][-1]
        assert attempt["gpu_name"] == names[attempt["gpus"]] and attempt["gpu_driver"] == "550.54.15"
