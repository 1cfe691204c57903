"""Status rounds: what the scheduler says about a run's jobs, asked under a call budget.

One sacct for every job id of the run (filtered by name and start time: job ids are reused
when a cluster is reset), then one squeue for the ids sacct does not list yet, or for all when
sacct fails. At most one status call per ``poll_min_s`` on average, whatever the mix; quick
while jobs end, backing off to ``poll_max_s`` while nothing does, and further while calls fail.
A call that fails is no evidence that a job is gone: the jobs it would have answered about are
*silent* for that round, and the failures are counted as an outage.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

from ..cluster import ClusterProfile
from ..states import JobState
from .base import Handle, SchedulerError
from .slurm_commands import sacct, since, squeue

PENDING_REASONS_EVERY_S = 60.0  # squeue for why queued jobs wait (held, bad account, ...)
LINGER_MAX_S = 120.0  # an ended job the scheduler keeps listing stops counting against max_queued then

Row = tuple[JobState | None, dict]


class StatusRounds:
    def __init__(self, profile: ClusterProfile):
        self.profile = profile
        self.by_id: dict[str, Row] = {}  # the last answer, by job id; a row missing once (lag) keeps its last
        self.final: dict[str, dict] = {}  # job id -> sacct's final record of it: the job's accounting
        self.lingering: dict[str, tuple[Handle, float]] = {}  # job id -> (an ended attempt of it, since)
        self.unseen = False  # some followed attempt has no row yet: asked again soon
        self.outage: dict | None = None  # since when status calls fail, how many did, the last error
        self._last = -math.inf  # when the last call is counted to have returned
        self._every = profile.poll_min_s  # the adaptive interval between rounds
        self._reasons_at = -math.inf

    # --- the budget ----------------------------------------------------------------------------

    def due(self) -> bool:
        """After the adaptive interval, or sooner (poll_min_s) while some job has no row yet
        or ended jobs linger in the queue."""
        elapsed = time.monotonic() - self._last
        return elapsed >= self._every or elapsed >= self.profile.poll_min_s and (self.unseen or bool(self.lingering))

    def wait_s(self) -> float:
        """How long until one more call keeps within the budget."""
        return max(0.0, self._last + self.profile.poll_min_s - time.monotonic())

    def spent(self, calls: int) -> None:
        """The next call is due poll_min_s after these returned (so no 60 s holds more than
        60 / poll_min_s of them), one interval later for each call beyond the first."""
        if calls:
            self._last = time.monotonic() + (calls - 1) * self.profile.poll_min_s

    def soon(self) -> None:
        """Ask at the next round (after a cancel, say)."""
        self._last = -math.inf

    # --- the calls -----------------------------------------------------------------------------

    def sacct(self, ids: list[str], names: list[str], handles: Sequence[Handle]) -> dict[str, Row]:
        """One sacct; final records are kept as the jobs' accounting."""
        by_id = sacct(ids, names, since(h.submitted_at for h in handles))
        self.final.update((j, info) for j, (state, info) in by_id.items() if state is not None and state.terminal)
        return by_id

    def ask(self, handles: Sequence[Handle]) -> tuple[set[str], int]:
        """sacct (and squeue where needed) about these jobs: (the job ids it got no answer
        about, how many calls it made). Only sacct's answer says a job is gone (squeue forgets
        ended jobs), or squeue's when sacct answered."""
        now = time.monotonic()
        ids = sorted({h.job_id.split("_")[0] for h in handles})
        names = sorted({h.job_name for h in handles if h.job_name})
        cancelled = [h for h in handles if h.cancel_sent]
        failures = []
        try:
            by_id = self.sacct(ids, names, handles)
            missing = {h.job_id.split("_")[0] for h in handles if h.job_id not in by_id}
        except SchedulerError as exc:
            by_id, missing = {}, set(ids)
            failures.append(str(exc))
        missing |= {h.job_id.split("_")[0] for h in cancelled}
        # queued jobs: squeue says why they wait (sacct does not); asked now and then, as
        # every status call counts on a busy controller
        pending = set()
        if now - self._reasons_at >= PENDING_REASONS_EVERY_S:
            pending = {h.job_id for h in handles if (by_id.get(h.job_id) or (None,))[0] is JobState.PENDING}
            missing |= {j.split("_")[0] for j in pending}
            self._reasons_at = now
        # sacct lags squeue: a job it does not list yet may well be queued or running
        try:
            queued = squeue(sorted(missing), names) if missing else {}
        except SchedulerError as exc:
            queued = None
            failures.append(str(exc))
        by_id.update({j: row for j, row in (queued or {}).items() if j not in by_id or j in pending})
        for h in cancelled:  # squeue is the fresher word; a job scancel'ed while queued leaves no record at all
            if queued is not None:
                by_id[h.job_id] = queued.get(h.job_id) or (JobState.CANCELLED, {"scheduler_state": "CANCELLED"})
        calls = 1 + bool(missing)
        self.note_failures(failures)
        if failures:  # ask again later, and later: a struggling controller gets fewer calls
            self._every = min(self.profile.poll_max_s, max(self.profile.poll_min_s, self._every * 2))
            self.by_id = {**self.by_id, **by_id}
            return {h.job_id for h in handles if h.job_id not in by_id}, calls
        # Ask again soon only when the scheduler has just ended jobs; queued -> running is not urgent.
        ended = {j for j, (state, _) in by_id.items() if state is not None and state.terminal}
        fresh = ended - {j for j, (state, _) in self.by_id.items() if state is not None and state.terminal}
        self._every = self.profile.poll_min_s if fresh else min(self.profile.poll_max_s, self._every * 1.5)
        self.by_id = {**self.by_id, **by_id}
        for job_id, (_, at) in list(self.lingering.items()):  # gone from the queue: room for the next wave
            state = by_id.get(job_id, (JobState.LOST, {}))[0]
            if state is not None and state.terminal or now - at > LINGER_MAX_S:
                del self.lingering[job_id]
        return set(), calls

    def note_failures(self, failures: list[str]) -> None:
        """Keep count of status calls that failed in a row, and since when."""
        if not failures:
            self.outage = None
            return
        if self.outage is None:
            self.outage = {"since": time.time(), "failed_calls": 0}
        self.outage.update(failed_calls=self.outage["failed_calls"] + len(failures), last_error=failures[-1][:300])

    # --- what the answers say ------------------------------------------------------------------

    def ended(self, job_id: str | None) -> bool:
        """Does the last answer call this job ended?"""
        return (self.by_id.get(job_id, (None,))[0] or JobState.PENDING).terminal

    def linger(self, h: Handle) -> None:
        """An attempt has ended while the scheduler may still list its job (the task is
        still writing its files): the job holds a place in the queue until it goes."""
        if h.job_id and not self.ended(h.job_id):
            self.lingering.setdefault(h.job_id, (h, time.monotonic()))
