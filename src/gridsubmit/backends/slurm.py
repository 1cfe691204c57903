"""SLURM backend: submitit's SlurmExecutor, job arrays per resource group, sacct when due.

A thin composition of parts that each own one duty and never call back into it:

- ``slurm_waves``       the layout of attempts in arrays and packs; the queue cap and waves
- ``slurm_submission``  the submission commit (stage, sbatch, name the folder; adopt after a crash)
- ``slurm_status``      status rounds under the call budget; outages; jobs that linger
- ``slurm_cancel``      scancel, and the jobs of LOST attempts held until gone
- ``slurm_ghosts``      jobs that may be queued but can never run their cells
- ``slurm_accounting``  sacct's final record of each ended job
- ``slurm_script``      the batch script, the one place profile values enter it

On the node, a job runs ``python -m gridsubmit.task`` on the JSON spec of its cells instead of
submitit's ``_submit`` (which unpickles through submitit and imports numpy and asyncio on the
way: ~170 ms of CPU per job, more than a short cell itself). submitit still writes the script,
runs sbatch, makes the array and keeps its pickle of the same call.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from submitit.core.utils import JobPaths

from ..cluster import ClusterProfile
from ..manifest import STATE_DIR
from ..states import JobState
from .base import Backend, Handle, Submission, SubmitError, check_root
from .slurm_accounting import accounting
from .slurm_cancel import Cancels
from .slurm_commands import new_job_name
from .slurm_ghosts import Ghosts
from .slurm_status import StatusRounds
from .slurm_submission import PACK_KILL_GRACE_S, Refused, SubmissionCommit
from .slurm_waves import Waves


class SlurmBackend(Backend):
    name = "slurm"
    grace_s = 30.0  # sacct trails squeue by seconds; never judge a missing row sooner
    runs_unattended = True

    def __init__(self, profile: ClusterProfile, root: Path, workdir: Path, env: dict[str, str], run_id: str):
        super().__init__(profile, root, workdir, env)
        check_root(root, "slurm")
        self.run_id = run_id
        self.rounds = StatusRounds(profile)
        self.ghosts = Ghosts(profile.poll_min_s)
        self.cancels = Cancels()
        self.waves = Waves(profile, run_id, self.ghosts, self.rounds)
        self.commit = SubmissionCommit(profile, self.root / STATE_DIR, run_id, self.captured, self.ghosts, self.cancels)
        self.tasks = self.commit.tasks
        self._silent: set[str] = set()  # cell keys the last status round got no answer about
        self._lost: list[Handle] = []  # attempts that ended LOST this cycle: their jobs are stopped

    # --- what the runner reads of the parts ------------------------------------------------------

    @property
    def queue_cap(self) -> int:  # type: ignore[override]
        return self.waves.queue_cap

    @property
    def outage(self) -> dict | None:  # type: ignore[override]
        return self.rounds.outage

    @property
    def holding(self) -> set[str]:  # type: ignore[override]
        return self.cancels.holding

    def jobs_of(self, submissions: Sequence[Submission]) -> int:
        return self.waves.jobs_of(submissions)

    def queued_jobs(self, handles: Sequence[Handle]) -> int:
        return self.waves.queued_jobs(handles)

    def take_notes(self) -> list[str]:
        return self.waves.take_notes()

    def unanswered(self) -> set[str]:
        return self._silent

    # --- submission ----------------------------------------------------------------------------

    def assign(self, submissions: Sequence[Submission]) -> None:
        for chunk in self.waves.chunks(submissions):
            name = new_job_name(self.run_id)
            for index, pack in enumerate(chunk):
                for position, sub in enumerate(pack):
                    sub.record.update(job_name=name, array_task_id=index if len(chunk) > 1 else None)
                    if self.profile.cells_per_job > 1:
                        sub.record["pack"] = {"size": len(pack), "position": position}

    def submit(self, submissions: Sequence[Submission]) -> list[Handle]:
        by_name: dict[str, dict[int | None, list[Submission]]] = defaultdict(dict)
        for sub in submissions:
            by_name[sub.record["job_name"]].setdefault(sub.record["array_task_id"], []).append(sub)
        handles: list[Handle] = []
        self.rounds.unseen = True  # new jobs: asked about soon
        for by_index in by_name.values():
            packs = dict(sorted(by_index.items(), key=lambda item: item[0] or 0))  # array task N runs N.json
            res = next(iter(packs.values()))[0].resources
            try:
                chunk = self.commit.submit(packs, {index or 0: self._specs(pack) for index, pack in packs.items()})
            except OSError as exc:  # nothing reached the scheduler: these attempts never existed
                raise SubmitError(f"cannot write the cells of {len(packs)} job(s) under {self.tasks}: "
                                  f"{exc.strerror or exc}", handles) from None  # fmt: skip
            except Refused as no:
                raise self.waves.refused(no.kind, no.message, no.jobs, res.partition, no.tries, handles) from None
            for h in chunk:
                if not h.discarded:
                    h.record.update(self.waves.gpu_cap(res))
            handles += chunk
        return handles

    def _specs(self, pack: list[Submission]) -> list[dict]:
        # the captured variables and the profile's env are exported in the script, before the
        # profile's setup lines (module load, conda activate), which may change them: the
        # task lays nothing over them (but the secrets, which never enter the script)
        specs = [{**self.task_spec(sub), "env": {}, "forward_usr2": bool(self.profile.warn_signal)} for sub in pack]
        if not pack[0].record.get("pack"):
            return specs
        # the job's limit covers the whole pack; each cell keeps its own, enforced by the task
        return [{**spec, "time_limit_s": sub.resources.time_s, "kill_grace_s": PACK_KILL_GRACE_S}
                for spec, sub in zip(specs, pack)]  # fmt: skip

    def describe(self, submissions: Sequence[Submission]) -> str:
        """The site's limits as found, then the exact sbatch script of each array chunk
        (nothing is submitted)."""
        parts = ["\n".join(f"# {line}" for line in self.waves.site_limits().describe(self.profile.max_queued))]
        for chunk in self.waves.chunks(submissions):
            executor = self.commit.executor(chunk, f"gs-{self.run_id}-<chunk>")
            if len(chunk) > 1:
                executor.parameters["map_count"] = len(chunk)
            script = executor._make_submission_file_text(executor._submitit_command_str, "dry-run")
            cells = "\n".join(f"#   [{i}] {sub.key}: {' '.join(sub.argv)}" for i, pack in enumerate(chunk) for sub in pack)
            parts.append(f"# --- array of {len(chunk)} job(s) ---\n# array index -> cell:\n{cells}\n{script}")
        return "\n".join(parts)

    # --- status --------------------------------------------------------------------------------

    def asks(self, handles: Sequence[Handle]) -> bool:
        return self.rounds.due()

    def query(self, handles: Sequence[Handle], ask: bool) -> dict:
        """One status round when asked (attempts known by name only are looked up by name on
        the same cadence); the last answer, by job id, in between."""
        if ask:
            orphans = [h for h in handles if not h.job_id and h.job_name]
            unfound, answered = self.commit.adopt(orphans)
            if not answered:
                self.rounds.note_failures(["sacct: no answer to the lookup by name"])
            with_ids = [h for h in handles if h.job_id and not h.discarded]
            with_ids += [h for h, _ in self.rounds.lingering.values()]
            silent_ids, calls = self.rounds.ask(with_ids) if with_ids else (set(), 0)
            self.rounds.spent(calls + (2 if orphans else 0))
            self._silent = {h.key for h in with_ids if h.job_id in silent_ids} | (set() if answered else
                                                                                 {h.key for h in unfound})  # fmt: skip
            self.cancels.retry(self.rounds.ended)
            self.rounds.unseen = any(not h.job_id or h.job_id not in self.rounds.by_id for h in handles)
        rows: dict = {}
        for h in handles:
            if h.discarded:
                rows[h.key] = (JobState.LOST, {"error": h.discarded})
            elif h.job_id in self.rounds.by_id:
                rows[h.key] = self.rounds.by_id[h.job_id]
        return rows

    def poll(self, handles: Sequence[Handle]) -> list:
        if not handles and (self.rounds.lingering or self.cancels.pending):  # ended jobs hold the queue, or LOST ones to stop
            self.query([], self.asks([]))
        observations = super().poll(handles)
        # LOST means no word from the scheduler for the whole grace period (an outage, say):
        # before the retry policy submits the cell again, make sure the old job cannot run too
        lost, self._lost = self._lost, []
        if lost:
            self.cancels.lost(lost, self.rounds.ended)
        return observations

    def on_end(self, h: Handle, state: JobState) -> None:
        self.rounds.linger(h)
        if state is JobState.LOST and h.job_id and not h.discarded and not h.pack_ended:
            self._lost.append(h)

    def poll_interval(self, previous: float | None, changed: bool) -> float:
        return min(0.25, self.profile.poll_min_s)  # result files every tick; the scheduler when due

    def sleep(self, seconds: float) -> None:
        """Between poll cycles: ghosts are chased on the way."""
        started = time.monotonic()
        self.ghosts.chase()
        super().sleep(max(0.0, seconds - (time.monotonic() - started)))

    def close(self, finished: bool) -> None:
        self.ghosts.close()

    def job_log(self, h: Handle) -> Path | None:
        return JobPaths(self.commit.folder, job_id=h.job_id).stderr if h.job_id else None

    def enrich(self, handles: Sequence[Handle]) -> dict[str, dict]:
        return accounting(handles, self.rounds)

    def cancel(self, handles: Sequence[Handle]) -> None:
        self.cancels.cancel(handles)
        self.rounds.soon()

    # --- re-attach -----------------------------------------------------------------------------

    def reattach(self, records: Sequence[tuple[dict, dict]]) -> list[Handle]:
        handles = []
        self.rounds.unseen = bool(records)
        for cell, attempt in records:
            h = self.handle_from_record(cell, attempt)
            h.job_name, h.submitted_at = attempt.get("job_name"), attempt.get("submitted_at")
            h.array_task_id = attempt.get("array_task_id")
            handles.append(h)
        _, answered = self.commit.adopt([h for h in handles if h.job_id is None and h.job_name])
        if not answered:
            self.rounds.note_failures(["sacct: no answer to the lookup by name"])
        return handles
