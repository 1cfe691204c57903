"""SLURM's commands and their answers: run one, parse sacct and squeue, find jobs by name.

Parsing is pure (tested on recorded output); the calls are thin. A call that fails raises
SchedulerError: no answer is no evidence (see slurm_status).
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
import uuid
from typing import Iterable

from ..states import JobState, from_slurm
from .base import SchedulerError

log = logging.getLogger(__name__)

SACCT_FIELDS = "JobID,JobName,State,ExitCode,NodeList,MaxRSS,Elapsed,AllocTRES"
# what an attempt holds of a sacct or squeue row (besides node)
ROW_FIELDS = ("scheduler_state", "scheduler_exit_code", "elapsed", "max_rss", "pending_reason", "stuck", "alloc_tres")


def new_job_name(run_id: str) -> str:
    """A fresh name for one array chunk of a run: its jobs are found by it (adoption, ghosts)."""
    return f"gs-{run_id}-{uuid.uuid4().hex[:6]}"


def since(submitted: Iterable[float | None]) -> str:
    """sacct's -S for jobs submitted at these times (unknown: now), with five minutes to
    spare: job ids are reused when a cluster is reset, and older jobs must not answer."""
    first = min((at or time.time() for at in submitted), default=time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(first - 300))


def run_command(argv: list[str], timeout: float = 60) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SchedulerError(f"{argv[0]}: {exc}") from None
    if proc.returncode != 0:
        raise SchedulerError(f"{argv[0]} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


# --- parsing scheduler output (pure) -------------------------------------------------------------


def expand_job_id(text: str) -> list[str]:
    """``123_[0-2,5%4]`` -> ``123_0 123_1 123_2 123_5``; ``123_4`` and ``124`` as they are."""
    m = re.fullmatch(r"(\d+)_\[([^\]]+)\]", text)
    if not m:
        return [text]
    base, spec = m.group(1), m.group(2).split("%")[0]
    ids = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        ids += [f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return ids


def parse_sacct(text: str) -> dict[str, tuple[JobState | None, dict]]:
    """Rows of ``sacct -n -P -o JobID,JobName,State,ExitCode,NodeList,MaxRSS,Elapsed,AllocTRES`` by
    job id; MaxRSS comes from the step rows (``.batch``, ``.0``), AllocTRES from the job's row."""
    jobs: dict[str, tuple[JobState | None, dict]] = {}
    rss: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 6:
            continue
        job_id, _name, state, exit_code, nodes, max_rss, elapsed, tres = (parts + ["", ""])[:8]
        base, dot, _step = job_id.partition(".")
        if dot:
            if max_rss and _rss_bytes(max_rss) > _rss_bytes(rss.get(base, "")):
                rss[base] = max_rss
            continue
        info = {"scheduler_state": state, "scheduler_exit_code": exit_code}
        if elapsed:
            info["elapsed"] = elapsed
        if tres:  # what the scheduler allocated (gres/gpu=N): the GPU-hour ledger's GPUs
            info["alloc_tres"] = tres
        if nodes and nodes not in ("None assigned", "(null)"):
            info["node"] = nodes
        for jid in expand_job_id(base):
            jobs[jid] = (_mapped(state), dict(info))
    for jid, value in rss.items():
        if jid in jobs:
            jobs[jid][1]["max_rss"] = value
    return jobs


# Pending reasons that never clear by themselves: the job waits until someone acts.
STUCK_REASONS = ("JobHeld", "Invalid", "ReqNodeNotAvail", "PartitionDown", "PartitionInactive", "AccountNotAllowed",
                 "QOSNotAllowed", "DependencyNeverSatisfied", "launch failed requeued held")  # fmt: skip


def parse_squeue(text: str) -> dict[str, tuple[JobState | None, dict]]:
    """Rows of ``squeue -h -r -o %i|%T|%N|%r``: a queued job's reason says why it waits;
    a held job, or one whose reason never clears by itself, is marked ``stuck``."""
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3:
            continue
        info: dict = {"scheduler_state": parts[1]}
        if parts[2]:
            info["node"] = parts[2]
        reason = parts[3].strip() if len(parts) > 3 else ""
        waits = _mapped(parts[1]) is JobState.PENDING and reason not in ("", "None")
        info["pending_reason"] = reason if waits else ""
        info["stuck"] = waits and (parts[1] in ("REQUEUE_HOLD", "SPECIAL_EXIT") or reason.startswith(STUCK_REASONS))
        for jid in expand_job_id(parts[0]):
            jobs[jid] = (_mapped(parts[1]), info)
    return jobs


def _mapped(text: str) -> JobState | None:
    """A state we do not know is taken for still running until SLURM says otherwise: an
    unknown word must never end (or resubmit) a live job."""
    state = from_slurm(text)
    if state is None and text.strip():
        log.warning("unknown SLURM state %r: taken as still running", text)
        return JobState.RUNNING
    return state


def _rss_bytes(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)([KMGT]?)", text.strip())
    if not m:
        return 0.0
    return float(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[m.group(2)]


def sacct(ids: list[str], names: list[str], since: str) -> dict:
    argv = ["sacct", "-n", "-P", "-o", SACCT_FIELDS, "-S", since, "-j", ",".join(ids)]
    if names:
        argv += ["--name", ",".join(names)]
    return parse_sacct(run_command(argv))


def squeue(ids: list[str], names: list[str]) -> dict:
    argv = ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%N|%r", "-j", ",".join(ids)]
    if names:  # job ids are reused when a cluster is reset: only this run's jobs
        argv += ["--name", ",".join(names)]
    try:
        return parse_squeue(run_command(argv))
    except SchedulerError as exc:
        if "invalid job id" in str(exc).lower():
            return {}  # an answer: every id purged or unknown (the result files and the grace period decide)
        raise  # no answer (a timeout, a controller that does not respond): no evidence either way


def find_by_name(names: list[str], since: str) -> dict[tuple[str, int | None], str]:
    """Job ids of the runs' chunks, by (job name, array index), from squeue and sacct."""
    return lookup_by_name(names, since)[0]


def lookup_by_name(names: list[str], since: str) -> tuple[dict[tuple[str, int | None], str], bool]:
    """(job ids by (job name, array index), whether a job not found is known not to exist:
    sacct answered, as squeue forgets ended jobs)."""
    found: dict[tuple[str, int | None], str] = {}
    outputs = []
    answered = False
    for argv in (["squeue", "-h", "-r", "-t", "all", "-o", "%i|%j", "--name", ",".join(names)],
                 ["sacct", "-n", "-P", "-X", "-o", "JobID,JobName", "-S", since, "--name", ",".join(names)]):  # fmt: skip
        try:
            outputs.append(run_command(argv))
            answered = argv[0] == "sacct"
        except SchedulerError:
            continue
    for out in outputs:
        for line in out.splitlines():
            job_id, _, name = line.strip().partition("|")
            for jid in expand_job_id(job_id):
                index = int(jid.split("_")[1]) if "_" in jid else None
                found[(name, index)] = jid
    return found, answered


def clean_error(exc: Exception) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return " / ".join(errors or lines[-3:])


def find_by_name_or_none(names: list[str], since: str) -> dict[tuple[str, int | None], str] | None:
    """Like find_by_name, but None when neither squeue nor sacct answered (the chunks may
    be queued all the same), rather than nothing found."""
    found: dict[tuple[str, int | None], str] = {}
    answered = False
    for argv in (["squeue", "-h", "-r", "-t", "all", "-o", "%i|%j", "--name", ",".join(names)],
                 ["sacct", "-n", "-P", "-X", "-o", "JobID,JobName", "-S", since, "--name", ",".join(names)]):  # fmt: skip
        try:
            out = run_command(argv, timeout=30)
        except SchedulerError:
            continue
        answered = True
        for line in out.splitlines():
            job_id, _, name = line.strip().partition("|")
            for jid in expand_job_id(job_id):
                found[(name, int(jid.split("_")[1]) if "_" in jid else None)] = jid
    return found if answered else None
