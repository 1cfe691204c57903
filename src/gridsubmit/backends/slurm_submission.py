"""The submission commit: stage, sbatch, name the folder; adopt and roll forward after a crash.

Every array chunk has its own job name ``gs-<run>-<chunk>``, written to the manifest with each
cell's array index *before* sbatch runs (the runner saves ``Submission.record`` first). The
chunk's cells are staged in a folder ``.<name>`` that takes the chunk's name only once sbatch
has queued it; a job that starts sooner waits for it. So:

- sbatch fails: nothing runs. A job it queued all the same finds no cells; it is found by name
  and cancelled (or chased as a ghost), its attempts handed back LOST, to be submitted again.
- The submitter dies after sbatch: the next runner finds the jobs by name (adoption) and names
  the staged folder if it is complete (roll forward); else the jobs are cancelled, LOST.
- A transient failure is asked again under a new name, so jobs of the old one never run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import submitit
from submitit.core.utils import JobPaths

from ..cluster import ClusterProfile, Resources
from ..crashpoints import point
from ..states import JobState
from ..task import TASKS_DIR, run_pack
from .base import Handle, SchedulerError, Submission
from .slurm_cancel import Cancels
from .slurm_commands import clean_error, find_by_name_or_none, lookup_by_name, new_job_name, since
from .slurm_ghosts import Ghosts
from .slurm_limits import SUBMIT_TRIES, backoff_s, sbatch_failure
from .slurm_script import executor_for

log = logging.getLogger(__name__)
PACK_KILL_GRACE_S = 10  # a packed cell past its own limit: SIGTERM, then SIGKILL this long after

Cells = dict[int, list[dict]]  # array index -> the node task's specs of its pack's cells


class Refused(Exception):
    """sbatch refused a chunk (``kind``: slurm_limits.sbatch_failure's word); nothing of it runs."""

    def __init__(self, kind: str, message: str, jobs: int, tries: int):
        super().__init__(message)
        self.kind, self.message, self.jobs, self.tries = kind, message, jobs, tries


class SubmissionCommit:
    def __init__(self, profile: ClusterProfile, state_dir: Path, run_id: str, env: dict[str, str], ghosts: Ghosts,
                 cancels: Cancels):  # fmt: skip
        self.profile = profile
        self.folder = state_dir / "submitit"  # submitit's scripts, logs and pickles
        self.tasks = state_dir / TASKS_DIR  # one folder of cell specs per array chunk
        self.run_id = run_id
        self.env = env  # the run's captured variables, exported in the script
        self.ghosts = ghosts
        self.cancels = cancels

    def submit(self, packs: dict[int | None, list[Submission]], cells: Cells) -> list[Handle]:
        """One chunk (array index -> its pack; all named alike in their records): its
        attempts' handles. Raises Refused, or OSError when its cells cannot be staged
        (nothing reached the scheduler)."""
        subs = [sub for pack in packs.values() for sub in pack]
        name = subs[0].record["job_name"]
        staged = self._stage(name, cells)
        sent = self._sbatch(name, staged, packs, cells)
        if isinstance(sent, list):  # sbatch reported a failure but queued it: discarded
            return sent
        name, staged, jobs = sent
        handles = []
        for pack, job in zip(packs.values(), jobs):
            array_id = job.job_id.split("_")[0]
            script = JobPaths(self.folder, job_id=array_id).submission_file
            for sub in pack:  # the name changes when sbatch was asked again
                record = {"array_job_id": array_id, "script": str(script), "job_name": name}
                handles.append(sub.handle(job_id=job.job_id, state=JobState.PENDING, job_name=name,
                                          pack=sub.record.get("pack"), record=record))  # fmt: skip
        try:
            os.rename(staged, self.tasks / name)  # the jobs find their cells from now on
        except OSError as exc:  # they never will: they give up without running anything
            self.discard(handles, f"its cells could not be named for the node ({exc.strerror or exc})")
        point("sbatch-returned")
        return handles

    def _stage(self, name: str, cells: Cells) -> Path:
        """Each job's cells, as the node task reads them, in the chunk's folder-to-be."""
        staged = self.tasks / f".{name}"
        staged.mkdir(parents=True)
        try:
            for index, specs in cells.items():
                (staged / f"{index}.json").write_text(json.dumps({"cells": specs}))
        except OSError:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        return staged

    def _sbatch(self, name: str, staged: Path, packs: dict[int | None, list[Submission]],
                cells: Cells) -> tuple[str, Path, list] | list[Handle]:  # fmt: skip
        """(the chunk's name, its staged cells, submitit's jobs), or the attempts (discarded)
        of a chunk sbatch queued while reporting a failure. A transient failure is asked
        again, up to SUBMIT_TRIES times with a growing pause, each time under a new name,
        after the chunk was looked up by its name: a chunk found is discarded, and one that
        could not be looked up is chased as a ghost, so nothing runs twice."""
        subs = [sub for pack in packs.values() for sub in pack]
        for retry in range(SUBMIT_TRIES):
            executor = self.executor(list(packs.values()), name)
            try:
                with executor.batch():
                    jobs = [executor.submit(run_pack, specs) for specs in cells.values()]
                return name, staged, jobs
            except Exception as exc:  # sbatch's own message is the useful part
                said, message = str(exc), clean_error(exc)
            found = find_by_name_or_none([name], since([]))
            if found:  # queued all the same: its jobs can never run (their folder was never named)
                shutil.rmtree(staged, ignore_errors=True)
                return self._queued_despite(name, subs, found)
            kind = sbatch_failure(said)
            if found is None or kind == "transient":  # it may still show up: looked for until it is gone
                self.ghosts.note(name, len(packs))
            if kind == "transient" and retry + 1 < SUBMIT_TRIES:
                log.warning("sbatch failed (%s); asking again (%d of %d tries)", message, retry + 2, SUBMIT_TRIES)
                time.sleep(backoff_s(retry))
                name, staged = self._renamed(name, staged, subs)
                continue
            shutil.rmtree(staged, ignore_errors=True)
            raise Refused(kind, message, len(packs), retry + 1)
        raise AssertionError("unreachable")

    def _renamed(self, name: str, staged: Path, subs: list[Submission]) -> tuple[str, Path]:
        """A chunk's new name before sbatch is asked again: jobs queued under the old one
        (unbeknown) never find cells to run."""
        new = new_job_name(self.run_id)
        moved = staged.with_name(f".{new}")
        os.rename(staged, moved)
        for sub in subs:
            sub.record["job_name"] = new
        return new, moved

    def executor(self, packs: list[list[Submission]], name: str) -> submitit.SlurmExecutor:
        """The executor of one array; a pack's job may take each cell's limit plus the grace
        period of its kill."""
        res: Resources = packs[0][0].resources
        if self.profile.cells_per_job > 1:
            res = replace(res, time_s=max(len(p) for p in packs) * (res.time_s + PACK_KILL_GRACE_S))
        # an array task finds its file by its index; a lone job is told its file, as it may
        # inherit an SLURM_ARRAY_TASK_ID from a submitter that runs in an array task itself
        cells = self.tasks / name if len(packs) > 1 else self.tasks / name / "0.json"
        return executor_for(self.profile, self.folder, res, name, cells, self.env)

    def _queued_despite(self, name: str, chunk: list[Submission], found: dict) -> list[Handle]:
        """sbatch failed but queued the array all the same (a timeout, a lost reply; ``found``:
        its jobs by name): cancel them, and hand back their attempts as LOST."""
        handles = []
        for sub in chunk:
            h = sub.handle(state=JobState.PENDING, job_name=name, array_task_id=sub.record["array_task_id"])
            job_id = found.get((name, sub.record["array_task_id"]))
            h.job_id = job_id
            h.record = {"job_name": name, **({"array_job_id": job_id.split("_")[0]} if job_id else {})}
            handles.append(h)
        self.discard(handles, "sbatch reported a failure but queued it")
        return handles

    def discard(self, handles: Sequence[Handle], why: str) -> None:
        """Jobs that can never run their cell (their submission was cut short): cancel them;
        their attempts end LOST, so the retry policy submits the cells again."""
        if any(h.job_id for h in handles):
            try:
                self.cancels.cancel(handles)
            except SchedulerError:  # they give up within a minute without running anything; until then, ghosts
                for name in {h.job_name for h in handles if h.job_id} - {None}:
                    self.ghosts.note(name, len({h.job_id for h in handles if h.job_name == name and h.job_id}))
        for h in handles:
            h.discarded = f"{why}; job {h.job_id or '?'} was cancelled and the cell is submitted again"

    # --- after a crash -------------------------------------------------------------------------

    def adopt(self, orphans: Sequence[Handle]) -> tuple[list[Handle], bool]:
        """Attempts recorded before sbatch answered: find their jobs by name. A job whose
        cells' folder was never named (the submitter died between sbatch and naming it) is
        rolled forward when the staged folder is complete, else cancelled, its attempt LOST.
        Returns (the orphans not found, whether the scheduler answered the lookup: if not,
        those are no evidence either way)."""
        if not orphans:
            return [], True
        found, answered = lookup_by_name(sorted({h.job_name for h in orphans}), since(h.submitted_at for h in orphans))
        adopted = []
        for h in orphans:
            job_id = found.get((h.job_name, h.array_task_id))
            if job_id:
                h.job_id = job_id
                h.record = {"array_job_id": job_id.split("_")[0], "adopted": True}
                adopted.append(h)
        cut_short = [h for h in adopted if not (self.tasks / h.job_name).is_dir()]
        for name in {h.job_name for h in cut_short}:
            if self._roll_forward(name):
                cut_short = [h for h in cut_short if h.job_name != name]
        if cut_short:
            self.discard(cut_short, "its submission was cut short before its cells were written")
        return [h for h in orphans if not h.job_id], answered

    def _roll_forward(self, name: str) -> bool:
        """Name the staged cells' folder of a chunk sbatch queued before its submitter died;
        False when it is missing or incomplete (a file that does not parse). Its tasks wait
        for the folder up to a minute."""
        staged = self.tasks / f".{name}"
        try:
            files = list(staged.glob("*.json"))
            if not files or any(not isinstance(json.loads(f.read_text()).get("cells"), list) for f in files):
                return False
            os.rename(staged, self.tasks / name)
        except (OSError, ValueError, AttributeError):
            return False
        log.info("rolled forward the submission of %s: its cells' folder is named", name)
        return True
