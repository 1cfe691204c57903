"""Ghosts: jobs that may be queued but can never run their cells.

sbatch can report a failure and queue the jobs all the same, and the lookup that would tell
can fail too; a discarded job's scancel can fail. Such a job waits up to a minute for a cells'
folder that never comes, holding its allocation, then gives up without running anything.
Until then it holds a place in the queue (it counts against ``max_queued``), and it is looked
up by name and cancelled as soon as the scheduler answers.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict

from .base import SchedulerError
from .slurm_commands import expand_job_id, run_command

log = logging.getLogger(__name__)
GHOST_SETTLE_S = 10.0  # a chunk sbatch may have queued while failing: looked for this long before it is let go


class Ghosts:
    def __init__(self, every_s: float):
        self.every_s = every_s  # squeue at most this often
        self._tasks: dict[str, int] = {}  # chunk name -> how many jobs it may hold
        self._since: dict[str, float] = {}
        self._looked = -math.inf

    def __bool__(self) -> bool:
        return bool(self._tasks)

    def note(self, name: str, tasks: int) -> None:
        self._tasks[name] = tasks
        self._since[name] = time.monotonic()

    def tasks(self, besides: set[str | None]) -> int:
        """The queue places they may hold, but for chunks followed under these names."""
        return sum(n for name, n in self._tasks.items() if name not in besides)

    def chase(self, closing: bool = False) -> None:
        """squeue by name (at most once per ``every_s``); scancel what it lists. A name no
        longer listed is let go GHOST_SETTLE_S after it was noted, or at once when
        ``closing`` (the last look there is; then a cancelled one is let go too)."""
        now = time.monotonic()
        if not self._tasks or not closing and now - self._looked < self.every_s:
            return
        self._looked = now
        try:
            out = run_command(["squeue", "-h", "-r", "-o", "%i|%j", "--name", ",".join(sorted(self._tasks))], timeout=30)
        except SchedulerError:
            return  # still counted until the scheduler answers
        listed: dict[str, list[str]] = defaultdict(list)
        for line in out.splitlines():
            job_id, _, name = line.strip().partition("|")
            if name in self._tasks:
                listed[name] += expand_job_id(job_id)
        for name in list(self._tasks):
            if listed.get(name):
                self._tasks[name] = len(listed[name])
                try:
                    run_command(["scancel", *listed[name]], timeout=30)
                except SchedulerError:
                    continue
                log.info("cancelled %s (%s): it could never run its cells", name, ", ".join(listed[name]))
                if closing:
                    self._forget(name)
            elif closing or now - self._since[name] >= GHOST_SETTLE_S:
                self._forget(name)

    def close(self) -> None:
        """The last look; what is left is said."""
        if self._tasks:
            self.chase(closing=True)
        if self._tasks:  # the scheduler did not answer, or would not cancel them
            names = ",".join(sorted(self._tasks))
            log.warning("jobs named %s may be queued and could not be cancelled; they end by themselves within a "
                        "minute without running anything (or: scancel --name %s)", names, names)  # fmt: skip

    def _forget(self, name: str) -> None:
        del self._tasks[name], self._since[name]
