"""The protocol every backend implements, and the collection logic they share.

A backend only knows how to submit, ask its scheduler about many jobs at once, cancel, and
re-attach to jobs recorded in a manifest. Gathering the evidence about each attempt (the
task's own ``result.json``, done marks, the scheduler's view), handing it to the pure
decision (:func:`gridsubmit.decision.decide`), and pulling back logs, exit codes and metrics
happens here, once, for all backends.
"""

from __future__ import annotations

import os
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..cluster import ClusterProfile, Resources
from ..errors import UsageError
from .. import context as ctx
from .. import provenance as prov
from ..manifest import STATE_DIR, Observation, job_fields
from ..metrics import METRICS_FILE, read_metrics
from ..decision import Evidence, decide, settled_by_result
from ..states import JobState
from ..fileio import read_json, write_json_atomic
from ..task import CANCEL, CLAIM, RESULT, STDERR, STDOUT

DONE_DIR = "done"  # one empty file per ended attempt, named by done_name()
TAIL_LINES = 50
TAIL_BYTES = 8 * 1024


class SchedulerError(RuntimeError):
    """A scheduler command failed (it may succeed when asked again)."""


class SubmitError(UsageError):
    """The scheduler refused some attempts; ``handles`` are those it accepted before."""

    def __init__(self, message: str, handles: list["Handle"]):
        super().__init__(message)
        self.handles = handles


class QueueFull(SubmitError):
    """The scheduler refused some attempts for a limit on the user's queued jobs: they are
    due again, and are submitted when the run's jobs end (``handles``: those accepted before)."""


@dataclass
class Submission:
    """One attempt the runner wants run."""

    key: str
    attempt: int
    argv: Sequence[str]
    output_dir: Path
    attempt_dir: Path
    resources: Resources
    expected_outputs: tuple[str, ...] = ()
    record: dict[str, Any] = field(default_factory=dict)  # backend fields saved before submitting

    def handle(self, **kw) -> "Handle":
        # submitted just now: its end shows in the done folder, or by the scheduler
        return Handle(self.key, self.attempt, self.attempt_dir, self.output_dir, expected_outputs=self.expected_outputs,
                      looked=True, **kw)


@dataclass
class Handle:
    """A followed attempt: what was submitted, what has been seen of it, what was asked of it.
    Rebuilt from the manifest on re-attach; the runner and the backends share it."""

    # what was submitted
    key: str
    attempt: int
    attempt_dir: Path
    output_dir: Path
    job_id: str | None = None
    expected_outputs: tuple[str, ...] = ()
    job_name: str | None = None  # SLURM: the chunk's name, to find its jobs by (adoption)
    array_task_id: int | None = None
    pack: dict | None = None  # SLURM cells_per_job: {size, position} in its job
    submitted_at: float | None = None
    record: dict[str, Any] = field(default_factory=dict)  # fields for the manifest's attempt, once submitted
    # what has been seen
    state: JobState = JobState.SUBMITTED
    undecided_since: float | None = None  # since when the evidence is inconclusive (see decision.decide)
    looked: bool = False  # its result file was looked for at least once
    seen: dict | None = None  # the scheduler's last row about it, as last reported
    reported: bool = False  # its own result.json gave its end: the node's figures stand
    pack_ended: bool = False  # its pack's job ended before its turn
    # what was asked of it
    cancel_asked: bool = False
    cancel_sent: bool = False  # scancel went through
    discarded: str | None = None  # its job can never run it (why): LOST, submitted again
    # the local backend's own: the queued submission, the process (ours, or adopted by pid and start)
    submission: "Submission | None" = None
    process: Any = None

    def __post_init__(self) -> None:
        self.done_name = done_name(self.key, self.attempt)


class Backend(ABC):
    name: str
    grace_s: float  # how long inconclusive evidence is tolerated before judging (scheduler lag)
    runs_unattended: bool  # do submitted jobs progress with no runner attached?
    granting = True  # may start attempts (False: a cancel with no runner attached only follows)

    def __init__(self, profile: ClusterProfile, root: Path, workdir: Path, env: dict[str, str]):
        self.profile = profile
        self.root = Path(root)
        self.workdir = Path(workdir)  # every cell's command runs here
        self.captured = dict(env)  # the run's captured variables (the profile's env goes over them)
        self.done_dir = self.root / STATE_DIR / DONE_DIR

    def task_spec(self, sub: Submission) -> dict:
        """What the node-side task needs to run one attempt (see task.run_task). Secret-looking
        variables never travel in it (it is written beside the run, readable by all): the task reads
        them from the run's environment file, which only its owner can read."""
        plain, secrets = ctx.split_secrets(self.captured)
        return {"argv": list(sub.argv), "cwd": str(self.workdir), "output_dir": str(sub.output_dir),
                "attempt_dir": str(sub.attempt_dir), "env": {**plain, **self.profile.env},
                "env_file": str(self.root / STATE_DIR / ctx.ENV_FILE),
                "env_names": secrets,
                "done": str(self.done_dir / done_name(sub.key, sub.attempt)),
                "watch": sorted({*sub.expected_outputs, METRICS_FILE})}  # fmt: skip

    # --- what each backend implements ----------------------------------------------------------

    def assign(self, submissions: Sequence[Submission]) -> None:
        """Fill ``submission.record`` with what must be on disk before submitting (names
        to find the jobs by if the runner dies right after submitting)."""

    @abstractmethod
    def submit(self, submissions: Sequence[Submission]) -> list[Handle]:
        """Hand attempts to the scheduler; every returned handle is recorded before moving on."""

    @abstractmethod
    def query(self, handles: Sequence[Handle], ask: bool) -> dict[str, tuple[JobState | None, dict]]:
        """One bulk question to the scheduler (``ask``), or its last answer again: cell key ->
        (mapped state, extra fields); a cell the scheduler has no record of is left out."""

    def asks(self, handles: Sequence[Handle]) -> bool:
        """Is the scheduler asked this cycle? Between its answers only attempts with news of
        their own can change, and a cycle looks at those only."""
        return True

    def on_end(self, h: Handle, state: JobState) -> None:
        """An attempt has ended (it is no longer followed after this cycle)."""

    @abstractmethod
    def cancel(self, handles: Sequence[Handle]) -> None:
        """Ask the scheduler to stop these attempts; later polls report them CANCELLED."""

    @abstractmethod
    def reattach(self, records: Sequence[tuple[dict, dict]]) -> list[Handle]:
        """Handles for (cell, attempt) records of a manifest, from a fresh process."""

    queue_cap: int | None = None  # at most this many jobs of the run queued at once (None: no cap)
    outage: dict | None = None  # the scheduler does not answer: since, failed_calls, last_error
    holding: set[str] = frozenset()  # cells not to submit again yet (their old job may still run)

    def unanswered(self) -> set[str]:
        """Cells the last status round got no answer about: no evidence either way."""
        return set()

    def jobs_of(self, submissions: Sequence[Submission]) -> int:
        """How many jobs these attempts take in the queue."""
        return len(submissions)

    def queued_jobs(self, handles: Sequence[Handle]) -> int:
        """How many jobs these active attempts hold in the queue."""
        return len(handles)

    def describe(self, submissions: Sequence[Submission]) -> str:
        """What would be submitted, for --dry-run."""
        return "\n".join(f"{s.key}: {' '.join(s.argv)}" for s in submissions)

    def poll_interval(self, previous: float | None, changed: bool) -> float:
        """Adaptive: quick while things change, backing off to the profile's max when idle."""
        lo, hi = self.profile.poll_min_s, self.profile.poll_max_s
        if previous is None or changed:
            return lo
        return min(hi, previous * 1.5)

    def sleep(self, seconds: float) -> None:
        """Wait between poll cycles."""
        time.sleep(seconds)

    def close(self, finished: bool) -> None:
        """The runner stops (``finished``: nothing of the run is left to follow)."""

    def take_notes(self) -> list[str]:
        """What the user should know about the scheduler since the last call (the site's
        limits, a wave refused), once each."""
        return []

    def job_log(self, h: Handle) -> Path | None:
        """The stderr of the attempt's job itself (the wrapper, not the command), if it has one."""
        return None

    def enrich(self, handles: Sequence[Handle]) -> dict[str, dict]:
        """Accounting facts about ended attempts (cell key -> fields), asked once at the end."""
        return {}

    # --- shared collection -------------------------------------------------------------------

    def poll(self, handles: Sequence[Handle]) -> list[Observation]:
        if not handles:
            return []
        # Result files are opened only for attempts that may have ended: those the done
        # folder lists (one listdir), those not looked at yet, and (below) those the
        # scheduler no longer lists as queued or running.
        done = self._done_names()
        ask = self.asks(handles)
        if not ask:  # the scheduler's last answer stands: the others are as they were
            handles = [h for h in handles if h.done_name in done or h.undecided_since is not None or not h.looked]
        results = {}
        for h in handles:
            if h.done_name in done or not h.looked:
                results[h.key] = read_json(h.attempt_dir / RESULT)
                h.looked = True
            else:
                results[h.key] = None
        # A result that settles the attempt on its own needs no scheduler query.
        native = self.query([h for h in handles if not settled_by_result(results[h.key])], ask)
        silent = self.unanswered()
        now = time.monotonic()
        observations = []
        for h in handles:
            evidence = self._evidence(h, results[h.key], *native.get(h.key, (None, {})), h.key in silent, now)
            verdict = decide(evidence, h.state, h.undecided_since, now, self.grace_s)
            state, info, result = verdict.state, verdict.info, evidence.result
            h.undecided_since = verdict.undecided_since
            h.pack_ended = h.pack_ended or verdict.pack_ended
            if result is not None and state.terminal:
                h.reported = True  # the node's own figures stand for this attempt
                if h.done_name in done:  # read: the folder listed every cycle stays as small as what runs
                    self._forget_done(h.done_name)
            if state.terminal:
                self.on_end(h, state)
            # only what changed: nothing new about an attempt that runs on is the usual case
            if result is not None or state is not h.state or info is not h.seen and info != h.seen:
                h.seen = info
                observations.append(self._observe(h, state, result, info, evidence.outputs_wrong))
            h.state = state
        return observations

    def _evidence(self, h: Handle, result: dict | None, scheduled: JobState | None, info: dict, silent: bool,
                  now: float) -> Evidence:  # fmt: skip
        """What is known of one attempt this cycle, beyond its result as read already: the
        result again where the job may have ended without its done mark; for a packed cell
        whose job ended or was cancelled before its turn, whether anyone claimed it (it is
        marked first, so it never runs after this); its expected outputs after exit 0."""
        unlisted_for = 0.0 if h.undecided_since is None else now - h.undecided_since
        if result is None and (scheduled.terminal if scheduled is not None else unlisted_for >= self.grace_s):
            result = read_json(h.attempt_dir / RESULT)
        ended_or_cancelled = scheduled is not None and scheduled.terminal or h.cancel_asked
        unclaimed = bool(result is None and h.pack and ended_or_cancelled and never_runs(h))
        wrong = tuple(missing_outputs(h, result)) if result is not None and result.get("returncode") == 0 else ()
        return Evidence(result, scheduled, info, silent, unclaimed, h.cancel_asked, wrong)

    def _observe(self, h: Handle, state: JobState, result: dict | None, info: dict,
                 outputs_wrong: tuple[str, ...] = ()) -> Observation:  # fmt: skip
        # a packed cell's scheduler figures are its whole job's: kept as the pack's
        fields: dict[str, Any] = {"job_id": h.job_id, **h.record, **job_fields(info, h.pack)}
        if result is not None and state.terminal:
            fields.update(
                started_at=result.get("started_at"),
                ended_at=result.get("ended_at"),
                elapsed_s=result.get("elapsed_s"),
                node=result.get("hostname"),
                gpus=result.get("cuda_visible_devices"),
                returncode=result.get("returncode"),
                max_rss_bytes=result.get("max_rss_bytes"),
                cpu_s=result.get("cpu_s"),
                interrupted_by=result.get("interrupted_by"),
                error=result.get("error"),
            )
            gpus = result.get("gpu_info") or []
            if gpus:  # nvidia-smi on the node named them
                fields.update(gpu_name=", ".join(dict.fromkeys(g["name"] for g in gpus)), gpu_driver=gpus[0]["driver"])
            # the CUDA version nvidia-smi reports, and what the command's interpreter can import (the
            # runner keeps the list once per fingerprint: comparability.keep_environments)
            fields.update(cuda_version=result.get("cuda_version"), environment=result.get("environment"))
            if not result.get("started", True):  # the task says why (a signal, no runner left)
                fields["error"] = result.get("error") or "never started"
        elif state is JobState.CANCELLED and result is None and not (h.attempt_dir / CLAIM).exists():
            fields["error"] = "cancelled before its command started"  # no task ever took the attempt
        elif state.terminal and result is None and not fields.get("error"):
            fields["error"] = f"no result.json: the job ended as {state.value} before the command finished"
            log = self.job_log(h)
            said = last_said(tail(log)) if log is not None else ""
            if said:  # the job's own words: a missing module, a failed setup line, the scheduler's kill
                fields["error"] += f"; its log {log} says: {said}"
        if state is JobState.FAILED and result is not None and result.get("returncode") == 0:
            fields["error"] = f"exit 0 but {', '.join(outputs_wrong)}"
        metrics, problem, warning = None, None, None
        if state.terminal and state is not JobState.COMPLETED:  # what the operator reads; logs stay on disk
            fields["stdout_tail"] = tail(h.attempt_dir / STDOUT)
            fields["stderr_tail"] = tail(h.attempt_dir / STDERR)
            if not fields.get("error"):
                fields["error"] = reason(state, fields)
        if state is JobState.COMPLETED:
            if _left_over(h, result, METRICS_FILE):  # an earlier attempt's figures are not this one's
                problem = f"{METRICS_FILE} was not written by this attempt (it is an earlier attempt's)"
            else:
                metrics, problem, warning = read_metrics(h.output_dir / METRICS_FILE)
            # each file read once, here: what a reuse from another root checks the source and its copy against
            fields["outputs"] = prov.outputs_record(h.output_dir)
        return Observation(h.key, h.attempt, state, fields, metrics, problem, warning)

    def handle_from_record(self, cell: dict, attempt: dict) -> Handle:
        return Handle(key=cell["key"], attempt=attempt["attempt"], attempt_dir=self.root / attempt["dir"],
                      output_dir=Path(cell["output_dir"]), job_id=attempt.get("job_id"), state=JobState(attempt["state"]),
                      expected_outputs=tuple(cell.get("expected_outputs", ())),
                      pack=attempt.get("pack"), cancel_asked=bool(cell.get("cancel_requested")))  # fmt: skip

    def _forget_done(self, name: str) -> None:
        try:
            os.unlink(self.done_dir / name)
        except OSError:
            pass  # listed again next cycle: its result is read again, harmlessly

    def _done_names(self) -> set[str]:
        try:
            return set(os.listdir(self.done_dir))
        except FileNotFoundError:
            return set()


_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning)\b")
_IMPOSED_REASON = {JobState.TIMEOUT: "time limit reached", JobState.CANCELLED: "cancelled",
                   JobState.OUT_OF_MEMORY: "out of memory", JobState.NODE_FAIL: "node failure",
                   JobState.PREEMPTED: "preempted", JobState.LOST: "lost: no result and no scheduler record"}  # fmt: skip


def reason(state: JobState, fields: dict) -> str:
    """One line saying why an attempt did not complete: the exception line of a Python
    traceback, else the last line of stderr, else what the scheduler imposed."""
    said = last_said(fields.get("stderr_tail") or "")
    if state is JobState.FAILED:
        rc = fields.get("returncode")
        head = f"exit code {rc}" if rc is not None else "failed"
        return f"{head}: {said}" if said else head
    return _IMPOSED_REASON.get(state, state.value.lower()) + (f" (stderr: {said})" if said else "")


def last_said(text: str) -> str:
    """The line of a log that says most: the exception line of a Python traceback, else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    exceptions = [line for line in lines if _EXCEPTION.match(line)]
    return (exceptions or lines or [""])[-1][:300]


def check_root(root: Path, backend: str) -> None:
    """submitit reads % in its folder as job id patterns; on SLURM a backslash in
    --output/--error turns the patterns off, and sbatch takes no newline."""
    odd = [c for c in ("%", "\n", *(["\\"] if backend == "slurm" else [])) if c in str(root)]
    if odd:
        raise UsageError(f"{str(root)!r}: an artifact root cannot contain {' or '.join(map(repr, odd))} (submitit and "
                         "SLURM read them in file names); choose another --artifact-root")  # fmt: skip


def never_runs(h: Handle) -> bool:
    """Make sure an attempt nobody has claimed is never run: mark it, then look for a claim.
    The task claims first and looks for the mark after (task.run_task), so when no claim
    shows here, the task will find the mark and skip the cell."""
    if (h.attempt_dir / CLAIM).exists():
        return False
    if not (h.attempt_dir / CANCEL).exists():
        h.attempt_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(h.attempt_dir / CANCEL, {"at": time.time()})
    return not (h.attempt_dir / CLAIM).exists()


def done_name(key: str, attempt: int) -> str:
    return f"{key.replace('/', '~')}~{attempt}"  # '~' is in no dose, view or split name


def missing_outputs(h: Handle, result: dict | None = None) -> list[str]:
    """What is wrong with the attempt's expected outputs: missing, or left by an earlier
    attempt (the same size and mtime as before this one's command started)."""
    wrong = []
    for name in h.expected_outputs:
        if not (h.output_dir / name).is_file():
            wrong.append(f"{name} missing")
        elif _left_over(h, result, name):
            wrong.append(f"{name} not rewritten (left by an earlier attempt)")
    return wrong


def _left_over(h: Handle, result: dict | None, name: str) -> bool:
    before = ((result or {}).get("outputs_before") or {}).get(name)
    if before is None:
        return False
    try:
        st = (h.output_dir / name).stat()
    except OSError:
        return False
    return [st.st_size, st.st_mtime_ns] == before


def tail(path: Path, lines: int = TAIL_LINES, limit: int = TAIL_BYTES) -> str:
    """The last lines of a log, bounded in bytes; bytes that are not UTF-8 are replaced."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            data = fh.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if size > limit:  # drop the partial first line
        text = text.split("\n", 1)[-1]
    return "\n".join(text.splitlines()[-lines:])
