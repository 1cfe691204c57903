"""The local backend with real subprocesses: the promises a workstation user relies on."""

import json
import os
import select
import signal
import time
from pathlib import Path

import jsonschema
import pytest

from conftest import cells, gridsubmit_process, load_manifest, results, run_cli, wait_for
from gridsubmit.demo.generate import make_study

SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "manifest.schema.json").read_text())
ORDER = [f"dose_{d}/{v}/{s}" for d in (1000, 10000, 100000) for v in ("dense", "sparse") for s in ("train", "test")]


def test_demo_grid_completes_with_metrics_and_a_manifest_that_validates(tmp_path, capsys):
    study = make_study(tmp_path / "study")
    root = tmp_path / "run"
    assert run_cli("submit", "--study", study, "--artifact-root", root, "--quiet") == 0
    manifest = load_manifest(root)
    jsonschema.validate(manifest, SCHEMA)
    assert [c["key"] for c in manifest["jobs"]] == ORDER
    assert {c["state"] for c in manifest["jobs"]} == {"COMPLETED"}
    assert (manifest["n_jobs"], manifest["n_executed"], manifest["n_success"], manifest["n_failed"]) == (12, 12, 12, 0)
    for cell in manifest["jobs"]:
        assert {row["model"] for row in cell["metrics"]} == {"PtychoPINN", "Baseline", "pty-chi"}
        psnr_rows = [row for row in cell["metrics"] if row["metric"] == "psnr"]
        assert len(psnr_rows) == 3 and all(isinstance(row["amplitude"], float) and isinstance(row["phase"], float)
                                           for row in psnr_rows)  # fmt: skip
        assert cell["argv"][1:3] == ["-m", "gridsubmit.demo.compare"]
        # the reconstruction was found through the Phase F manifest and passed on
        recon = cell["inputs"]["reconstruction"]
        assert cell["argv"][cell["argv"].index("--tike_recon_path") + 1] == recon
        assert cell["pointers"]["reconstruction"]["file"] == cell["inputs"]["phase_f_manifest"]
    for result in manifest["execution_results"]:
        assert result["returncode"] == 0 and Path(result["log_path"]).is_file()
        assert Path(result["phase_c_npz"]).is_file() and Path(result["phase_f_manifest"]).is_file()
    # more photons, better reconstruction
    psnr = {c["dose"]: next(r["amplitude"] for r in c["metrics"] if r["model"] == "pty-chi" and r["metric"] == "psnr")
            for c in manifest["jobs"] if c["view"] == "dense" and c["split"] == "test"}
    assert psnr[1000] < psnr[10000] < psnr[100000]
    assert "dose_1000/dense/train" in (root / "comparison_summary.txt").read_text()


def test_failures_timeouts_cancels_and_blocked_cells_are_told_apart_while_healthy_cells_complete(scripted, tmp_path):
    study, profile, root = scripted(
        {"dose_1000/dense/train": "exit:3", "dose_1000/dense/test": "sleep:60", "dose_1000/sparse/train": "sleep:60"},
        overrides=[{"match": {"dose": 1000, "view": "dense", "split": "test"}, "set": {"time": "0:02"}}],
    )
    missing = tmp_path / "study" / "phase_c" / "dose_10000" / "sparse" / "sparse_test.npz"
    missing.unlink()
    proc = gridsubmit_process("submit", "--study", study, "--cluster", profile, "--artifact-root", root)
    wait_for(lambda: (root / "comparison_manifest.json").exists()
             and cells(root)["dose_1000/sparse/train"]["state"] == "RUNNING", what="the cell to cancel to run")
    assert run_cli("cancel", root, "--dose", 1000, "--view", "sparse", "--split", "train") == 0
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    c = cells(root)
    failed = c["dose_1000/dense/train"]
    assert failed["state"] == "FAILED"
    assert failed["attempts"][-1]["returncode"] == 3
    assert "failing on purpose with 3" in failed["attempts"][-1]["stderr_tail"]
    assert c["dose_1000/dense/test"]["state"] == "TIMEOUT"
    assert c["dose_1000/sparse/train"]["state"] == "CANCELLED"
    blocked = c["dose_10000/sparse/test"]
    assert blocked["state"] == "BLOCKED" and blocked["attempts"] == []
    assert blocked["missing"] == [f"phase_c_npz: {missing} does not exist"]
    others = set(c) - {"dose_1000/dense/train", "dose_1000/dense/test", "dose_1000/sparse/train", "dose_10000/sparse/test"}
    assert {c[k]["state"] for k in others} == {"COMPLETED"}
    manifest = load_manifest(root)
    assert (manifest["n_executed"], manifest["n_success"], manifest["n_failed"], manifest["n_blocked"]) == (11, 8, 3, 1)
    jsonschema.validate(manifest, SCHEMA)
    assert "sparse_test.npz does not exist" in out and "FAILED" in out


def _overlaps(intervals):
    """Largest number of [start, end) intervals open at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    depth = best = 0
    for _, step in events:
        depth += step
        best = max(best, depth)
    return best


def test_max_parallel_is_never_exceeded(scripted):
    study, profile, root = scripted({"*": "sleep-ok:0.4"}, max_parallel=3)
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    intervals = [(r["started_at"], r["ended_at"]) for r in results(root)]
    assert len(intervals) == 12
    assert _overlaps(intervals) == 3  # the cap is reached, and never exceeded


def test_concurrent_jobs_see_distinct_single_gpu_ids(scripted, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    study, profile, root = scripted({"*": "sleep-ok:0.3"}, max_parallel=8)  # capped at 2 by the GPUs
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    runs = results(root)
    assert {r["cuda_visible_devices"] for r in runs} == {"0", "1"}
    for a in runs:
        for b in runs:
            if a is not b and a["started_at"] < b["ended_at"] and b["started_at"] < a["ended_at"]:
                assert a["cuda_visible_devices"] != b["cuda_visible_devices"]
    # the command itself saw the id (cellcmd logs its environment)
    seen = {line.split()[2] for c in cells(root).values() for line in (Path(c["output_dir"]) / "runs.log").read_text().splitlines()}
    assert seen == {"0", "1"}


def test_wait_after_sigkill_of_the_submitter_finishes_the_grid_without_running_a_cell_twice(scripted):
    study, profile, root = scripted({"*": "sleep-ok:1"}, max_parallel=2)
    proc = gridsubmit_process("submit", "--study", study, "--cluster", profile, "--artifact-root", root)
    wait_for(lambda: (root / "comparison_manifest.json").exists()
             and sum(c["state"] == "COMPLETED" for c in cells(root).values()) >= 3, what="3 cells to complete")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = cells(root)
    assert any(c["state"] in ("RUNNING", "PENDING") for c in before.values())
    assert run_cli("wait", root, "--quiet") == 0
    after = cells(root)
    assert {c["state"] for c in after.values()} == {"COMPLETED"}
    for key, cell in after.items():
        runs = (Path(cell["output_dir"]) / "runs.log").read_text().splitlines()
        lost = sum(a["state"] == "LOST" for a in cell["attempts"])
        assert len(runs) == 1 + lost, key  # ran again only after being LOST
        assert len(cell["attempts"]) == 1 + lost


def test_a_second_submit_is_refused_naming_the_holder_and_wait_follows_the_run_to_its_end(scripted, capsys):
    study, profile, root = scripted({"*": "sleep-ok:0.5"})
    proc = gridsubmit_process("submit", "--study", study, "--cluster", profile, "--artifact-root", root)
    try:
        wait_for(lambda: (root / ".gridsubmit" / "holder.json").exists() and (root / "comparison_manifest.json").exists(),
                 what="the first runner to hold the lock")
        before = (root / "comparison_manifest.json").read_bytes()
        assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root) == 2
        err = capsys.readouterr().err
        assert "in use by 'gridsubmit submit'" in err and f"pid {proc.pid}" in err
        assert run_cli("wait", root, "--quiet") == 0  # follows the first runner, returns when it is done
        assert {c["state"] for c in cells(root).values()} == {"COMPLETED"}
    finally:
        proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert before != (root / "comparison_manifest.json").read_bytes()


def test_resubmit_skips_completed_cells_and_rerun_failed_runs_failed_ones_again(scripted, tmp_path):
    study, profile, root = scripted({"dose_1000/dense/train": "exit:3"}, doses=(1000,))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 1
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 1
    c = cells(root)
    assert all(len(cell["attempts"]) == 1 for cell in c.values())
    (tmp_path / "behaviours.json").write_text("{}")
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet", "--rerun-failed") == 0
    c = cells(root)
    assert [a["state"] for a in c["dose_1000/dense/train"]["attempts"]] == ["FAILED", "COMPLETED"]
    assert all(len(cell["attempts"]) == 1 for k, cell in c.items() if k != "dose_1000/dense/train")


def test_invalid_utf8_and_huge_output_keep_the_manifest_valid_and_small(scripted):
    study, profile, root = scripted({"dose_1000/dense/train": "binary", "dose_1000/dense/test": "big:50000000"}, doses=(1000,))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 1
    manifest = load_manifest(root)
    jsonschema.validate(manifest, SCHEMA)
    assert (root / "comparison_manifest.json").stat().st_size < 100_000
    c = {cell["key"]: cell for cell in manifest["jobs"]}
    binary = c["dose_1000/dense/train"]["attempts"][0]
    assert "bad bytes \ufffd" in binary["stdout_tail"] and "not utf-8" in binary["stderr_tail"]
    big = c["dose_1000/dense/test"]["attempts"][0]
    assert (root / big["stdout"]).stat().st_size >= 50_000_000  # the whole log is kept on disk
    assert len(big["stdout_tail"].encode()) <= 8192 and len(big["stdout_tail"].splitlines()) <= 50
    ok = c["dose_1000/sparse/train"]["attempts"][0]
    assert ok["state"] == "COMPLETED" and "stdout_tail" not in ok  # a completed cell's logs stay on disk only


def test_no_wait_returns_at_once_and_a_detached_runner_finishes_the_grid(scripted):
    study, profile, root = scripted({"*": "sleep-ok:0.2"}, doses=(1000,))
    start = time.monotonic()
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--no-wait") == 0
    assert time.monotonic() - start < 5
    wait_for(lambda: all(c["state"] == "COMPLETED" for c in cells(root).values()), timeout=60, what="the detached runner")
    wait_for(lambda: not (root / ".gridsubmit" / "holder.json").exists(), what="the runner to let go")


def test_status_and_report_read_a_finished_run(scripted, capsys, tmp_path):
    study, profile, root = scripted({}, doses=(1000,))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    capsys.readouterr()
    before = (root / "comparison_manifest.json").read_bytes()
    assert run_cli("status", root) == 0
    assert "dose_1000/sparse/test" in capsys.readouterr().out
    assert run_cli("status", root, "--json") == 0
    assert json.loads(capsys.readouterr().out)["n_success"] == 4
    assert run_cli("report", root, "--csv", tmp_path / "m.csv") == 0
    lines = (tmp_path / "m.csv").read_text().splitlines()  # the command wrote wide metrics: read as tidy rows
    assert lines[0] == "dose,view,split,model,metric,amplitude,phase,value" and "1000,dense,train,pinn,psnr,,,30.5" in lines
    assert before == (root / "comparison_manifest.json").read_bytes()


def test_a_job_whose_process_vanishes_without_a_result_is_lost_and_run_again(scripted):
    study, profile, root = scripted({"dose_1000/dense/train": "kill-wrapper-once"}, doses=(1000,))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    cell = cells(root)["dose_1000/dense/train"]
    assert [a["state"] for a in cell["attempts"]] == ["LOST", "COMPLETED"]
    assert "no result.json" in cell["attempts"][0]["error"]
    assert len((Path(cell["output_dir"]) / "runs.log").read_text().splitlines()) == 2


def test_a_timeout_is_retried_with_more_time_when_the_profile_says_so(scripted):
    study, profile, root = scripted({"dose_1000/dense/train": "sleep-ok:2.5"}, doses=(1000,), time="0:01",
                                    retry={"states": ["TIMEOUT"], "max_attempts": 2, "time_factor": 4})
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    attempts = cells(root)["dose_1000/dense/train"]["attempts"]
    assert [a["state"] for a in attempts] == ["TIMEOUT", "COMPLETED"]
    assert [a["resources"]["time_s"] for a in attempts] == [1, 4]


def run_processes(root: Path) -> list[str]:
    """Live processes of the run: the runner, the tasks and the commands name the artifact root
    on their command line (the spec and output folders are under it) or in their environment."""
    found = []
    needle = str(root).encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X") and (needle in cmdline or needle in environ):
            found.append(f"{pid}: {cmdline.replace(bytes(1), b' ').decode(errors='replace')[:160]}")
    return found


def command_runs(cell: dict) -> int:
    """How often the cell's command ran: cellcmd appends one line per run."""
    log = Path(cell["output_dir"]) / "runs.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.mark.parametrize("to", ["group", "pid"])
@pytest.mark.parametrize("after_s", [1, 3, 6])
def test_ctrl_c_on_a_local_submit_cancels_every_cell_and_leaves_no_process_of_the_run(scripted, after_s, to):
    # 12 cells of 2.5 s on 2 slots: interrupted in the first wave, the second, or after some completed
    study, profile, root = scripted({"*": "sleep-ok:2.5"})
    proc = gridsubmit_process("submit", "--study", study, "--cluster", profile, "--artifact-root", root,
                              start_new_session=True)  # its own process group, like a terminal's job
    time.sleep(after_s)
    if to == "group":
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    else:
        os.kill(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "local jobs were cancelled" in out, out
    wait_for(lambda: not run_processes(root), timeout=3, what=f"no process of the run left: {run_processes(root)}")
    if not (root / "comparison_manifest.json").exists():  # interrupted before anything was recorded
        assert not list(root.rglob("runs.log"))
        return
    c = cells(root)
    states = {key: cell["state"] for key, cell in c.items()}
    assert set(states.values()) <= {"COMPLETED", "CANCELLED"}, states  # never LOST, FAILED or left RUNNING
    cancelled = sum(state == "CANCELLED" for state in states.values())
    assert f"{12 - cancelled} completed, 0 failed, {cancelled} cancelled" in out, out
    for key, cell in c.items():
        runs = command_runs(cell)
        assert len(cell["attempts"]) <= 1 and runs <= len(cell["attempts"]), (key, runs, cell["attempts"])
        if cell["state"] == "CANCELLED" and runs:  # stopped while it ran: its task says so, its partial log is kept
            attempt = cell["attempts"][0]
            result = json.loads((root / attempt["dir"] / "result.json").read_text())
            assert result["interrupted_by"] == "SIGTERM" and result["signals_sent"] == ["SIGTERM (forwarded)"]
            assert "doing sleep-ok" in (root / attempt["stdout"]).read_text()


def test_a_pipe_reader_sees_the_end_as_soon_as_gridsubmit_exits(scripted):
    # `gridsubmit submit ... | tee log`: the cells' processes never hold gridsubmit's stdout
    study, profile, root = scripted({"*": "sleep:60"}, doses=(1000,))
    proc = gridsubmit_process("submit", "--study", study, "--cluster", profile, "--artifact-root", root)
    try:
        wait_for(lambda: (root / "comparison_manifest.json").exists()
                 and sum(c["state"] == "RUNNING" for c in cells(root).values()) == 2, what="running cells")
        proc.kill()  # the cells run on; the reader must not wait for them
        proc.wait()
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], deadline - time.monotonic())
            if ready and os.read(fd, 65536) == b"":
                break
        else:
            raise AssertionError(f"no end of file 5 s after gridsubmit exited; still holding it: {run_processes(root)}")
        assert any(c["state"] == "RUNNING" for c in cells(root).values())
    finally:
        assert run_cli("cancel", root) == 0
        proc.stdout.close()
    assert not run_processes(root)


def test_a_closed_terminal_leaves_the_run_recorded_and_a_background_runner_finishes_it(scripted):
    study, profile, root = scripted({"*": "sleep-ok:1.5"}, doses=(1000,))
    proc = gridsubmit_process("submit", "--study", study, "--cluster", profile, "--artifact-root", root,
                              start_new_session=True)  # fmt: skip
    running = wait_for(lambda: (root / "comparison_manifest.json").exists()
                       and [k for k, c in cells(root).items() if c["state"] == "RUNNING"], what="running cells")
    os.killpg(proc.pid, signal.SIGHUP)  # the terminal went away
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 129 and "Traceback" not in out, out
    c = cells(root)
    for key in running:  # what runs is recorded: the process by pid and start time
        attempt = c[key]["attempts"][-1]
        assert attempt["job_id"] and attempt["process_start"], attempt
    wait_for(lambda: {cell["state"] for cell in cells(root).values()} == {"COMPLETED"}, timeout=60,
             what="the background runner to finish the grid")  # fmt: skip
    wait_for(lambda: not run_processes(root), timeout=10, what=f"no process left: {run_processes(root)}")
    for key, cell in cells(root).items():
        assert len(cell["attempts"]) == 1 and command_runs(cell) == 1, (key, cell["attempts"])


def test_cancel_with_no_runner_attached_cancels_only_the_selected_cells(scripted):
    study, profile, root = scripted({"*": "sleep-ok:3", "dose_1000/sparse/test": "sleep:60"}, doses=(1000,), max_parallel=4)
    proc = gridsubmit_process("submit", "--study", study, "--cluster", profile, "--artifact-root", root)
    wait_for(lambda: (root / "comparison_manifest.json").exists()
             and cells(root)["dose_1000/sparse/test"]["state"] == "RUNNING", what="the long cell to run")
    proc.send_signal(signal.SIGKILL)  # the runner is gone; the jobs run on
    proc.wait()
    start = time.monotonic()
    assert run_cli("cancel", root, "--view", "sparse", "--split", "test") == 0
    assert time.monotonic() - start < 15  # did not wait for the other cells
    assert cells(root)["dose_1000/sparse/test"]["state"] == "CANCELLED"
    assert run_cli("wait", root, "--quiet") == 1  # the rest complete; the cancelled cell makes it 1
    c = cells(root)
    assert {k: cell["state"] for k, cell in c.items()} == {
        "dose_1000/dense/train": "COMPLETED", "dose_1000/dense/test": "COMPLETED",
        "dose_1000/sparse/train": "COMPLETED", "dose_1000/sparse/test": "CANCELLED"}
    assert all(len(cell["attempts"]) == 1 for cell in c.values())


def test_switching_backend_while_cells_are_active_is_refused(scripted, tmp_path, capsys):
    study, profile, root = scripted({"*": "sleep-ok:1"}, doses=(1000,))
    proc = gridsubmit_process("submit", "--study", study, "--cluster", profile, "--artifact-root", root)
    wait_for(lambda: (root / "comparison_manifest.json").exists()
             and any(c["state"] == "RUNNING" for c in cells(root).values()), what="a running cell")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    slurm = tmp_path / "slurm.yaml"
    slurm.write_text("backend: slurm\ntime: 10\n")
    assert run_cli("submit", "--study", study, "--cluster", slurm, "--artifact-root", root) == 2
    assert "still active on the local backend" in capsys.readouterr().err
    assert run_cli("wait", root, "--quiet") == 0


def test_a_metrics_csv_of_neither_shape_is_flagged_in_the_manifest_status_and_report(tmp_path, capsys):
    write = ("import sys, pathlib; out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True); "
             "(out / 'comparison_metrics.csv').write_text('model,name,value\\npinn,psnr,30.5\\npinn,ssim,0.9\\n')")
    study = make_study(tmp_path / "study", doses=(1000,), command=["{python}", "-c", write, "{output_dir}"])
    root = tmp_path / "run"
    assert run_cli("submit", "--study", study, "--artifact-root", root, "--quiet", "--dose", 1000, "--view", "dense",
                   "--split", "test") == 0  # fmt: skip
    manifest = load_manifest(root)
    jsonschema.validate(manifest, SCHEMA)
    [cell] = manifest["jobs"]
    why = "neither tidy nor wide: column value without a 'metric' column, read as metrics named value"
    assert cell["state"] == "COMPLETED" and cell["metrics_warning"] == why
    capsys.readouterr()
    assert run_cli("status", root) == 0
    assert f"metrics flagged: {why}" in capsys.readouterr().out
    assert run_cli("status", root, "dose_1000/dense/test") == 0
    assert f"  metrics flagged: {why}" in capsys.readouterr().out.splitlines()
    assert run_cli("report", root) == 0
    assert f"  flagged: dose_1000/dense/test: {why}" in capsys.readouterr().out.splitlines()
