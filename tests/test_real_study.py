"""The real study as it is: its Phase F manifests, its repository as working directory, its
metrics, its Python call site and its pytest, on a stand-in of the study repository."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import load_manifest
from gridsubmit import GridExecutor, JobKey, Run, load_study
from gridsubmit.errors import ConfigError
from gridsubmit.study import plan
from study_layout import FAIL_FILE, STUDYLIB, build_study_tree, make_study_repo, read_runs, studylib_env

SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "manifest.schema.json").read_text())
GRIDSUBMIT = [sys.executable, "-m", "gridsubmit"]
CELLS = [f"dose_{d}/{v}/{s}" for d in (500, 1000, 2000) for v in ("dense", "sparse") for s in ("train", "test")]


@pytest.fixture
def study(tmp_path):
    """The study's artifact tree and a copy of its repository (no scripts/__init__.py)."""
    roots = build_study_tree(tmp_path / "artifacts")
    repo = make_study_repo(tmp_path / "PtychoPINN")
    assert not (repo / "scripts" / "__init__.py").exists()
    flags = [f"--{name.replace('_', '-')}-root={path}" for name, path in roots.items()]
    return repo, roots, flags


def gridsubmit(*args, cwd, env=None, timeout=300):
    return subprocess.run([*GRIDSUBMIT, *map(str, args)], cwd=cwd, env=env or studylib_env(), capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def test_plan_strict_from_the_study_repository_finds_every_cell_and_its_reconstruction(study):
    repo, roots, flags = study
    proc = gridsubmit("plan", "--strict", "--argv", *flags, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    assert "12 cells: 12 runnable, 0 blocked" in proc.stdout and proc.stderr == ""
    assert f"working directory: {repo}" in proc.stdout
    recon = roots["phase_f"] / "dose_1000_sparse_test" / "dose_1000" / "sparse" / "test" / "ptychi_reconstruction.npz"
    assert f"--tike_recon_path {recon}" in proc.stdout


def test_plan_warns_naming_the_working_directory_when_the_module_cannot_start_there(study, tmp_path):
    repo, _, flags = study
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = gridsubmit("plan", *flags, cwd=elsewhere)
    assert proc.returncode == 0 and "12 runnable" in proc.stdout
    assert "warning" in proc.stderr and "-m scripts.compare_models" in proc.stderr and str(elsewhere) in proc.stderr
    strict = gridsubmit("plan", "--strict", *flags, cwd=elsewhere)
    assert strict.returncode == 2 and "cannot start" in strict.stderr and "Traceback" not in strict.stderr
    # a study file's workdir (relative to the study file) makes it start from anywhere
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({"workdir": "PtychoPINN"}))
    assert gridsubmit("plan", "--strict", "--study", tmp_path / "study.yaml", *flags, cwd=elsewhere).returncode == 0


def test_submit_from_the_study_repository_runs_every_cell_there_with_its_reconstruction_and_reports_tidy_metrics(study, tmp_path):
    repo, roots, flags = study
    proc = gridsubmit("submit", *flags, "--artifact-root", "runs/g2", "--quiet", cwd=repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root = repo / "runs" / "g2"
    manifest = load_manifest(root)
    jsonschema.validate(manifest, SCHEMA)
    assert [c["key"] for c in manifest["jobs"]] == CELLS and {c["state"] for c in manifest["jobs"]} == {"COMPLETED"}
    assert manifest["context"]["workdir"] == str(repo) and manifest["context"]["env"]["PYTHONPATH"] == str(STUDYLIB)
    for cell in manifest["jobs"]:
        pointer = json.loads(Path(cell["inputs"]["phase_f_manifest"]).read_text())
        recon = str(Path(pointer["output_dir"]) / "ptychi_reconstruction.npz")
        assert cell["argv"][cell["argv"].index("--tike_recon_path") + 1] == recon == cell["inputs"]["reconstruction"]
        assert cell["pointers"]["reconstruction"] == {"file": cell["inputs"]["phase_f_manifest"], "field": "output_dir",
                                                      "target": recon}  # fmt: skip
        runs = read_runs(Path(cell["output_dir"]))
        assert len(runs) == 1 and runs[0]["cwd"] == str(repo)  # once, in the repository
        assert {r["model"] for r in cell["metrics"]} == {"PtychoPINN", "Baseline", "pty-chi"}
    for entry in manifest["execution_results"]:  # the study's own record, with its inputs under its names
        assert entry["returncode"] == 0 and Path(entry["log_path"]).is_file()
        assert {"phase_c_npz", "pinn_checkpoint", "baseline_checkpoint", "phase_f_manifest"} <= set(entry)

    report = gridsubmit("report", root, "--csv", tmp_path / "m.csv", "--plot", tmp_path / "m.png", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert rows[0] == "dose,view,split,model,metric,amplitude,phase,value"
    cells_in_csv = {tuple(r.split(",")[:3]) for r in rows[1:]}
    assert cells_in_csv == {(k.split("/")[0].removeprefix("dose_"), *k.split("/")[1:]) for k in CELLS}
    assert any(",pty-chi,ms_ssim," in r for r in rows) and (tmp_path / "m.png").stat().st_size > 10_000

    from gridsubmit import report as rep  # the plot has data in it: one line per model and view in each panel

    figure = rep.plot(Run.open(root).manifest, tmp_path / "again.png")
    panels = [ax for ax in figure.axes if ax.get_lines()]
    assert len(panels) == 6 and all(len(ax.get_lines()) == 6 for ax in panels)


def test_a_missing_reconstruction_leaves_the_flag_out_and_is_recorded(study, tmp_path):
    repo, roots, _ = study
    gone = roots["phase_f"] / "dose_500_dense_test" / "dose_500" / "dense" / "test" / "ptychi_reconstruction.npz"
    content = gone.read_bytes()
    gone.unlink()
    executor = GridExecutor(tmp_path / "run", {"backend": "local", "time": "5:00", "max_parallel": 2, "gpus": []})
    grid = executor.plan(load_study(None, roots), workdir=repo, filters=_only(500, "dense"))
    cell = {str(j.key): j for j in grid.jobs}["dose_500/dense/test"]
    assert not cell.blocked and cell.inputs["reconstruction"] is None and "--tike_recon_path" not in cell.argv
    env_before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(STUDYLIB)
    try:
        run = executor.submit(grid, wait=True)
    finally:
        os.environ.pop("PYTHONPATH") if env_before is None else os.environ.update(PYTHONPATH=env_before)
    cells = {c["key"]: c for c in run.manifest["jobs"]}
    assert cells["dose_500/dense/test"]["state"] == "COMPLETED"
    assert cells["dose_500/dense/test"]["inputs"]["reconstruction"] is None
    assert {r["model"] for r in cells["dose_500/dense/test"]["metrics"]} == {"PtychoPINN", "Baseline"}
    assert "--tike_recon_path" in cells["dose_500/dense/train"]["argv"]
    assert run.stale() == {}
    gone.write_bytes(content)  # the reconstruction appears after the run: its result lacks the pty-chi rows
    assert run.stale() == {"dose_500/dense/test": [f"input reconstruction: appeared ({gone})"]}
    assert Run.open(run.root).manifest["n_stale"] == 1


def _only(dose, view):
    from gridsubmit import Filters

    return Filters((dose,), (view,))


@pytest.mark.parametrize("problem, content, reason", [
    ("missing", None, "phase_f_manifest: {file} does not exist"),
    ("not JSON", "{not json", "reconstruction: pointer file {file} is not valid JSON (Expecting property name enclosed in double quotes at line 1)"),
    ("no field", json.dumps({"dose": 500}), "reconstruction: pointer file {file} has no field 'output_dir'"),
    ("not a path", json.dumps({"output_dir": 3}), "reconstruction: field 'output_dir' of {file} is not a path (got 3)"),
])  # fmt: skip
def test_a_phase_f_manifest_that_cannot_be_followed_blocks_its_cell_with_exactly_that_reason(study, tmp_path, problem,
                                                                                               content, reason):  # fmt: skip
    _, roots, _ = study
    pointer = roots["phase_f"] / "dose_1000_sparse_train" / "manifest.json"
    pointer.unlink() if content is None else pointer.write_text(content)
    grid = plan(load_study(None, roots), tmp_path / "run", workdir=tmp_path)
    blocked = {str(j.key): j for j in grid.blocked}
    assert list(blocked) == ["dose_1000/sparse/train"]
    assert blocked["dose_1000/sparse/train"].missing == (reason.format(file=pointer),)


def test_a_required_input_found_through_a_pointer_blocks_when_the_named_file_is_missing(study, tmp_path):
    _, roots, _ = study
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump({"inputs": {"reconstruction": {"optional": False}}}))
    target = roots["phase_f"] / "dose_2000_dense_train" / "dose_2000" / "dense" / "train" / "ptychi_reconstruction.npz"
    target.unlink()
    grid = plan(load_study(study_file, roots), tmp_path / "run", workdir=tmp_path)
    pointer = roots["phase_f"] / "dose_2000_dense_train" / "manifest.json"
    assert [(str(j.key), j.missing) for j in grid.blocked] == [
        ("dose_2000/dense/train", (f"reconstruction: {target} does not exist (named by field 'output_dir' of {pointer})",))]


def test_a_study_file_changes_one_input_and_keeps_the_others(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"inputs": {"phase_c_npz": {"dense": "{phase_c_root}/d{dose}_{split}.npz"},
                                               "reconstruction": {"optional": False}}}))  # fmt: skip
    study = load_study(path)
    assert list(study.inputs) == ["phase_c_npz", "pinn_checkpoint", "baseline_checkpoint", "phase_f_manifest", "reconstruction"]
    assert study.inputs["phase_c_npz"].path == {"dense": "{phase_c_root}/d{dose}_{split}.npz",
                                                "*": "{phase_c_root}/dose_{dose}/{view}/{view}_{split}.npz"}  # fmt: skip
    assert study.inputs["reconstruction"].optional is False and study.inputs["reconstruction"].field == "output_dir"
    # null removes a key; the command then may not refer to it
    path.write_text(yaml.safe_dump({"inputs": {"reconstruction": None}}))
    with pytest.raises(ConfigError, match=r"command\[13\]\.when.*'reconstruction'"):
        load_study(path)
    path.write_text(yaml.safe_dump({"inputs": {"reconstruction": None}, "command": ["{python}", "{phase_c_npz}"]}))
    assert "reconstruction" not in load_study(path).inputs


def test_an_optional_input_outside_a_conditional_item_is_refused(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"command": ["{python}", "--tike_recon_path", "{reconstruction}"]}))
    with pytest.raises(ConfigError, match=r"command\[2\].*'reconstruction' is optional"):
        load_study(path)


def test_the_environment_is_captured_once_redacted_in_the_manifest_and_applied_to_later_attempts(study, tmp_path):
    repo, _, flags = study
    env = studylib_env(STUDY_API_TOKEN="s3cret", STUDY_SETTING="on")
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({"capture_env": ["STUDY_API_TOKEN", "STUDY_SETTING"]}))
    args = ["submit", "--study", tmp_path / "study.yaml", *flags, "--dose", 500, "--view", "dense", "--artifact-root",
            tmp_path / "run", "--quiet"]  # fmt: skip
    assert gridsubmit(*args, cwd=repo, env=env).returncode == 0
    manifest = load_manifest(tmp_path / "run")
    assert manifest["context"]["env"]["STUDY_API_TOKEN"] == "<redacted>"
    assert manifest["context"]["env"]["STUDY_SETTING"] == "on"
    assert "s3cret" not in (tmp_path / "run" / "comparison_manifest.json").read_text()
    secret_file = tmp_path / "run" / ".gridsubmit" / "environment.json"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600 and json.loads(secret_file.read_text())["STUDY_API_TOKEN"] == "s3cret"


def test_rerun_from_another_directory_and_a_shell_without_pythonpath_runs_as_first_submitted(study, tmp_path):
    repo, _, flags = study
    (repo / FAIL_FILE).write_text("dose_1000/sparse/test\n")
    root = tmp_path / "run"
    first = gridsubmit("submit", *flags, "--artifact-root", root, "--quiet", cwd=repo)
    assert first.returncode == 1 and "failing on purpose" in load_manifest(root)["jobs"][7]["attempts"][0]["stderr_tail"]
    (repo / FAIL_FILE).unlink()
    bare = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    again = gridsubmit("submit", *flags, "--artifact-root", root, "--rerun-failed", "--quiet", cwd=tmp_path, env=bare)
    assert again.returncode == 0, again.stdout + again.stderr
    cells = {c["key"]: c for c in load_manifest(root)["jobs"]}
    assert {c["state"] for c in cells.values()} == {"COMPLETED"}
    runs = read_runs(Path(cells["dose_1000/sparse/test"]["output_dir"]))
    assert [r["cwd"] for r in runs] == [str(repo), str(repo)]
    assert all(len(read_runs(Path(c["output_dir"]))) == 1 for k, c in cells.items() if k != "dose_1000/sparse/test")


STUDY_TEST = '''
"""The study's own test of its comparison executor, with gridsubmit as the executor."""
from pathlib import Path

from gridsubmit import execute_comparison_jobs
from studies.fly64_dose_overlap.comparison import ComparisonJob, build_comparison_jobs

ROOTS = {roots!r}


def jobs():
    return build_comparison_jobs(ROOTS["phase_c"], ROOTS["phase_e"], ROOTS["phase_f"])


def test_every_comparison_succeeds(tmp_path, gridsubmit_cluster):
    manifest = execute_comparison_jobs(jobs=jobs(), artifact_root=tmp_path / "cmp", cluster=gridsubmit_cluster)
    assert (manifest["n_jobs"], manifest["n_executed"], manifest["n_success"], manifest["n_failed"]) == (12, 12, 12, 0)
    for job, entry in zip(jobs(), manifest["execution_results"]):
        assert (entry["dose"], entry["view"], entry["split"], entry["returncode"]) == (job.dose, job.view, job.split, 0)
        assert entry["phase_f_manifest"] == str(job.phase_f_manifest) and Path(entry["log_path"]).is_file()
        out = tmp_path / "cmp" / f"dose_{{job.dose}}" / job.view / job.split
        assert (out / "comparison_metrics.csv").is_file()
        assert "--tike_recon_path" in (out / "runs.log").read_text()


def test_a_job_with_a_missing_input_is_counted_not_raised(tmp_path, gridsubmit_cluster):
    batch = jobs()
    batch[3] = ComparisonJob(**{{**vars(batch[3]), "pinn_checkpoint": tmp_path / "nowhere" / "wts.h5.zip"}})
    manifest = execute_comparison_jobs(jobs=batch, artifact_root=tmp_path / "cmp", cluster=gridsubmit_cluster)
    assert (manifest["n_jobs"], manifest["n_success"], manifest["n_failed"]) == (12, 11, 1)
    failed = [e for e in manifest["execution_results"] if e["state"] != "COMPLETED"]
    assert len(failed) == 1 and "nowhere" in failed[0]["error"] and failed[0]["returncode"] is None
'''


def test_the_studys_own_pytest_runs_the_grid_through_execute_comparison_jobs_and_the_plugin(study):
    repo, roots, _ = study
    tests = repo / "tests" / "study"
    tests.mkdir(parents=True)
    (tests / "test_dose_overlap_comparison.py").write_text(STUDY_TEST.format(roots={k: str(v) for k, v in roots.items()}))
    env = studylib_env()
    env["PYTHONPATH"] = f"{repo}{os.pathsep}{STUDYLIB}"  # the study's tests import its packages from the repo root
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/study"], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 passed" in proc.stdout


def test_the_plugin_fixtures_run_a_grid_in_a_few_lines(gridsubmit_executor, tmp_path):
    from gridsubmit.demo.generate import make_study

    grid = gridsubmit_executor.plan(make_study(tmp_path / "demo", doses=(1000,)))
    run = gridsubmit_executor.submit(grid, wait=True)
    assert run.exit_status == 0 and run.manifest["n_success"] == 4
    assert run.root == tmp_path / "gridsubmit-run" and run.manifest["cluster"]["max_parallel"] == 2


def test_duplicate_jobs_are_refused_before_anything_runs(tmp_path):
    from gridsubmit import UsageError, execute_comparison_jobs

    class Job:
        dose, view, split = 500, "dense", "train"
        phase_c_npz = pinn_checkpoint = baseline_checkpoint = phase_f_manifest = tmp_path / "x"

    with pytest.raises(UsageError, match=r"jobs\[1\]: dose_500/dense/train is listed twice"):
        execute_comparison_jobs([Job(), Job()], tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert JobKey(500, "dense", "train") == JobKey.parse("dose_500/dense/train")
