"""Stopping jobs: scancel for what the user or the runner asks, and the jobs of LOST attempts.

A packed cell shares its job with others: it is marked so its task skips it, and its job is
cancelled only when the cell has started (its pack-mates that had not ended then run again)
or every cell of the job is asked to go. An attempt judged LOST (no word from the scheduler
for the whole grace period: an outage, say) may still have a job that runs: its cell is held
back from the retry policy until scancel went through or the scheduler shows the job ended,
so the cell never runs twice at once.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Callable, Sequence

from ..task import RESULT
from .base import Handle, SchedulerError, never_runs
from .slurm_commands import run_command

log = logging.getLogger(__name__)
SCANCEL_TRIES = 3


class Cancels:
    def __init__(self) -> None:
        self.holding: set[str] = set()  # cells whose LOST job is not known to be gone
        self._uncancelled: list[Handle] = []  # those LOST attempts, their scancel still to succeed

    def cancel(self, handles: Sequence[Handle]) -> None:
        """scancel, asked up to SCANCEL_TRIES times; raises SchedulerError if it keeps failing."""
        ids = [h.job_id for h in handles if h.job_id and not h.pack]
        by_job: dict[str, list[Handle]] = defaultdict(list)
        for h in handles:
            h.cancel_asked, h.looked = True, False  # looked at again in the next cycle
            if h.job_id and h.pack:
                by_job[h.job_id].append(h)
        for job_id, mine in by_job.items():  # marked, then looked for a claim: see never_runs
            started = [h for h in mine if not never_runs(h) and not (h.attempt_dir / RESULT).exists()]
            if started or len(mine) == mine[0].pack["size"]:
                ids.append(job_id)
        if ids:
            for attempt in range(SCANCEL_TRIES):
                try:
                    run_command(["scancel", *sorted(set(ids))])
                    break
                except SchedulerError:
                    if attempt + 1 == SCANCEL_TRIES:
                        raise
                    time.sleep(1)
        for h in handles:
            if h.job_id in ids:
                h.cancel_sent = True

    def lost(self, handles: Sequence[Handle], ended: Callable[[str | None], bool]) -> None:
        """These attempts ended LOST: their jobs are stopped before their cells run again."""
        self._uncancelled += handles
        self.holding |= {h.key for h in handles}
        self.retry(ended)

    def retry(self, ended: Callable[[str | None], bool]) -> None:
        """scancel the jobs of LOST attempts that the scheduler (``ended``) does not show
        ended, until it succeeds; the cells held are those still to go."""
        if not self._uncancelled:
            return
        left = [h for h in self._uncancelled if not ended(h.job_id)]
        try:
            self.cancel(left)
        except SchedulerError as exc:
            log.warning("could not cancel LOST jobs %s: %s (asked again)", [h.job_id for h in left], exc)
            self._uncancelled = left
        else:
            self._uncancelled = []
        self.holding = {h.key for h in self._uncancelled}

    @property
    def pending(self) -> bool:
        """Some LOST attempt's scancel is still to succeed."""
        return bool(self._uncancelled)
