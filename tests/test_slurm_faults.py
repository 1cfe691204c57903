"""Scheduler faults staged on the real SLURM test cluster with the wrappers in tests/fakeslurm.

Each test puts ``tests/fakeslurm/bin`` first on PATH of a gridsubmit subprocess and points
``GRIDSUBMIT_FAULTS`` at a faults.json; every sbatch / sacct / squeue / scancel call is then
logged in calls.jsonl beside it. The promises are checked from the manifest, from the
commands' own side effects (each cell's runs.log has one line per run of its command) and
from calls.jsonl (how many times sbatch was called).
"""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import cells, gridsubmit_process, job_ids, load_manifest, sacct_jobs, sacct_settled, wait_for

pytestmark = pytest.mark.slurm

WRAP_BIN = Path(__file__).parent / "fakeslurm" / "bin"
REAL_BIN = os.path.dirname(shutil.which("sbatch") or "/usr/bin/sbatch")
ACTIVE = {"SUBMITTED", "PENDING", "RUNNING"}
POLL = {"min": 1, "max": 2}
TWO_CELLS = {"doses": (1000,), "views": ("dense", "sparse"), "splits": ("train",)}


def prefix(root: Path) -> str:
    return f"gs-{load_manifest(root)['run_id']}-"


def runs(cell: dict) -> int:
    """How many times the cell's command ran (cellcmd.py appends a line to runs.log per run)."""
    log = Path(cell["output_dir"]) / "runs.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def squeue_rows(name_prefix: str) -> list[tuple[str, str, str]]:
    """(job id, name, state) of every queued or running job whose name starts with the prefix."""
    out = subprocess.run([f"{REAL_BIN}/squeue", "-h", "-r", "-o", "%i|%j|%T"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    rows = [tuple(line.strip().split("|")) for line in out.splitlines() if line.strip()]
    return [r for r in rows if len(r) == 3 and r[1].startswith(name_prefix)]


class Faults:
    """One faults.json (and its calls.jsonl), the gridsubmit processes run with it, and the
    clean-up of whatever a test leaves behind."""

    def __init__(self, folder: Path):
        folder.mkdir()
        self.path = folder / "faults.json"
        self.calls_path = folder / "calls.jsonl"
        self.set({})
        self.procs: list[subprocess.Popen] = []
        self.roots: list[Path] = []

    def set(self, faults: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(faults))
        tmp.replace(self.path)

    @property
    def env(self) -> dict:
        return {"GRIDSUBMIT_FAULTS": str(self.path), "GRIDSUBMIT_REAL_SLURM_BIN": REAL_BIN,
                "PATH": f"{WRAP_BIN}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip

    def start(self, *args, env: dict | None = None) -> subprocess.Popen:
        proc = gridsubmit_process(*args, env={**self.env, **(env or {})})
        self.procs.append(proc)
        return proc

    def run(self, *args, timeout: float, env: dict | None = None) -> tuple[int, str]:
        proc = self.start(*args, env=env)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            raise AssertionError(f"gridsubmit {' '.join(map(str, args))} still running after {timeout} s:\n{out}")
        return proc.returncode, out

    def calls(self, cmd: str | None = None) -> list[dict]:
        if not self.calls_path.exists():
            return []
        entries = [json.loads(line) for line in self.calls_path.read_text().splitlines() if line.strip()]
        return [e for e in entries if cmd is None or e["cmd"] == cmd]

    def faulted(self, cmd: str) -> list[dict]:
        return [e for e in self.calls(cmd) if e["fault"]]

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        for root in self.roots:
            if not (root / "comparison_manifest.json").exists():
                continue
            pre = prefix(root)
            names = {a.get("job_name") for c in cells(root).values() for a in c["attempts"]} - {None}
            names |= {name for _, name, _ in squeue_rows(pre)}
            for name in sorted(n for n in names if n.startswith(pre)):
                subprocess.run([f"{REAL_BIN}/scancel", "--name", name], capture_output=True)


@pytest.fixture
def faults(tmp_path, slurm_cluster):
    f = Faults(tmp_path / "faults")
    try:
        yield f
    finally:
        f.cleanup()


def setup(slurm_scripted, faults, behaviours, grid=TWO_CELLS, **keys):
    study, profile, root = slurm_scripted(behaviours, **grid, poll_interval=POLL, **keys)
    faults.roots.append(root)
    return ["--study", study, "--cluster", profile, "--artifact-root", root], root


# --- 1 ------------------------------------------------------------------------------------------


def test_while_sacct_lists_none_of_the_jobs_squeue_carries_every_cell_to_completed_with_one_sbatch_per_array(
        slurm_scripted, faults):  # fmt: skip
    args, root = setup(slurm_scripted, faults, {"*": "sleep-ok:2"})
    faults.set({"sacct": [{"do": "hide", "times": -1, "note": "sacct lags: no rows at all"}]})
    rc, out = faults.run("submit", *args, "--quiet", timeout=50)
    assert rc == 0, out
    c = cells(root)
    assert {cell["state"] for cell in c.values()} == {"COMPLETED"}
    assert all(a["state"] != "LOST" for cell in c.values() for a in cell["attempts"])
    assert all(len(cell["attempts"]) == 1 for cell in c.values())
    assert all(runs(cell) == 1 for cell in c.values())
    arrays = {cell["attempts"][0]["job_name"] for cell in c.values()}
    assert len(arrays) == 1
    assert len(faults.calls("sbatch")) == len(arrays)  # one sbatch per array chunk, none again
    assert faults.faulted("sacct"), "sacct was never asked (so the lag was never staged)"
    assert all(e["fault"] for e in faults.calls("sacct"))
    squeue_by_name = [e for e in faults.calls("squeue") if "--name" in e["argv"]]
    assert squeue_by_name, f"squeue was not asked by name: {faults.calls('squeue')}"


# --- 2 ------------------------------------------------------------------------------------------


def test_an_array_sbatch_queued_while_reporting_failure_is_cancelled_and_its_cells_run_once_from_a_new_sbatch(
        slurm_scripted, faults):  # fmt: skip
    args, root = setup(slurm_scripted, faults, {"*": "sleep-ok:1"})
    faults.set({"sbatch": [{"do": "after", "message": "Socket timed out on send/recv operation", "rc": 1}]})
    rc, out = faults.run("submit", *args, "--quiet", timeout=55)
    assert rc == 0, out
    c = cells(root)
    for key, cell in c.items():
        first, *rest = cell["attempts"]
        assert cell["state"] == "COMPLETED", key
        assert first["state"] == "LOST", (key, first)
        assert first["job_id"], (key, first)
        assert [a["state"] for a in rest] == ["COMPLETED"], (key, cell["attempts"])
        assert runs(cell) == 1, key  # the cancelled job never ran the command
    sbatch = faults.calls("sbatch")
    assert len(sbatch) == 2 and sbatch[0]["fault"] and not sbatch[1]["fault"]
    queued_anyway = {cell["attempts"][0]["job_id"] for cell in c.values()}
    cancelled = [e for e in faults.calls("scancel") if e["rc"] == 0 and queued_anyway & set(e["argv"])]
    assert cancelled, faults.calls("scancel")
    # the jobs that ran are in sacct; the ones cancelled while queued are CANCELLED or, as SLURM
    # keeps no record of array tasks cancelled while pending, absent, and gone from the queue
    ran = job_ids(root) - queued_anyway
    states = {job_id: state for job_id, _, state, _ in sacct_settled(prefix(root), ran)}
    for job_id in queued_anyway:
        assert states.get(job_id, "CANCELLED").startswith("CANCELLED"), (job_id, states)
        assert job_id not in {j for j, _, _ in squeue_rows(prefix(root))}
    for key, cell in c.items():  # and the manifest says why the first attempt was dropped
        first = cell["attempts"][0]
        assert "sbatch reported a failure but queued it" in (first.get("error") or ""), (key, first)


# --- 3 ------------------------------------------------------------------------------------------


def test_an_sbatch_that_keeps_failing_exits_2_after_its_bounded_retries_with_its_message_and_leaves_nothing_active_or_queued(
        slurm_scripted, faults):  # fmt: skip
    args, root = setup(slurm_scripted, faults, {"*": "ok"})
    message = "Batch job submission failed: Socket timed out on send/recv operation"
    faults.set({"sbatch": [{"do": "fail", "message": message, "rc": 1, "times": -1}]})
    rc, out = faults.run("submit", *args, "--quiet", timeout=60)
    assert rc == 2, out
    assert "sbatch" in out and message in out, out
    assert "Traceback" not in out, out
    c = cells(root)
    for key, cell in c.items():
        assert cell["state"] not in ACTIVE, (key, cell["state"])
        assert cell["state"] == "PLANNED" or not cell["attempts"], (key, cell)
        assert all(a["state"] not in ACTIVE for a in cell["attempts"]), (key, cell["attempts"])
        assert runs(cell) == 0, key
    assert len(faults.calls("sbatch")) == 5  # a transient failure is asked again, 5 tries in all
    assert "(after 5 tries)" in out, out
    time.sleep(1)
    assert squeue_rows(prefix(root)) == []
    assert sacct_jobs(prefix(root)) == []


# --- 4 ------------------------------------------------------------------------------------------


def test_an_unknown_scheduler_state_neither_loses_nor_resubmits_a_cell(slurm_scripted, faults):
    args, root = setup(slurm_scripted, faults, {"*": "sleep-ok:4"})
    bogus = {"do": "state", "value": "BOGUS_STATE", "times": 5}
    faults.set({"sacct": [bogus], "squeue": [bogus]})
    rc, out = faults.run("submit", *args, "--quiet", timeout=55)
    assert rc == 0, out
    c = cells(root)
    assert {cell["state"] for cell in c.values()} == {"COMPLETED"}
    assert all([a["state"] for a in cell["attempts"]] == ["COMPLETED"] for cell in c.values())
    assert all(runs(cell) == 1 for cell in c.values())
    assert len(faults.calls("sbatch")) == 1
    assert faults.calls("scancel") == []
    assert faults.faulted("sacct") or faults.faulted("squeue"), "no state was ever rewritten"
    assert len({j for j, *_ in sacct_settled(prefix(root), job_ids(root))}) == 2


# --- 5 ------------------------------------------------------------------------------------------


def test_wait_adopts_by_name_jobs_whose_ids_were_never_saved_even_when_the_first_name_lookups_fail(
        slurm_scripted, faults):  # fmt: skip
    args, root = setup(slurm_scripted, faults, {"*": "sleep-ok:8"})
    rc, out = faults.run("submit", *args, "--quiet", timeout=40, env={"GRIDSUBMIT_CRASH_AT": "handles-recorded"})
    assert rc == -signal.SIGKILL, out
    c = cells(root)
    for key, cell in c.items():  # names on disk, ids not
        attempt = cell["attempts"][-1]
        assert len(cell["attempts"]) == 1 and attempt["job_id"] is None, (key, attempt)
        assert attempt["job_name"].startswith(prefix(root)) and attempt["state"] == "SUBMITTED", (key, attempt)
    assert len(faults.calls("sbatch")) == 1
    down = {"do": "fail", "message": "Unable to contact slurm controller (connect failure)", "rc": 1, "times": 3}
    faults.set({"squeue": [down], "sacct": [down]})
    rc, out = faults.run("wait", root, "--quiet", timeout=55)
    assert rc == 0, out
    assert len(faults.faulted("squeue")) == 3 and len(faults.faulted("sacct")) == 3  # the lookups did fail
    assert len(faults.calls("sbatch")) == 1  # across both processes: nothing submitted twice
    c = cells(root)
    for key, cell in c.items():
        assert cell["state"] == "COMPLETED", (key, cell)
        assert len(cell["attempts"]) == 1, (key, cell["attempts"])
        assert cell["attempts"][0]["job_id"], (key, cell["attempts"][0])
        assert runs(cell) == 1, key
    assert len({j for j, *_ in sacct_settled(prefix(root), job_ids(root))}) == 2
    for key, cell in c.items():  # the manifest tells that the job was found by name, as for any adoption
        attempt = cell["attempts"][0]
        assert attempt.get("adopted") is True, (key, attempt)
        assert attempt.get("array_job_id") == attempt["job_id"].split("_")[0], (key, attempt)


# --- 6 ------------------------------------------------------------------------------------------

SLEEPER = {"doses": (1000, 10000), "views": ("dense",), "splits": ("train",)}
SLEEPER_KEY = "dose_1000/dense/train"


def test_cancel_of_a_running_cell_goes_through_when_scancel_fails_twice_then_works(slurm_scripted, faults):
    args, root = setup(slurm_scripted, faults, {SLEEPER_KEY: "sleep:60"}, grid=SLEEPER)
    rc, out = faults.run("submit", *args, "--no-wait", "--quiet", timeout=30)
    assert rc == 0, out
    wait_for(lambda: runs(cells(root)[SLEEPER_KEY]) == 1, timeout=30, what="the cell's command to run")
    faults.set({"scancel": [{"do": "fail", "times": 2}]})
    rc, out = faults.run("cancel", root, "--dose", 1000, timeout=40)
    assert rc == 0, out
    assert "Traceback" not in out, out
    c = cells(root)
    assert c[SLEEPER_KEY]["state"] == "CANCELLED", c[SLEEPER_KEY]
    scancel = faults.calls("scancel")
    assert [bool(e["fault"]) for e in scancel] == [True, True, False], scancel
    assert scancel[-1]["rc"] == 0 and c[SLEEPER_KEY]["attempts"][0]["job_id"] in scancel[-1]["argv"]
    rc, out = faults.run("wait", root, "--quiet", timeout=40)
    assert rc == 1, out  # the cancelled cell did not complete
    c = cells(root)
    assert (c[SLEEPER_KEY]["state"], c["dose_10000/dense/train"]["state"]) == ("CANCELLED", "COMPLETED")
    assert [a["state"] for a in c[SLEEPER_KEY]["attempts"]] == ["CANCELLED"]
    assert runs(c[SLEEPER_KEY]) == 1 and runs(c["dose_10000/dense/train"]) == 1
    assert len(faults.calls("sbatch")) == 1
    job = c[SLEEPER_KEY]["attempts"][0]["job_id"]
    states = {job_id: state for job_id, _, state, _ in sacct_settled(prefix(root), [job])}
    assert states[job].startswith("CANCELLED"), states


def test_cancel_with_scancel_failing_every_time_reports_it_on_the_cell_and_a_later_wait_still_ends(
        slurm_scripted, faults):  # fmt: skip
    args, root = setup(slurm_scripted, faults, {SLEEPER_KEY: "sleep-ok:12"}, grid=SLEEPER)
    rc, out = faults.run("submit", *args, "--no-wait", "--quiet", timeout=30)
    assert rc == 0, out
    wait_for(lambda: runs(cells(root)[SLEEPER_KEY]) == 1, timeout=30, what="the cell's command to run")
    faults.set({"scancel": [{"do": "fail", "times": -1, "message": "Unable to contact slurm controller"}]})
    rc, out = faults.run("cancel", root, "--dose", 1000, timeout=45)
    assert "Traceback" not in out, out
    assert rc in (0, 2), out
    assert "scancel" in out, out
    assert len(faults.faulted("scancel")) >= 1
    cell = cells(root)[SLEEPER_KEY]
    assert "scancel" in (cell.get("cancel_error") or ""), cell
    faults.set({})  # the scheduler answers again
    rc, out = faults.run("wait", root, "--quiet", timeout=45)
    assert "Traceback" not in out, out
    c = cells(root)
    assert c[SLEEPER_KEY]["state"] in ("COMPLETED", "CANCELLED"), c[SLEEPER_KEY]
    assert c["dose_10000/dense/train"]["state"] == "COMPLETED"
    assert rc == (0 if c[SLEEPER_KEY]["state"] == "COMPLETED" else 1), out
    assert len(c[SLEEPER_KEY]["attempts"]) == 1 and runs(c[SLEEPER_KEY]) == 1
    assert len(faults.calls("sbatch")) == 1
    assert all(cell["state"] not in ACTIVE for cell in c.values())


# --- 7 ------------------------------------------------------------------------------------------


def test_a_cell_cancelled_while_pending_ends_cancelled_not_lost(slurm_scripted, faults):
    # one task of the array at a time: task 0 runs, 1..3 wait; task 1 is cancelled while it
    # waits (SLURM then lists it nowhere: neither squeue nor sacct has a row for it)
    grid = {"doses": (1000,), "views": ("dense", "sparse"), "splits": ("train", "test")}
    args, root = setup(slurm_scripted, faults, {"*": "sleep:20"}, grid=grid, array_parallelism=1)
    submitter = faults.start("submit", *args, "--quiet")
    wait_for(lambda: (root / "comparison_manifest.json").exists()
             and all(cell["attempts"] and cell["attempts"][-1]["job_id"] for cell in cells(root).values()),
             timeout=30, what="the job ids")  # fmt: skip
    c = cells(root)
    by_index = {cell["attempts"][0]["array_task_id"]: key for key, cell in c.items()}
    running_key, pending_key = by_index[0], by_index[1]
    running_id, pending_id = (c[k]["attempts"][0]["job_id"] for k in (running_key, pending_key))
    wait_for(lambda: runs(cells(root)[running_key]) == 1, timeout=30, what="the first task to run")
    # until SLURM has split the running task off the array record (a cancel sooner may take it along)
    wait_for(lambda: (running_id, "RUNNING") in {(j, s) for j, _, s, _ in sacct_jobs(prefix(root))},
             timeout=30, what="the running task's own sacct row")  # fmt: skip
    time.sleep(1)
    assert (pending_id, "PENDING") in {(j, s) for j, _, s in squeue_rows(prefix(root))}, squeue_rows(prefix(root))
    pending = c[pending_key]
    try:
        rc, out = faults.run("cancel", root, "--view", pending["view"], "--split", pending["split"], timeout=35)
        assert rc == 0, out
        wait_for(lambda: cells(root)[pending_key]["state"] not in ACTIVE, timeout=15, what="the pending cell to end")
        assert cells(root)[pending_key]["state"] == "CANCELLED", cells(root)[pending_key]
        assert cells(root)[running_key]["state"] == "RUNNING", cells(root)[running_key]  # only that cell
    finally:
        faults.run("cancel", root, timeout=35)  # the rest, to finish quickly
        try:
            out, _ = submitter.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            submitter.kill()
            out, _ = submitter.communicate()
            out = f"(still running 15 s after every cell was cancelled; killed)\n{out}"
    assert submitter.returncode == 1, out
    c = cells(root)
    assert c[pending_key]["state"] == "CANCELLED", c[pending_key]
    assert [a["state"] for a in c[pending_key]["attempts"]] == ["CANCELLED"]
    assert runs(c[pending_key]) == 0  # it never started
    assert {cell["state"] for cell in c.values()} == {"CANCELLED"}
    assert all(len(cell["attempts"]) == 1 for cell in c.values())
    assert len(faults.calls("sbatch")) == 1
    assert any(pending_id in e["argv"] for e in faults.calls("scancel"))


# --- absence only from an answer ------------------------------------------------------------------

OUTAGE = {"do": "fail", "message": "Socket timed out on send/recv operation", "rc": 1, "times": -1}


def end_outage_after(faults: Faults, seconds: float) -> None:
    time.sleep(seconds)
    faults.set({})


def test_a_runner_that_follows_its_jobs_rides_out_a_60s_outage_of_sacct_and_squeue_running_each_command_once(
        slurm_scripted, faults):  # fmt: skip
    args, root = setup(slurm_scripted, faults, {"*": "sleep-ok:75"})  # they outlast the outage
    proc = faults.start("submit", *args)
    wait_for(lambda: (root / "comparison_manifest.json").exists() and all(
        c["attempts"] and c["attempts"][-1]["job_id"] for c in cells(root).values()), timeout=60, what="jobs submitted")
    faults.set({"sacct": [OUTAGE], "squeue": [OUTAGE]})
    end_outage_after(faults, 60)
    out, _ = proc.communicate(timeout=150)
    assert proc.returncode == 0, out
    assert len(faults.faulted("sacct")) + len(faults.faulted("squeue")) >= 2  # it really asked during the outage
    assert "the scheduler is not answering" in out and "answers again after" in out
    for key, cell in cells(root).items():
        assert cell["state"] == "COMPLETED" and len(cell["attempts"]) == 1 and runs(cell) == 1, (key, cell)
    assert len(faults.calls("sbatch")) == 1


def test_wait_started_during_an_outage_after_submit_was_killed_runs_each_command_once(slurm_scripted, faults):
    args, root = setup(slurm_scripted, faults, {"*": "sleep-ok:45"})
    rc, out = faults.run("submit", *args, "--no-wait", "--quiet", timeout=60)
    assert rc == 0, out  # on SLURM --no-wait returns once submitted: nothing follows the jobs now
    wait_for(lambda: len([r for r in squeue_rows(prefix(root)) if r[2] == "RUNNING"]) == 2, timeout=60,
             what="both jobs running")  # fmt: skip
    faults.set({"sacct": [OUTAGE], "squeue": [OUTAGE]})
    waiter = faults.start("wait", root)
    time.sleep(15)
    rc, said = faults.run("status", root, timeout=30)
    assert rc == 0 and "scheduler not answering since" in said, said
    end_outage_after(faults, 45)  # 60 s in all, longer than the grace period (30 s)
    out, _ = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, out
    assert "the scheduler is not answering" in out
    for key, cell in cells(root).items():
        assert cell["state"] == "COMPLETED" and len(cell["attempts"]) == 1 and runs(cell) == 1, (key, cell)
    assert len(faults.calls("sbatch")) == 1 and len(sacct_settled(prefix(root), job_ids(root))) == 2


def test_a_lost_cell_is_submitted_again_only_once_scancel_of_its_old_job_succeeded(slurm_scripted, faults):
    args, root = setup(slurm_scripted, faults, {"*": "sleep-once:60"}, grid={"doses": (1000,), "views": ("dense",),
                                                                             "splits": ("train",)})  # fmt: skip
    hide = {"do": "hide", "times": -1}  # the scheduler answers, and does not list the job: it looks gone
    refuse = {"do": "fail", "message": "Socket timed out on send/recv operation", "rc": 1, "times": 2}
    faults.set({"sacct": [hide], "squeue": [hide], "scancel": [refuse]})
    rc, out = faults.run("submit", *args, "--quiet", timeout=240)
    assert rc == 0, out
    [cell] = cells(root).values()
    assert [a["state"] for a in cell["attempts"]] == ["LOST", "COMPLETED"], cell["attempts"]
    scancel = faults.calls("scancel")
    first_ok = next(e["t"] for e in scancel if e["rc"] == 0)
    assert len([e for e in scancel if e["fault"]]) == 2  # refused twice: not submitted again meanwhile
    second_sbatch = faults.calls("sbatch")[1]["t"]
    assert second_sbatch > first_ok, (scancel, faults.calls("sbatch"))
