"""Waves: how a run's attempts are laid out in job arrays, and how many of its jobs may be
queued at once.

Cells with equal resources share an array whose tasks are packs of ``cells_per_job`` cells;
arrays are cut at the cluster's MaxArraySize. The queue cap is ``max_queued``, or less where
the site leaves less (its limits are read once per run); after sbatch refused a wave for a
limit, less again for LIMIT_RETRY_S. A job counts against the cap while it is followed, while
the scheduler still lists it after its cells ended, and while it may be a ghost.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Sequence

from .. import context as ctx
from ..cluster import ClusterProfile, Resources
from .base import Handle, QueueFull, SchedulerError, Submission, SubmitError
from .slurm_commands import run_command
from .slurm_ghosts import Ghosts
from .slurm_limits import SiteLimits, lookup
from .slurm_status import StatusRounds

DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's own default
LIMIT_RETRY_S = 60.0  # after sbatch refused a wave for a limit, a lower queue cap holds this long

Chunk = list[list[Submission]]  # one array: its tasks, each a pack of cells


class Waves:
    def __init__(self, profile: ClusterProfile, run_id: str, ghosts: Ghosts, rounds: StatusRounds):
        self.profile = profile
        self.run_id = run_id
        self.ghosts = ghosts
        self.rounds = rounds
        self._max_array_size = profile.max_array_size
        self._site: SiteLimits | None = None
        self._site_cap: int | None = None
        self._refused: tuple[float, int] | None = None  # a wave refused for a limit: (when, the cap it leaves)
        self._queued_last = 0  # the run's jobs in the queue when the runner last planned a wave
        self.notes: list[str] = []  # what the user should know, said once each

    # --- layout --------------------------------------------------------------------------------

    @property
    def max_array_size(self) -> int:
        if self._max_array_size is None:
            try:
                out = run_command(["scontrol", "show", "config"], timeout=30)
                m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
                self._max_array_size = int(m.group(1)) if m else DEFAULT_MAX_ARRAY_SIZE
            except SchedulerError:
                self._max_array_size = DEFAULT_MAX_ARRAY_SIZE
        return self._max_array_size

    def chunks(self, submissions: Sequence[Submission]) -> list[Chunk]:
        groups: dict[Resources, list[Submission]] = defaultdict(list)
        for sub in submissions:
            groups[sub.resources].append(sub)
        k, size = self.profile.cells_per_job, self.max_array_size
        packs = [subs[i : i + k] for subs in groups.values() for i in range(0, len(subs), k)]
        chunks: list[Chunk] = []
        for pack in packs:  # packs of one group are consecutive: start a new array where the group changes
            if chunks and len(chunks[-1]) < size and chunks[-1][0][0].resources == pack[0].resources:
                chunks[-1].append(pack)
            else:
                chunks.append([pack])
        return chunks

    def jobs_of(self, submissions: Sequence[Submission]) -> int:
        return sum(len(chunk) for chunk in self.chunks(submissions))

    # --- the queue cap -------------------------------------------------------------------------

    def queued_jobs(self, handles: Sequence[Handle]) -> int:
        """Jobs of these attempts, plus jobs the scheduler still lists after their cells
        ended, plus ghosts: they all hold a place in the queue."""
        self.ghosts.chase()
        followed = {h.job_id or (h.job_name, h.array_task_id, h.key) for h in handles}
        self._queued_last = self.ghosts.tasks({h.job_name for h in handles}) + len(followed | set(self.rounds.lingering))
        return self._queued_last

    @property
    def queue_cap(self) -> int:
        if self._site_cap is None:
            site = self.site_limits()
            self._site_cap, binding = site.cap(self.profile.max_queued)
            if binding is not None or site.problems:  # said when it matters (--dry-run says it all)
                self.notes += site.describe(self.profile.max_queued)
        cap = self._site_cap
        if self._refused is not None:
            at, refused = self._refused
            if time.monotonic() - at < LIMIT_RETRY_S:  # room opens as the run's own jobs end
                cap = min(cap, refused)
            else:
                self._refused = None
        return cap

    def site_limits(self) -> SiteLimits:
        """The submit limits of the user's association and of the QOS the run's jobs use, the
        GPU caps per user, and the user's other jobs queued: asked once (sacctmgr, squeue)."""
        if self._site is None:
            res = self.profile.resources
            asked = {res.qos} | {o.changes["qos"] for o in self.profile.overrides if "qos" in o.changes}
            accounts = {res.account} | {o.changes["account"] for o in self.profile.overrides if "account" in o.changes}
            account = sorted(accounts - {None}, key=str)[0] if accounts - {None} else None
            self._site = lookup(lambda argv: run_command(argv, timeout=30), ctx.user(), account,
                                sorted(asked, key=str), f"gs-{self.run_id}-")  # fmt: skip
        return self._site

    def gpu_cap(self, res: Resources) -> dict:
        """The GPU cap per user of the job's QOS, for the reason a job waits (QOSMaxGRESPerUser)."""
        if not res.gpus_per_job or self._site is None:
            return {}
        qos = res.qos or self._site.default_qos or "normal"
        caps = [value for value, where in self._site.gpus if where == f"QOS {qos}"]
        return {"gpu_cap": {"gpus": caps[0], "qos": qos}} if caps else {}

    def refused(self, kind: str, message: str, jobs: int, partition: str | None, tries: int,
                accepted: list[Handle]) -> SubmitError:  # fmt: skip
        """The error for a wave sbatch refused (``kind`` from slurm_limits.sbatch_failure).
        A refusal for a limit, or for a policy while the run has jobs queued, lowers the cap:
        the rest goes out in smaller waves as room comes (QueueFull)."""
        ours = self._queued_last + len({h.job_id for h in accepted})
        if kind == "limit" or kind == "policy" and ours:
            self._refused = (time.monotonic(), refused_cap(ours, jobs))
            self.notes.append(f"sbatch refused {jobs} job(s) for a limit ({message}); {ours} of this run's "
                              "jobs queued: the rest waits for room and goes out in smaller waves")  # fmt: skip
            return QueueFull(f"sbatch refused {jobs} job(s) for a limit: {message}", accepted)
        after = f" (after {tries} tries)" if tries > 1 else ""
        return SubmitError(f"sbatch refused {jobs} job(s) for partition {partition or '(default)'}: {message}{after}",
                           accepted)  # fmt: skip

    def take_notes(self) -> list[str]:
        notes, self.notes = self.notes, []
        return notes


def refused_cap(ours: int, refused: int) -> int:
    """The queue cap after sbatch refused ``refused`` jobs for a limit while ``ours`` of the
    run's were queued: the site allows fewer than ``ours + refused``. Half of the refused wave
    is tried next; a single job waits until one of the run's own ends (with none queued, until
    LIMIT_RETRY_S has passed)."""
    return ours + refused // 2
