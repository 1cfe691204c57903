"""A real site's limits on the SLURM test cluster: the QOS gridsubmit-limited
(MaxSubmitJobsPerUser=5, MaxTRESPerUser=gres/gpu=2, enforced), transient sbatch failures and
ghost jobs staged with the wrappers in tests/fakeslurm.

The promises are checked from the scheduler's side (squeue sampled while the run goes on,
sacct afterwards), from each cell's runs.log (one line per run of its command) and from the
wrappers' calls.jsonl.
"""

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import jsonschema
import pytest

from conftest import cells, gridsubmit_process, job_ids, load_manifest, sacct_jobs, sacct_settled

pytestmark = pytest.mark.slurm

QOS = "gridsubmit-limited"
WRAP_BIN = Path(__file__).parent / "fakeslurm" / "bin"
REAL_BIN = os.path.dirname(shutil.which("sbatch") or "/usr/bin/sbatch")
POLL = {"min": 1, "max": 2}
FORTY = {"doses": tuple(1000 * (i + 1) for i in range(10)), "views": ("dense", "sparse"), "splits": ("train", "test")}
TWO_CELLS = {"doses": (1000,), "views": ("dense", "sparse"), "splits": ("train",)}
SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "manifest.schema.json").read_text())


def prefix(root: Path) -> str:
    return f"gs-{load_manifest(root)['run_id']}-"


def runs(cell: dict) -> int:
    log = Path(cell["output_dir"]) / "runs.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def squeue(*args: str) -> list[list[str]]:
    out = subprocess.run([f"{REAL_BIN}/squeue", "-h", "-r", *args], capture_output=True, text=True, check=True).stdout
    return [line.strip().split("|") for line in out.splitlines() if line.strip()]


class Sampler(threading.Thread):
    """``squeue -u root`` every 0.2 s while a run goes on: the most jobs of the user in the
    limited QOS, and of the run's own (by name prefix), seen queued or running at once."""

    def __init__(self, root: Path):
        super().__init__(daemon=True)
        self.root, self.stop, self.most_in_qos, self.most_of_run, self.samples = root, threading.Event(), 0, 0, 0

    def run(self):
        while not self.stop.is_set():
            try:
                rows = squeue("-u", "root", "-o", "%i|%j|%q")
            except subprocess.CalledProcessError:
                continue
            self.samples += 1
            self.most_in_qos = max(self.most_in_qos, sum(1 for r in rows if r[2] == QOS))
            manifest = self.root / "comparison_manifest.json"
            if manifest.exists():
                try:
                    pre = prefix(self.root)
                except (ValueError, KeyError):
                    continue
                self.most_of_run = max(self.most_of_run, sum(1 for r in rows if r[1].startswith(pre)))
            time.sleep(0.2)


def run_sampled(args: list, root: Path, timeout: float, env: dict | None = None) -> tuple[int, str, Sampler]:
    sampler = Sampler(root)
    sampler.start()
    proc = gridsubmit_process(*args, env=env or {})
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"still running after {timeout} s:\n{out}")
    finally:
        sampler.stop.set()
        sampler.join(5)
    return proc.returncode, out, sampler


@pytest.fixture
def cleanup():
    """scancel whatever a test leaves of its runs (and its held jobs) in the queue."""
    roots, names = [], []
    yield roots, names
    for root in roots:
        if (root / "comparison_manifest.json").exists():
            pre = prefix(root)
            for job_id, name, *_ in squeue("-o", "%i|%j"):
                if name.startswith(pre):
                    subprocess.run([f"{REAL_BIN}/scancel", job_id], capture_output=True)
    for name in names:
        subprocess.run([f"{REAL_BIN}/scancel", "--name", name], capture_output=True)


def assert_every_cell_ran_once(root: Path) -> dict:
    c = cells(root)
    for key, cell in c.items():
        assert cell["state"] == "COMPLETED", (key, cell["state"], cell["attempts"][-1:])
        assert runs(cell) == 1, (key, runs(cell))
    return c


# --- 1: the site's limits cap max_queued -------------------------------------------------------


def test_forty_cells_in_a_qos_of_five_queued_jobs_never_have_more_than_five_queued_and_each_runs_once(
        slurm_scripted, cleanup):  # fmt: skip
    study, profile, root = slurm_scripted({"*": "sleep-ok:0.5"}, **FORTY, qos=QOS, max_queued=500, poll_interval=POLL)
    cleanup[0].append(root)
    rc, out, sampler = run_sampled(["submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet"],
                                   root, timeout=400)  # fmt: skip
    assert rc == 0, out
    assert f"site limits: MaxSubmitJobsPerUser 5 (QOS {QOS}), 0 jobs of yours queued: at most 5 of this run's" in out, out
    assert "sbatch refused" not in out, out  # the cap was known before the first wave
    c = assert_every_cell_ran_once(root)
    assert len(c) == 40
    assert sampler.samples > 20
    assert sampler.most_in_qos <= 5, sampler.most_in_qos
    assert 2 <= sampler.most_of_run <= 5, sampler.most_of_run
    print(f"\nmost jobs of the user queued in {QOS} at once: {sampler.most_in_qos} ({sampler.samples} samples)")
    ids = job_ids(root)
    rows = sacct_settled(prefix(root), ids, final=True)
    assert {j for j, *_ in rows} >= ids and len(ids) == 40
    # the GPU cap explains why the others waited
    waited = [a for cell in c.values() for a in cell["attempts"] if a.get("gpu_cap")]
    assert waited and waited[0]["gpu_cap"] == {"gpus": 2, "qos": QOS}
    jsonschema.validate(load_manifest(root), SCHEMA)


def test_dry_run_says_what_the_site_allows_counting_the_users_jobs_already_queued(slurm_scripted, cleanup):
    study, profile, root = slurm_scripted({}, **TWO_CELLS, qos=QOS, max_queued=500)
    held = f"gs-limits-held-{os.getpid()}"
    cleanup[1].append(held)
    for _ in range(2):  # the user's own jobs in the same QOS, held so they stay queued
        subprocess.run([f"{REAL_BIN}/sbatch", "--hold", f"--qos={QOS}", "-p", "cpu", "-J", held, "-o", "/dev/null",
                        "--wrap", "true"], check=True, capture_output=True)  # fmt: skip
    proc = gridsubmit_process("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--dry-run")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert f"site limits: MaxSubmitJobsPerUser 5 (QOS {QOS}), 2 jobs of yours queued: at most 3 of this run's at once" in out
    assert f"MaxTRESPerUser gres/gpu=2 (QOS {QOS})" in out
    assert "#!/bin/bash" in out and not root.exists()


# --- 2: a wave refused for a limit waits; a failed lookup is not fatal -------------------------


def test_when_the_limits_cannot_be_read_a_wave_refused_for_a_limit_waits_for_room_and_every_cell_runs_once(
        slurm_scripted, cleanup, tmp_path):  # fmt: skip
    # sacctmgr fails: the profile's max_queued (500) stands, so the first wave (arrays of 10, the
    # cluster's MaxArraySize) goes over the QOS's 5 and sbatch refuses it
    study, profile, root = slurm_scripted({"*": "sleep-ok:0.5"}, doses=(1000, 10000, 100000), qos=QOS, max_queued=500,
                                          poll_interval=POLL)  # fmt: skip
    cleanup[0].append(root)
    fake = tmp_path / "nosacctmgr"
    fake.mkdir()
    (fake / "sacctmgr").write_text("#!/bin/sh\necho 'sacctmgr: error: Problem talking to the database: Connection refused' >&2\n"
                                   "exit 1\n")  # fmt: skip
    (fake / "sacctmgr").chmod(0o755)
    env = {"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    rc, out, sampler = run_sampled(["submit", "--study", study, "--cluster", profile, "--artifact-root", root],
                                   root, timeout=300, env=env)  # fmt: skip
    assert rc == 0, out
    assert "site limits: not read (sacctmgr exited 1" in out and "max_queued 500 from the profile stands" in out, out
    assert "sbatch refused 10 job(s) for a limit (" in out and "QOSMaxSubmitJobPerUserLimit" in out, out
    assert "Traceback" not in out
    c = assert_every_cell_ran_once(root)
    assert all(len(cell["attempts"]) == 1 for cell in c.values())  # a refused wave left no attempt behind
    assert sampler.most_in_qos <= 5
    print(f"\nrefused wave, then waves: most jobs of the user queued in {QOS} at once: {sampler.most_in_qos}\n{out}")


# --- 3: transient sbatch failures are retried, after a lookup by name --------------------------


class Faults:
    def __init__(self, folder: Path):
        folder.mkdir()
        self.path, self.calls_path = folder / "faults.json", folder / "calls.jsonl"

    def set(self, faults: dict) -> None:
        self.path.write_text(json.dumps(faults))

    @property
    def env(self) -> dict:
        return {"GRIDSUBMIT_FAULTS": str(self.path), "GRIDSUBMIT_REAL_SLURM_BIN": REAL_BIN,
                "PATH": f"{WRAP_BIN}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip

    def calls(self, cmd: str | None = None) -> list[dict]:
        if not self.calls_path.exists():
            return []
        entries = [json.loads(line) for line in self.calls_path.read_text().splitlines() if line.strip()]
        return [e for e in entries if cmd is None or e["cmd"] == cmd]


def test_sbatch_failing_transiently_twice_is_retried_after_a_lookup_by_name_and_queues_one_job_per_chunk(
        slurm_scripted, cleanup, tmp_path):  # fmt: skip
    study, profile, root = slurm_scripted({"*": "sleep-ok:1"}, **TWO_CELLS, poll_interval=POLL)
    cleanup[0].append(root)
    faults = Faults(tmp_path / "faults")
    faults.set({"sbatch": [{"do": "fail", "message": "Socket timed out on send/recv operation", "times": 2}]})
    rc, out, _ = run_sampled(["submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet"],
                             root, timeout=120, env=faults.env)  # fmt: skip
    assert rc == 0, out
    c = assert_every_cell_ran_once(root)
    assert all(len(cell["attempts"]) == 1 for cell in c.values())
    sbatch = faults.calls("sbatch")
    assert [bool(e["fault"]) for e in sbatch] == [True, True, False], sbatch
    # before each retry, the chunk was looked up by its name
    calls = faults.calls()
    for failed, retried in zip(sbatch, sbatch[1:]):
        between = calls[calls.index(failed) + 1:calls.index(retried)]
        assert any(e["cmd"] == "squeue" and "--name" in e["argv"] for e in between), between
    assert retried["t"] - sbatch[0]["t"] >= 1.5  # backed off: at least 0.5 s, then 1 s
    # one job per chunk (one array of two tasks), every one of them in sacct
    names = {cell["attempts"][0]["job_name"] for cell in c.values()}
    assert len(names) == 1
    rows = sacct_settled(prefix(root), job_ids(root), final=True)
    assert sorted(j for j, *_ in rows) == sorted(job_ids(root)), rows
    assert {name for _, name, *_ in rows} == names


# --- 4: ghosts -----------------------------------------------------------------------------------


def test_a_job_queued_by_a_failed_sbatch_whose_lookup_failed_too_is_cancelled_once_the_scheduler_answers(
        slurm_scripted, cleanup, tmp_path):  # fmt: skip
    study, profile, root = slurm_scripted({"*": "sleep-ok:1"}, **TWO_CELLS, poll_interval=POLL)
    cleanup[0].append(root)
    faults = Faults(tmp_path / "faults")
    down = {"do": "fail", "message": "Unable to contact slurm controller (connect failure)"}
    faults.set({
        "sbatch": [{"do": "after", "message": "Socket timed out on send/recv operation"}],  # queued, and says it failed
        # the site-limits lookup (squeue -u) answers; the lookup by name after the failure does not
        "squeue": [{"do": "slow", "seconds": 0, "times": 1}, {**down, "times": 1}],
        "sacct": [{**down, "times": 1}],
    })  # fmt: skip
    rc, out, sampler = run_sampled(["submit", "--study", study, "--cluster", profile, "--artifact-root", root,
                                    "--quiet"], root, timeout=120, env=faults.env)  # fmt: skip
    assert rc == 0, out
    c = assert_every_cell_ran_once(root)
    assert all(len(cell["attempts"]) == 1 for cell in c.values())  # the retry went out under a new name
    sbatch = faults.calls("sbatch")
    assert [bool(e["fault"]) for e in sbatch] == [True, False], sbatch
    lookup = [e for e in faults.calls("squeue") if e["rc"] != 0]
    assert lookup and "--name" in lookup[0]["argv"], lookup
    # the ghost: the run's jobs that the manifest does not know; cancelled, never ran anything
    mine = job_ids(root)
    rows = sacct_settled(prefix(root), mine, final=True)
    ghosts = {j: s for j, _, s, _ in rows if j not in mine}
    scancel = [e for e in faults.calls("scancel") if e["rc"] == 0]
    assert scancel, faults.calls("scancel")
    cancelled = {a for e in scancel for a in e["argv"][1:]}
    assert cancelled and not cancelled & mine, (cancelled, mine)
    for job_id, state in ghosts.items():
        assert state.startswith("CANCELLED"), ghosts
    assert not [r for r in squeue("-o", "%i|%j") if r[1].startswith(prefix(root))]
    names = {cell["attempts"][0]["job_name"] for cell in c.values()}
    assert len(names) == 1 and {n for _, n, *_ in rows} - names, rows  # the ghost had a name of its own
