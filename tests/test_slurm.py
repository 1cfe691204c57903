"""The SLURM backend against the real test cluster (scripts/slurm-test-cluster up)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from conftest import cells, gridsubmit_process, job_ids, load_manifest, results, run_cli, sacct_jobs, sacct_settled, wait_for

pytestmark = pytest.mark.slurm
SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "manifest.schema.json").read_text())
SLURM_DIR = Path(os.environ.get("SLURM_TEST_DIR", "/var/tmp/gridsubmit-slurm"))


def prefix(root: Path) -> str:
    return f"gs-{load_manifest(root)['run_id']}-"


def test_grid_on_the_gpu_partition_completes_with_one_distinct_gpu_per_running_job(slurm_scripted):
    study, profile, root = slurm_scripted({"*": "sleep-ok:3"})
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    manifest = load_manifest(root)
    jsonschema.validate(manifest, SCHEMA)
    assert {c["state"] for c in manifest["jobs"]} == {"COMPLETED"}
    runs = results(root)
    assert len(runs) == 12
    for r in runs:
        ids = r["cuda_visible_devices"].split(",")
        assert len(ids) == 1 and ids[0] in {"0", "1", "2", "3"}, r["cuda_visible_devices"]
        assert r["scheduler"]["SLURM_JOB_PARTITION"] == "gpu"
    overlapping = 0
    for a in runs:
        for b in runs:
            if a is not b and a["started_at"] < b["ended_at"] and b["started_at"] < a["ended_at"]:
                overlapping += 1
                assert a["cuda_visible_devices"] != b["cuda_visible_devices"]
    assert overlapping > 0  # the jobs did run side by side
    for cell in manifest["jobs"]:
        attempt = cell["attempts"][0]
        assert attempt["gpus"] in {"0", "1", "2", "3"} and attempt["node"]
        assert Path(attempt["script"]).is_file() and "--gres=gpu:1" in Path(attempt["script"]).read_text()
        assert attempt["job_name"].startswith(prefix(root))
    for cell in manifest["jobs"]:  # the node's figures and provenance on every attempt
        attempt = cell["attempts"][0]
        assert attempt["elapsed_s"] >= 3 and attempt["max_rss_bytes"] > 0 and attempt["cpu_s"] >= 0
        assert attempt["submission"] == 1
        assert attempt["workdir"] == manifest["context"]["workdir"] and attempt["fingerprint"]
        assert all(ident["size"] is not None for ident in attempt["inputs"].values() if ident)
        # sacct's own record where it had one when the run ended; the run did not wait for the rest
        assert attempt.get("scheduler_state") == "COMPLETED" or attempt["accounting"] == "pending"
    pending = [c["key"] for c in manifest["jobs"] if c["attempts"][0].get("accounting")]
    sacct_settled(prefix(root), job_ids(root), final=True)
    assert run_cli("wait", root, "--quiet") == 0  # the next runner on the root fills in what sacct had not
    after = load_manifest(root)
    jsonschema.validate(after, SCHEMA)
    for cell in after["jobs"]:
        attempt = cell["attempts"][0]
        assert "accounting" not in attempt, (cell["key"], pending)
        assert attempt["elapsed"] and attempt["scheduler_state"] == "COMPLETED"
    assert any(c["attempts"][0].get("max_rss") for c in after["jobs"])  # MaxRSS from the step rows


def test_exit_code_timeout_and_cancel_are_told_apart_while_healthy_cells_complete(slurm_scripted):
    study, profile, root = slurm_scripted(
        {"dose_1000/dense/train": "exit:3", "dose_1000/dense/test": "sleep:600", "dose_1000/sparse/train": "sleep:600"},
        overrides=[{"match": {"dose": 1000, "view": "dense", "split": "test"}, "set": {"time": 1}}],
    )
    proc = gridsubmit_process("submit", "--study", study, "--cluster", profile, "--artifact-root", root)
    wait_for(lambda: (root / "comparison_manifest.json").exists()
             and cells(root)["dose_1000/sparse/train"]["state"] == "RUNNING", timeout=60, what="the cell to cancel to run")
    assert run_cli("cancel", root, "--dose", 1000, "--view", "sparse", "--split", "train") == 0
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    c = cells(root)
    failed = c["dose_1000/dense/train"]["attempts"][-1]
    assert (c["dose_1000/dense/train"]["state"], failed["returncode"]) == ("FAILED", 3)
    assert "failing on purpose with 3" in failed["stderr_tail"]
    assert c["dose_1000/dense/test"]["state"] == "TIMEOUT"
    assert c["dose_1000/sparse/train"]["state"] == "CANCELLED"
    healthy = [k for k in c if k not in ("dose_1000/dense/train", "dose_1000/dense/test", "dose_1000/sparse/train")]
    assert {c[k]["state"] for k in healthy} == {"COMPLETED"}
    states = {job_id: state for job_id, _, state, _ in sacct_settled(prefix(root), job_ids(root))}
    assert states[c["dose_1000/dense/test"]["attempts"][-1]["job_id"]] == "TIMEOUT"
    assert states[c["dose_1000/sparse/train"]["attempts"][-1]["job_id"]].startswith("CANCELLED")


def test_twenty_five_cells_with_max_array_size_ten_go_out_as_three_arrays_all_collected(slurm_scripted):
    study, profile, root = slurm_scripted({}, doses=(1, 2, 3, 4, 5), views=("dense", "sparse", "v3", "v4", "v5"), splits=("test",))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    manifest = load_manifest(root)
    assert manifest["n_jobs"] == 25 and manifest["n_success"] == 25
    arrays = {}
    for cell in manifest["jobs"]:
        attempt = cell["attempts"][0]
        arrays.setdefault(attempt["array_job_id"], []).append(attempt["array_task_id"])
    assert sorted(len(tasks) for tasks in arrays.values()) == [5, 10, 10]
    assert all(sorted(tasks) == list(range(len(tasks))) for tasks in arrays.values())
    assert len({job_id for job_id, *_ in sacct_settled(prefix(root), job_ids(root))}) == 25


def test_sigkill_after_submission_and_again_mid_run_then_wait_submits_nothing_twice(slurm_scripted):
    study, profile, root = slurm_scripted({"*": "sleep-ok:4"})
    proc = gridsubmit_process("submit", "--study", study, "--cluster", profile, "--artifact-root", root)
    wait_for(lambda: (root / "comparison_manifest.json").exists()
             and all(c["attempts"] and c["attempts"][-1]["job_id"] for c in cells(root).values()), what="all job ids")
    proc.send_signal(signal.SIGKILL)  # right after submission
    proc.wait()
    waiter = gridsubmit_process("wait", root)
    wait_for(lambda: sum(c["state"] == "COMPLETED" for c in cells(root).values()) >= 1, timeout=120, what="a completed cell")
    waiter.send_signal(signal.SIGKILL)  # mid-run
    waiter.wait()
    assert run_cli("wait", root, "--quiet") == 0
    c = cells(root)
    assert {cell["state"] for cell in c.values()} == {"COMPLETED"}
    assert all(len(cell["attempts"]) == 1 for cell in c.values())
    sacct_settled(prefix(root), job_ids(root))
    time.sleep(2)  # and no thirteenth arriving late
    jobs = sacct_jobs(prefix(root))
    assert len(jobs) == 12 and len({j[0] for j in jobs}) == 12  # exactly one job per cell


def test_jobs_submitted_just_before_the_submitter_died_are_adopted_by_name(slurm_scripted, monkeypatch):
    from gridsubmit.runner import Runner

    study, profile, root = slurm_scripted({"*": "sleep-ok:1"}, doses=(1000,))

    def die_before_recording(self, handles):
        if handles:
            raise KeyboardInterrupt  # sbatch returned, the job ids never reached the manifest

    monkeypatch.setattr(Runner, "_record_handles", die_before_recording)
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 130
    monkeypatch.undo()
    assert all(c["attempts"][-1]["job_id"] is None for c in cells(root).values())
    wait_for(lambda: len(sacct_jobs(prefix(root))) == 4, timeout=30, what="4 jobs in sacct")  # submitted all the same
    assert run_cli("wait", root, "--quiet") == 0
    c = cells(root)
    assert {cell["state"] for cell in c.values()} == {"COMPLETED"}
    assert all(len(cell["attempts"]) == 1 and cell["attempts"][0]["adopted"] for cell in c.values())
    assert len(sacct_jobs(prefix(root))) == 4


def test_the_grid_completes_through_squeue_and_result_files_while_slurmdbd_is_down(slurm_scripted):
    study, profile, root = slurm_scripted({"*": "sleep-ok:1"}, doses=(1000,))
    pid = int((SLURM_DIR / "run" / "slurmdbd.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    try:
        wait_for(lambda: subprocess.run(["sacct", "-n"], capture_output=True).returncode != 0, timeout=30, what="sacct to fail")
        assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0
        assert {c["state"] for c in cells(root).values()} == {"COMPLETED"}
    finally:
        subprocess.run([str(Path(__file__).parents[1] / "scripts" / "slurm-test-cluster"), "up"], check=True)


def test_a_per_condition_override_reaches_sbatch(slurm_scripted):
    study, profile, root = slurm_scripted({}, doses=(1000, 10000),
                                          overrides=[{"match": {"dose": ">=10000"}, "set": {"time": "0:07:00"}}])
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    limits = {job_id: limit for job_id, _, _, limit in sacct_settled(prefix(root), job_ids(root))}
    for cell in cells(root).values():
        attempt = cell["attempts"][0]
        expected = "00:07:00" if cell["dose"] == 10000 else "00:10:00"
        assert limits[attempt["job_id"]] == expected, cell["key"]
        assert f"--time={7 if cell['dose'] == 10000 else 10}" in Path(attempt["script"]).read_text()


def test_dry_run_prints_each_groups_sbatch_script_and_submits_nothing(slurm_scripted, capsys, tmp_path, monkeypatch):
    study, profile, root = slurm_scripted({}, overrides=[{"match": {"split": "test"}, "set": {"partition": "cpu"}}])
    spy = tmp_path / "bin"
    spy.mkdir()
    (spy / "sbatch").write_text(f"#!/bin/sh\ntouch {tmp_path}/sbatch-called\nexit 1\n")
    (spy / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{spy}:{os.environ['PATH']}")
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--dry-run") == 0
    out = capsys.readouterr().out
    assert out.count("#!/bin/bash") == 2  # two resource groups
    assert "#SBATCH --partition=gpu" in out and "#SBATCH --partition=cpu" in out and "#SBATCH --array=0-5%6" in out
    assert "dose_1000/dense/train" in out
    assert not root.exists() and not (tmp_path / "sbatch-called").exists()


def test_a_submission_the_cluster_refuses_is_a_clear_error_with_nothing_left_unrecorded(slurm_scripted, capsys):
    study, profile, root = slurm_scripted({}, doses=(1000,), partition="no-such-partition")
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root) == 2
    err = capsys.readouterr().err
    assert "sbatch refused" in err and "invalid partition" in err.lower()
    assert all(c["attempts"] == [] and c["state"] == "PLANNED" for c in cells(root).values())


@pytest.mark.parametrize("cells_run", [1, 4])
def test_a_node_failure_is_resubmitted_as_a_new_attempt_and_never_also_requeued_by_slurm(slurm_scripted, cells_run):
    # the shipped default retry policy covers NODE_FAIL; SLURM's own requeue is switched off
    study, profile, root = slurm_scripted({"*": "sleep-once:60"}, doses=(1000,))
    only = ["--view", "dense", "--split", "train"] if cells_run == 1 else []
    proc = gridsubmit_process("submit", "--study", study, "--cluster", profile, "--artifact-root", root, *only)
    try:
        wait_for(lambda: (root / "comparison_manifest.json").exists()
                 and all(c["state"] == "RUNNING" for c in cells(root).values()), timeout=60, what="the cells to run")
        subprocess.run(["scontrol", "update", "nodename=localhost", "state=down", "reason=gridsubmit-test"], check=True)
        wait_for(lambda: all(len(c["attempts"]) == 2 for c in cells(root).values()), timeout=90, what="second attempts")
    finally:  # the test cluster returns a DOWN node by itself (ReturnToService=2); make sure
        subprocess.run(["scontrol", "update", "nodename=localhost", "state=resume"], capture_output=True)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    assert len(cells(root)) == cells_run
    for cell in cells(root).values():
        attempts = cell["attempts"]
        assert [a["state"] for a in attempts] == ["NODE_FAIL", "COMPLETED"], attempts
        assert attempts[0]["job_id"] != attempts[1]["job_id"]
        assert "--no-requeue" in Path(attempts[1]["script"]).read_text()
        # the interrupted run, then one complete run: SLURM did not run the first job again
        assert len((Path(cell["output_dir"]) / "runs.log").read_text().splitlines()) == 2
    time.sleep(3)  # anything SLURM requeued would be back in the queue by now
    names = ",".join(sorted({a["job_name"] for c in cells(root).values() for a in c["attempts"]}))
    queued = subprocess.run(["squeue", "-h", "--name", names], capture_output=True, text=True).stdout
    assert queued.strip() == "", queued


def test_the_demo_runs_on_the_test_clusters_gpu_partition_with_the_shipped_profile(slurm_cluster, tmp_path):
    profile = Path(__file__).parents[1] / "cluster_configs" / "slurm-ci.yaml"
    root = tmp_path / "demo"
    assert run_cli("demo", "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    manifest = load_manifest(root)
    assert manifest["n_success"] == 12 and manifest["cluster"]["name"] == "slurm-ci"
    assert all(c["metrics"] for c in manifest["jobs"])
    assert {r["scheduler"]["SLURM_JOB_PARTITION"] for r in results(root)} == {"gpu"}


def test_the_real_study_grid_runs_in_the_submit_directory_with_the_captured_environment_and_reruns_the_same_way(
        slurm_cluster, tmp_path):  # fmt: skip
    from study_layout import FAIL_FILE, build_study_tree, make_study_repo, read_runs, studylib_env

    roots = build_study_tree(tmp_path / "artifacts", doses=(500,))
    repo = make_study_repo(tmp_path / "PtychoPINN")
    flags = [f"--{name.replace('_', '-')}-root={path}" for name, path in roots.items()]
    profile = tmp_path / "slurm.yaml"
    profile.write_text(json.dumps({"backend": "slurm", "partition": "gpu", "gpus_per_job": 1, "cpus_per_task": 1,
                                   "time": "0:10:00", "poll_interval": {"min": 1, "max": 3}}))  # fmt: skip
    (repo / FAIL_FILE).write_text("dose_500/sparse/train\n")
    root = tmp_path / "run"
    submit = ["submit", *flags, "--cluster", profile, "--artifact-root", root, "--quiet"]
    first = subprocess.run([sys.executable, "-m", "gridsubmit", *map(str, submit)], cwd=repo, env=studylib_env(), capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert first.returncode == 1, first.stdout + first.stderr
    c = cells(root)
    assert [k for k, cell in c.items() if cell["state"] != "COMPLETED"] == ["dose_500/sparse/train"]
    (repo / FAIL_FILE).unlink()
    bare = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # sbatch exports this shell's environment
    again = subprocess.run([sys.executable, "-m", "gridsubmit", *map(str, submit), "--rerun-failed"], cwd=tmp_path, env=bare, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    c = cells(root)
    assert {cell["state"] for cell in c.values()} == {"COMPLETED"}
    for key, cell in c.items():
        runs = read_runs(Path(cell["output_dir"]))
        assert [r["cwd"] for r in runs] == [str(repo)] * (2 if key == "dose_500/sparse/train" else 1)
        assert "--tike_recon_path" in runs[-1]["argv"] and runs[-1]["cuda"] in {"0", "1", "2", "3"}


def test_a_held_job_is_shown_held_with_its_reason_and_wait_does_not_wait_silently(slurm_scripted, capsys):
    study, profile, root = slurm_scripted({}, doses=(1000,), sbatch_extra={"hold": True})
    args = ["--study", study, "--cluster", profile, "--artifact-root", root, "--view", "dense", "--split", "train"]
    assert run_cli("submit", *args, "--no-wait", "--quiet") == 0
    job = cells(root)["dose_1000/dense/train"]["attempts"][0]["job_id"]
    try:
        assert run_cli("wait", root, "--quiet", "--timeout", 6) == 3
        assert "the run goes on" in capsys.readouterr().err
        assert run_cli("status", root) == 0
        assert "held or stuck: JobHeldUser" in capsys.readouterr().out
        assert run_cli("wait", root, "--quiet", "--fail-on-held") == 4
        err = capsys.readouterr().err
        assert "waits for someone to act" in err and "JobHeldUser" in err and job in err
    finally:
        subprocess.run(["scontrol", "release", job], capture_output=True)
    assert run_cli("wait", root, "--quiet") == 0
    assert cells(root)["dose_1000/dense/train"]["state"] == "COMPLETED"


def test_odd_artifact_and_study_paths_and_an_interpreter_path_with_a_space_run_every_cell(slurm_cluster, tmp_path, capsys):
    from gridsubmit.demo.generate import make_study

    odd = tmp_path / "odd 'q' \"dq\" $(touch INJECTED) `true`; x & y"  # % is refused up front (test_bad_input)
    study = make_study(odd / "study", doses=(1000,))
    wrapper = tmp_path / "my env" / "bin" / "python"  # an interpreter whose path has a space
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    profile = tmp_path / "slurm.yaml"
    profile.write_text(json.dumps({"backend": "slurm", "partition": "gpu", "gpus_per_job": 1, "time": "0:10:00",
                                   "python": str(wrapper), "poll_interval": {"min": 1, "max": 2}}))  # fmt: skip
    root = odd / "run"
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--no-wait") == 0
    view = tmp_path / "view"  # a read-only view of the live run: status never writes
    view.mkdir()
    if subprocess.run(["mount", "--bind", str(root), str(view)], capture_output=True).returncode == 0:
        try:
            subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], capture_output=True, check=True)
            capsys.readouterr()
            assert run_cli("status", view) == 0 and "dose_1000/sparse/test" in capsys.readouterr().out
        finally:
            subprocess.run(["umount", str(view)], capture_output=True)
    assert run_cli("wait", root, "--quiet") == 0
    assert {c["state"] for c in cells(root).values()} == {"COMPLETED"} and len(cells(root)) == 4
    assert not list(tmp_path.rglob("INJECTED"))
    logs = list((root / ".gridsubmit" / "submitit").glob("*_0_log.out"))  # SLURM wrote its logs where submitit looks
    assert len(logs) == 4 and all("%" not in p.name for p in logs)


def test_a_job_that_waits_shows_why_in_status(slurm_scripted, capsys):
    study, profile, root = slurm_scripted({}, doses=(1000,), sbatch_extra={"begin": "now+1hour"})
    args = ["--study", study, "--cluster", profile, "--artifact-root", root, "--view", "dense", "--split", "train"]
    assert run_cli("submit", *args, "--no-wait", "--quiet") == 0
    try:
        assert run_cli("wait", root, "--quiet", "--timeout", 4) == 3
        capsys.readouterr()
        assert run_cli("status", root) == 0
        assert "waiting: BeginTime" in capsys.readouterr().out
    finally:
        assert run_cli("cancel", root) == 0
    assert cells(root)["dose_1000/dense/train"]["state"] == "CANCELLED"


def test_a_job_that_cannot_start_its_task_says_why_from_its_own_log(slurm_scripted, tmp_path):
    # the interpreter on the node lacks gridsubmit (a module not loaded, another environment)
    bare = tmp_path / "bare" / "python"
    bare.parent.mkdir()
    bare.write_text("#!/bin/sh\necho \"$0: No module named 'gridsubmit' (ModuleNotFoundError)\" >&2\nexit 1\n")
    bare.chmod(0o755)
    study, profile, root = slurm_scripted({}, doses=(1000,), views=("dense",), splits=("train",), python=str(bare))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 1
    attempt = cells(root)["dose_1000/dense/train"]["attempts"][0]
    assert attempt["state"] == "FAILED" and "no result.json" in attempt["error"]
    assert f"_0_log.err says: {bare}: No module named 'gridsubmit' (ModuleNotFoundError)" in attempt["error"]
