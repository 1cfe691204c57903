"""Packing short cells into one job (cells_per_job) and capping the queue (max_queued), on
the real SLURM test cluster: each cell keeps its own attempt, fate and logs, and runs once."""

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import cells, gridsubmit_process, load_manifest, run_cli, wait_for

pytestmark = pytest.mark.slurm
KEYS = [f"dose_1000/{v}/{s}" for v in ("dense", "sparse") for s in ("train", "test")]


def runs(root: Path) -> dict[str, int]:
    """How many times each cell's command started (its own side effect, not the manifest)."""
    out = {}
    for key, cell in cells(root).items():
        log = Path(cell["output_dir"]) / "runs.log"
        out[key] = len(log.read_text().splitlines()) if log.exists() else 0
    return out


def queued_tasks(run_id: str) -> int:
    """Array tasks of the run that squeue lists now (pending ones expanded)."""
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %j"], capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if line.split()[1].startswith(f"gs-{run_id}-"))


def test_packed_cells_keep_their_own_attempt_logs_and_fate(slurm_scripted):
    study, profile, root = slurm_scripted({"dose_1000/dense/test": "exit:3"}, cells_per_job=4, gpus_per_job=0,
                                          partition="cpu")  # fmt: skip
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 1
    c = cells(root)
    by_job: dict[str, list[str]] = {}
    for key, cell in c.items():
        [attempt] = cell["attempts"]
        by_job.setdefault(attempt["job_id"], []).append(key)
        assert attempt["pack"]["size"] == 4 and (root / attempt["stdout"]).is_file()
        assert (root / attempt["dir"] / "result.json").is_file()
    assert sorted(len(keys) for keys in by_job.values()) == [4, 4, 4]  # 12 cells in 3 array tasks
    assert c["dose_1000/dense/test"]["state"] == "FAILED" and c["dose_1000/dense/test"]["attempts"][0]["returncode"] == 3
    assert {k for k, cell in c.items() if cell["state"] == "COMPLETED"} == set(c) - {"dose_1000/dense/test"}
    assert set(runs(root).values()) == {1}
    script = Path(c["dose_1000/dense/train"]["attempts"][0]["script"]).read_text()
    assert "--time=41" in script  # the job's limit covers its 4 cells of 10 minutes and their kill grace


def test_cancelling_a_cell_before_its_turn_skips_it_and_the_pack_goes_on(slurm_scripted):
    study, profile, root = slurm_scripted({"dose_1000/dense/test": "sleep-ok:4"}, doses=(1000,), cells_per_job=4,
                                          gpus_per_job=0, partition="cpu")  # fmt: skip
    proc = gridsubmit_process("submit", "--study", study, "--cluster", profile, "--artifact-root", root)
    wait_for(lambda: (root / "logs/dose_1000/dense/test/attempt-1/claim.json").exists(), what="the second cell to start")
    assert run_cli("cancel", root, "--view", "sparse", "--split", "test") == 0
    out, _ = proc.communicate(timeout=120)
    c = cells(root)
    assert {k: cell["state"] for k, cell in c.items()} == {
        "dose_1000/dense/train": "COMPLETED", "dose_1000/dense/test": "COMPLETED",
        "dose_1000/sparse/train": "COMPLETED", "dose_1000/sparse/test": "CANCELLED"}, out  # fmt: skip
    assert runs(root) == {"dose_1000/dense/train": 1, "dose_1000/dense/test": 1, "dose_1000/sparse/train": 1,
                          "dose_1000/sparse/test": 0}  # fmt: skip


def test_a_pack_stopped_mid_way_marks_exactly_the_cells_that_did_not_finish(slurm_scripted):
    study, profile, root = slurm_scripted({"dose_1000/dense/test": "sleep-once:600"}, doses=(1000,), cells_per_job=4,
                                          gpus_per_job=0, partition="cpu")  # fmt: skip
    proc = gridsubmit_process("submit", "--study", study, "--cluster", profile, "--artifact-root", root)
    # its command itself has started (a claim alone may still be cancelled before the command runs)
    wait_for(lambda: (root / "comparison_manifest.json").exists() and runs(root)["dose_1000/dense/test"] == 1,
             what="the second cell's command to start")
    job = load_manifest(root)["jobs"][1]["attempts"][0]["job_id"]
    subprocess.run(["scancel", job], check=True)  # from outside: as an operator or a preemption would
    out, _ = proc.communicate(timeout=180)
    c = cells(root)
    assert c["dose_1000/dense/train"]["state"] == "COMPLETED" and len(c["dose_1000/dense/train"]["attempts"]) == 1
    assert c["dose_1000/dense/test"]["state"] == "CANCELLED", out  # it was running
    for key in ("dose_1000/sparse/train", "dose_1000/sparse/test"):  # never started: run again, once
        first, second = c[key]["attempts"]
        assert first["state"] == "LOST" and "before this cell's turn in its pack" in first["error"]
        assert second["state"] == "COMPLETED"
    assert runs(root) == dict.fromkeys(KEYS, 1)


def test_max_queued_caps_the_queue_across_a_restart_and_every_cell_runs_once(slurm_scripted):
    study, profile, root = slurm_scripted({"*": "sleep-ok:1"}, doses=(1000, 2000, 3000, 4000, 5000), max_queued=5,
                                          gpus_per_job=0, partition="cpu")  # fmt: skip
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            if (root / "comparison_manifest.json").exists():
                peak[0] = max(peak[0], queued_tasks(load_manifest(root)["run_id"]))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        first = subprocess.run([sys.executable, "-m", "gridsubmit", "submit", "--study", str(study), "--cluster",
                                str(profile), "--artifact-root", str(root), "--no-wait"], capture_output=True, text=True)  # fmt: skip
        assert first.returncode == 0 and "15 cell(s) wait for room in the queue (max_queued: 5)" in first.stdout
        time.sleep(4)  # the first wave ends with nobody attached: its jobs leave the queue unseen
        proc = gridsubmit_process("wait", root)
        wait_for(lambda: sum(c["state"] == "COMPLETED" for c in cells(root).values()) >= 10, timeout=120,
                 what="a second wave")  # fmt: skip
        proc.send_signal(signal.SIGKILL)  # the runner dies between waves
        proc.wait()
        assert run_cli("wait", root, "--quiet") == 0
    finally:
        stop.set()
        sampler.join()
    assert 1 <= peak[0] <= 5
    assert {c["state"] for c in cells(root).values()} == {"COMPLETED"}
    assert set(runs(root).values()) == {1} and len(runs(root)) == 20


def elapsed_seconds(text: str) -> int:
    """sacct's Elapsed ([D-]HH:MM:SS) in seconds."""
    days, _, clock = text.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return int(days or 0) * 86400 + h * 3600 + m * 60 + s


def test_a_packed_cell_has_its_own_time_and_memory_and_its_jobs_figures_are_the_packs(slurm_scripted, capsys):
    import jsonschema

    study, profile, root = slurm_scripted({"dose_1000/dense/train": "sleep-ok:1", "dose_1000/dense/test": "sleep-ok:5"},
                                          doses=(1000,), views=("dense",), cells_per_job=2, gpus_per_job=0,
                                          partition="cpu")  # fmt: skip
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    # sacct trails the jobs: the next runner on the root fills in what was pending
    wait_for(lambda: run_cli("wait", root, "--quiet") == 0 and not any(
        c["attempts"][0].get("accounting") for c in cells(root).values()), timeout=90, what="the job's accounting")
    short, long = (cells(root)[f"dose_1000/dense/{s}"]["attempts"][0] for s in ("train", "test"))
    assert short["job_id"] == long["job_id"] and {short["pack"]["position"], long["pack"]["position"]} == {0, 1}
    # each cell's own figures are the node's measurement of its own command
    assert 2.5 <= long["elapsed_s"] - short["elapsed_s"] <= 6, (short["elapsed_s"], long["elapsed_s"])
    for a in (short, long):
        assert a["max_rss_bytes"] > 0 and a["cpu_s"] is not None
        assert not {"elapsed", "max_rss", "scheduler_state", "scheduler_exit_code"} & set(a), a  # none of the job's
    # the job's figures are the pack's, the same on both, and span both cells
    assert short["pack"] == long["pack"] | {"position": short["pack"]["position"]}
    assert short["pack"]["scheduler_state"] == "COMPLETED" and short["pack"]["scheduler_exit_code"] == "0:0"
    assert elapsed_seconds(short["pack"]["elapsed"]) >= long["elapsed_s"] + short["elapsed_s"] - 1, short["pack"]
    schema = json.loads((Path(__file__).parents[1] / "docs" / "manifest.schema.json").read_text())
    jsonschema.validate(load_manifest(root), schema)
    capsys.readouterr()
    assert run_cli("status", root, "dose_1000/dense/test") == 0
    shown = capsys.readouterr().out
    assert f"pack: job {long['job_id']} ran 2 cells in turn" in shown and f"elapsed={long['pack']['elapsed']}" in shown, shown
