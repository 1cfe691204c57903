"""The GPU-hour ledger adds up the attempts' own figures; wasted and projected GPU-hours."""

import csv
import json
import math
import statistics

import pytest

from conftest import cells, gridsubmit_process, load_manifest, run_cli, wait_for
from gridsubmit import Run, ledger


def own_gpu_s(attempt):
    """What an attempt says of itself: its elapsed time times the GPUs it was given."""
    held = max(ledger.elapsed_seconds(attempt["elapsed"]), attempt["elapsed_s"]) if attempt.get("elapsed") else attempt["elapsed_s"]
    if attempt.get("alloc_tres"):
        gpus = int(attempt["alloc_tres"].split("gres/gpu=")[1].split(",")[0])
    else:
        gpus = len(attempt["gpus"].split(","))
    return held * gpus


def test_the_ledger_sums_the_attempts_and_counts_failed_and_superseded_attempts_as_wasted(scripted, capsys, tmp_path):
    study, profile, root = scripted({"dose_1000/sparse/test": "exit:3"}, doses=(1000, 10000), gpus=[0, 1], gpus_per_job=1)
    args = ["--study", study, "--cluster", profile, "--artifact-root", root, "--quiet"]
    assert run_cli("submit", *args) == 1
    assert run_cli("submit", *args, "--rerun-failed") == 1  # fails again
    assert run_cli("submit", *args, "--rerun", "dose_10000/dense/train") == 1  # a completed cell run again
    book = Run(root).ledger()
    attempts = [(c, a) for c in load_manifest(root)["jobs"] for a in c["attempts"]]
    assert len(book["attempts"]) == len(attempts) == 10
    wasted = 0.0
    for (cell, attempt), row in zip(attempts, book["attempts"]):
        assert row["key"] == cell["key"] and row["gpus"] == 1 and row["gpus_from"] == "visible"
        assert math.isclose(row["gpu_s"], own_gpu_s(attempt), abs_tol=1e-3)
        assert math.isclose(row["queue_wait_s"], attempt["started_at"] - attempt["submitted_at"], abs_tol=1e-3)
        superseded = cell["key"] == "dose_10000/dense/train" and attempt["attempt"] == 1
        assert row["wasted"] == (attempt["state"] != "COMPLETED" or superseded)
        wasted += row["gpu_s"] if row["wasted"] else 0
    total = sum(own_gpu_s(a) for _, a in attempts)
    assert math.isclose(book["run"]["gpu_s"], total, abs_tol=1e-2) and math.isclose(book["run"]["wasted_gpu_s"], wasted, abs_tol=1e-2)
    assert book["run"]["gpu_hours"] == book["run"]["gpu_s"] / 3600 and book["run"]["attempts"] == 10
    for dose in (1000, 10000):
        mine = [own_gpu_s(a) for c, a in attempts if c["dose"] == dose]
        assert math.isclose(book["doses"][dose]["gpu_s"], sum(mine), abs_tol=1e-2)
    for key, figures in book["cells"].items():
        assert math.isclose(figures["gpu_s"], sum(own_gpu_s(a) for c, a in attempts if c["key"] == key), abs_tol=1e-2)
    assert book["projection"]["cells"] == 0

    capsys.readouterr()
    assert run_cli("status", root) == 0
    out = capsys.readouterr().out
    assert f"GPU-hours: {ledger.hours(book['run']['gpu_hours'])} used ({ledger.hours(book['run']['wasted_gpu_hours'])} wasted) " \
           "over 10 attempt(s)" in out
    assert run_cli("report", root, "--json", "--ledger-csv", tmp_path / "ledger.csv") == 0
    data = json.loads(capsys.readouterr().out)
    assert math.isclose(data["gpu_hours"]["run"]["gpu_s"], book["run"]["gpu_s"], abs_tol=1e-3)
    rows = list(csv.DictReader(open(tmp_path / "ledger.csv")))
    per_attempt = [float(r["gpu_s"]) for r in rows if r["scope"] == "attempt"]
    [run_row] = [r for r in rows if r["scope"] == "run"]
    assert len(per_attempt) == 10 and math.isclose(sum(per_attempt), float(run_row["gpu_s"]), abs_tol=1e-2)
    assert run_cli("report", root) == 0
    assert "GPU-hours (GPUs held x time held" in capsys.readouterr().out


def test_the_projection_is_shown_while_cells_wait(scripted):
    study, profile, root = scripted({"*": "sleep-ok:2", "dose_1000/dense/train": "ok"}, doses=(1000,), gpus=[0],
                                    gpus_per_job=1, max_parallel=1)  # fmt: skip
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet", "--no-wait") == 0
    try:
        def projected():
            proc = gridsubmit_process("status", root)
            out, _ = proc.communicate(timeout=60)
            line = next((l for l in out.splitlines() if l.startswith("GPU-hours:")), "")
            return line if "; projected " in line else None

        line = wait_for(projected, timeout=60, what="a projection in the status footer")
        manifest = Run(root).manifest
        done = [c for c in manifest["jobs"] if c["state"] == "COMPLETED"]
        left = [c for c in manifest["jobs"] if c["state"] != "COMPLETED"]
        assert done and left
        assert "more for" in line and "cell(s) still to run" in line
        book = Run(root).ledger(manifest)
        median = statistics.median(own_gpu_s(c["attempts"][-1]) for c in done)
        assert math.isclose(book["projection"]["gpu_s"], median * book["projection"]["cells"], abs_tol=1e-2)
    finally:
        assert run_cli("wait", root, "--quiet") == 0
    assert Run(root).ledger()["projection"]["cells"] == 0


def test_tres_and_elapsed_parsing():
    assert ledger.tres_gpus("billing=1,cpu=1,gres/gpu=1,node=1") == 1
    assert ledger.tres_gpus("cpu=4,gres/gpu:a100=2,gres/gpu=2,mem=8G") == 2
    assert ledger.tres_gpus("cpu=4,gres/gpu:a100=2,gres/gpu:h100=1") == 3
    assert ledger.tres_gpus("cpu=1,mem=1G") == 0 and ledger.tres_gpus("") is None
    assert ledger.elapsed_seconds("1-02:03:04") == 93784 and ledger.elapsed_seconds("00:01:07") == 67
    assert ledger.elapsed_seconds("03:04") == 184


@pytest.mark.slurm
def test_on_the_cluster_the_ledger_takes_the_gpus_from_alloc_tres(slurm_scripted):
    study, profile, root = slurm_scripted({"*": "sleep-ok:1.5"}, doses=(1000,))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0

    def accounted():  # sacct trails the jobs: the next runner on the root fills its records in
        assert run_cli("wait", root, "--quiet") == 0
        return all(a.get("alloc_tres") and not a.get("accounting") for c in cells(root).values() for a in c["attempts"])

    wait_for(accounted, timeout=90, what="sacct's records of every job")
    book = Run(root).ledger()
    attempts = [a for c in load_manifest(root)["jobs"] for a in c["attempts"]]
    for attempt, row in zip(attempts, book["attempts"]):
        assert "gres/gpu=1" in attempt["alloc_tres"] and row["gpus_from"] == "AllocTRES" and row["gpus"] == 1
        assert row["held_s"] >= ledger.elapsed_seconds(attempt["elapsed"]) >= 1 and math.isclose(row["gpu_s"], own_gpu_s(attempt))
    assert math.isclose(book["run"]["gpu_s"], sum(own_gpu_s(a) for a in attempts), abs_tol=1e-2) and book["run"]["gpu_s"] > 0
    assert book["run"]["wasted_gpu_s"] == 0


@pytest.mark.slurm
def test_a_held_job_sends_one_stuck_event(slurm_scripted, tmp_path):
    import subprocess
    import sys

    from test_notify import APPEND, events

    log = tmp_path / "events.jsonl"
    study, profile, root = slurm_scripted({}, doses=(1000,), sbatch_extra={"hold": True},
                                          notify=[sys.executable, "-c", APPEND, str(log)])  # fmt: skip
    args = ["--study", study, "--cluster", profile, "--artifact-root", root, "--view", "dense", "--split", "train"]
    assert run_cli("submit", *args, "--no-wait", "--quiet") == 0
    job = cells(root)["dose_1000/dense/train"]["attempts"][0]["job_id"]
    try:
        assert run_cli("wait", root, "--quiet", "--fail-on-held") == 4
        assert run_cli("wait", root, "--quiet", "--fail-on-held") == 4  # still held: not sent again
        got = events(log)
        assert [e["event"] for e in got] == ["stuck"] and got[0]["payload"]["stuck"][0]["job_id"] == job
        assert got[0]["payload"]["stuck"][0]["reason"].startswith("JobHeld")
    finally:
        subprocess.run(["scontrol", "release", job], capture_output=True)
    assert run_cli("wait", root, "--quiet") == 0
    assert [e["event"] for e in events(log)] == ["stuck", "end"]
