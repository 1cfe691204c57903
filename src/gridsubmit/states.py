"""The one state vocabulary, and how a scheduler's view plus a task's own result become a state.

Nothing above ``backends/`` ever sees a scheduler's native strings: each backend maps them
here, and :func:`fate` decides what an attempt ended as.
"""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    PLANNED = "PLANNED"  # in the grid, not submitted yet
    BLOCKED = "BLOCKED"  # inputs missing: never run
    SUBMITTED = "SUBMITTED"  # handed to the backend, no scheduler word yet
    PENDING = "PENDING"  # queued by the scheduler
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"  # the command itself exited 0, and nothing else
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    LOST = "LOST"  # vanished without a result and without a scheduler record

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    final = terminal  # an attempt in a final state never changes again

    def may_become(self, new: "JobState") -> bool:
        """Whether an attempt in this state may be observed in ``new`` next (see ATTEMPT_MOVES)."""
        return new in ATTEMPT_MOVES[self]

    @property
    def active(self) -> bool:
        return self in (JobState.SUBMITTED, JobState.PENDING, JobState.RUNNING)

    def __str__(self) -> str:
        return self.value


# A JobState is a str, so a state's text is found in these sets too (the manifest holds text).
TERMINAL = frozenset(
    {
        JobState.BLOCKED,
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.TIMEOUT,
        JobState.CANCELLED,
        JobState.OUT_OF_MEMORY,
        JobState.NODE_FAIL,
        JobState.PREEMPTED,
        JobState.LOST,
    }
)

# Fates the scheduler imposes on a job from outside: a task killed by one of these cannot
# know why it died, so the scheduler's word wins over the task's own exit status.
IMPOSED = frozenset(
    {
        JobState.TIMEOUT,
        JobState.CANCELLED,
        JobState.OUT_OF_MEMORY,
        JobState.NODE_FAIL,
        JobState.PREEMPTED,
        JobState.LOST,  # the backend knows the job never reached the scheduler
    }
)

# How an attempt's state may move, in one place; manifest.merge refuses anything else (a
# bug, not a fate). Queued and running go both ways: SLURM requeues preempted jobs. A final
# state stays as it is. PLANNED and BLOCKED are cells' states, never an attempt's.
_ENDS = TERMINAL - {JobState.BLOCKED}
ATTEMPT_MOVES: dict[JobState, frozenset[JobState]] = {
    JobState.PLANNED: frozenset(),
    JobState.BLOCKED: frozenset(),
    JobState.SUBMITTED: frozenset({JobState.SUBMITTED, JobState.PENDING, JobState.RUNNING} | _ENDS),
    JobState.PENDING: frozenset({JobState.PENDING, JobState.RUNNING} | _ENDS),
    JobState.RUNNING: frozenset({JobState.RUNNING, JobState.PENDING} | _ENDS),
    **{state: frozenset({state}) for state in _ENDS},
}

_SLURM = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,
    "REQUEUED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "BOOT_FAIL": JobState.NODE_FAIL,
    "NODE_FAIL": JobState.NODE_FAIL,
    "TIMEOUT": JobState.TIMEOUT,
    "DEADLINE": JobState.TIMEOUT,
    "CANCELLED": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
    "PREEMPTED": JobState.PREEMPTED,
}
_SLURM_SHORT = {
    "PD": "PENDING", "CF": "CONFIGURING", "RQ": "REQUEUED", "RH": "REQUEUE_HOLD",
    "RF": "REQUEUE_FED", "RD": "RESV_DEL_HOLD", "R": "RUNNING", "CG": "COMPLETING",
    "RS": "RESIZING", "S": "SUSPENDED", "ST": "STOPPED", "SI": "SIGNALING", "SO": "STAGE_OUT",
    "CD": "COMPLETED", "F": "FAILED", "SE": "SPECIAL_EXIT", "BF": "BOOT_FAIL", "NF": "NODE_FAIL",
    "TO": "TIMEOUT", "DL": "DEADLINE", "CA": "CANCELLED", "RV": "REVOKED",
    "OOM": "OUT_OF_MEMORY", "PR": "PREEMPTED",
}  # fmt: skip


def from_slurm(text: str) -> JobState | None:
    """Map a SLURM state as sacct or squeue prints it (``CANCELLED by 0``, ``CD``,
    ``COMPLETED+``) to a JobState; None for UNKNOWN or anything unrecognised."""
    words = text.strip().split()
    if not words:
        return None
    word = words[0].rstrip("+").upper()
    return _SLURM.get(_SLURM_SHORT.get(word, word))


def fate(result: dict | None, scheduled: JobState | None, undecided_for_s: float, grace_s: float) -> JobState | None:
    """What one attempt is, from the task's ``result.json`` and the scheduler's view.

    ``result`` is the task's own record (None if not written); ``scheduled`` the backend's
    mapped state (None when the scheduler has no record of the job, or it vanished).
    ``undecided_for_s`` is how long the evidence has been inconclusive: scheduler records lag
    (sacct trails squeue by seconds), so a missing row is never judged before ``grace_s``.
    Returns None while the attempt is still undecided and should be polled again.
    """
    if result is not None:
        if result.get("cancelled"):  # skipped in its pack: cancelled before it started
            return JobState.CANCELLED
        if not result.get("started", True):  # the command never ran
            if scheduled in IMPOSED:
                return scheduled
            if result.get("interrupted_by"):  # stopped before it started: by a cancel (CANCELLED) or
                # something else; the scheduler's word decides, as for a command killed by a signal
                if scheduled is not None and scheduled.active or scheduled is None and undecided_for_s < grace_s:
                    return None
            return JobState.LOST
        if result.get("oom_killed"):
            return JobState.OUT_OF_MEMORY
        if result.get("timed_out"):
            return JobState.TIMEOUT
        rc = result.get("returncode")
        if rc == 0:
            return JobState.COMPLETED
        killed_from_outside = isinstance(rc, int) and rc < 0 and not result.get("signals_sent")
        if not result.get("interrupted_by") and not killed_from_outside:
            return JobState.FAILED  # the command failed on its own
        # Killed through a forwarded signal, or by a signal nobody forwarded (a node failure,
        # the OOM killer): the scheduler knows why. While it still calls the job queued or
        # running (ending, or requeued after preemption), keep waiting.
        if scheduled in IMPOSED:
            return scheduled
        if scheduled is not None and scheduled.active:
            return None
        if scheduled is not None or undecided_for_s >= grace_s:
            return JobState.FAILED
        return None
    if scheduled is None:
        return JobState.LOST if undecided_for_s >= grace_s else None
    if scheduled in IMPOSED:
        return scheduled
    if scheduled.terminal:
        # The scheduler says it ended but the task left no result: never call that success.
        if undecided_for_s < grace_s:
            return None
        return JobState.FAILED if scheduled is JobState.FAILED else JobState.LOST
    return scheduled
