"""SLURM backend: submitit's SlurmExecutor, job arrays per resource group, one sacct per poll.

Cells with equal resources go into one array (one sbatch through submitit's ``batch()``),
split into chunks no larger than the cluster's MaxArraySize. Every chunk has its own job
name ``gs-<run>-<chunk>``, written to the manifest with each cell's array index *before*
sbatch runs, so a runner that dies right after sbatch can be followed by one that adopts
the jobs by name instead of submitting them again.

On the node, a job runs ``python -m gridsubmit.task`` on the JSON spec of its cells,
written beside the run (``.gridsubmit/tasks/<job name>/<array index>.json``), instead of
submitit's ``_submit``, which unpickles through submitit and imports numpy and asyncio on
the way: ~170 ms of CPU per job, more than a short cell itself. submitit still writes the
script, runs sbatch, makes the array and keeps its pickle of the same call.

Status comes from one ``sacct`` call for all job ids of the run (filtered by name and
start time: job ids are reused when a cluster is reset), with ``squeue`` when sacct fails;
and only for attempts whose own ``result.json`` does not already settle them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
import shutil
import subprocess
import time
import uuid
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import submitit
from submitit.core.utils import JobPaths

from .. import context as ctx
from ..cluster import ClusterProfile, Resources
from ..crashpoints import point
from ..manifest import ACCOUNTING_PENDING, STATE_DIR
from ..states import JobState, from_slurm
from ..task import RESULT, TASKS_DIR, run_pack
from .base import Backend, Handle, SchedulerError, Submission, SubmitError, check_root, never_runs

DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's own default
log = logging.getLogger(__name__)
PACK_KILL_GRACE_S = 10  # a packed cell past its own limit: SIGTERM, then SIGKILL this long after
LINGER_MAX_S = 120.0  # an ended job the scheduler keeps listing stops counting against max_queued then
PENDING_REASONS_EVERY_S = 60.0  # squeue for why queued jobs wait (held, bad account, ...)
ACCOUNTING_WAIT_S = 15.0  # at the end of a run, how long to wait for sacct's word on jobs that left no result
SACCT_FIELDS = "JobID,JobName,State,ExitCode,NodeList,MaxRSS,Elapsed,AllocTRES"
# what an attempt holds of a sacct or squeue row (besides node)
ROW_FIELDS = ("scheduler_state", "scheduler_exit_code", "elapsed", "max_rss", "pending_reason", "stuck", "alloc_tres")


def run_command(argv: list[str], timeout: float = 60) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SchedulerError(f"{argv[0]}: {exc}") from None
    if proc.returncode != 0:
        raise SchedulerError(f"{argv[0]} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


class NodeTaskExecutor(submitit.SlurmExecutor):
    """submitit's SLURM executor whose jobs run gridsubmit's node task (stdlib only) on the
    cells' JSON spec: ``cells`` is a folder of one file per array index, or one file."""

    def __init__(self, folder: Path, python: str | None, cells: Path):
        super().__init__(folder=folder, python=python)
        self.cells = cells

    @property
    def _submitit_command_str(self) -> str:
        return f"{self.python} -m gridsubmit.task {shlex.quote(str(self.cells))}"


class SlurmBackend(Backend):
    name = "slurm"
    grace_s = 30.0  # sacct trails squeue by seconds; never judge a missing row sooner
    runs_unattended = True

    def __init__(self, profile: ClusterProfile, root: Path, workdir: Path, env: dict[str, str], run_id: str):
        super().__init__(profile, root, workdir, env)
        self.run_id = run_id
        self.folder = self.root / STATE_DIR / "submitit"
        self.tasks = self.root / STATE_DIR / TASKS_DIR  # one folder of cell specs per array chunk
        check_root(root, "slurm")
        self._max_array_size = profile.max_array_size
        self._by_id: dict[str, tuple[JobState | None, dict]] = {}  # the last answer, by job id
        self._last_query = -math.inf
        self._query_every = profile.poll_min_s
        self.queue_cap = profile.max_queued
        self._reasons_at = -math.inf
        self._lingering: dict[str, tuple[Handle, float]] = {}  # job id -> (an ended attempt of it, since)
        self._accounted: dict[str, dict] = {}  # job id -> sacct's final record of it
        self._unseen = False  # some followed attempt has no row from the scheduler yet
        self._lost: list[Handle] = []  # attempts that ended LOST this cycle: their jobs are cancelled
        self.holding: set[str] = set()  # cells whose LOST job is not known to be gone: not submitted again yet
        self._uncancelled: list[Handle] = []  # those LOST attempts, their scancel still to succeed
        self._silent: set[str] = set()  # cell keys the last status round got no answer about
        self.outage: dict | None = None  # since when status calls fail, and how many did

    # --- submission ----------------------------------------------------------------------------

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

    def chunks(self, submissions: Sequence[Submission]) -> list[list[list[Submission]]]:
        """Equal resources share an array whose tasks are packs of ``cells_per_job`` cells;
        arrays are cut at MaxArraySize tasks."""
        groups: dict[Resources, list[Submission]] = defaultdict(list)
        for sub in submissions:
            groups[sub.resources].append(sub)
        k, size = self.profile.cells_per_job, self.max_array_size
        packs = [subs[i : i + k] for subs in groups.values() for i in range(0, len(subs), k)]
        chunks: list[list[list[Submission]]] = []
        for pack in packs:  # packs of one group are consecutive: start a new array where the group changes
            if chunks and len(chunks[-1]) < size and chunks[-1][0][0].resources == pack[0].resources:
                chunks[-1].append(pack)
            else:
                chunks.append([pack])
        return chunks

    def jobs_of(self, submissions: Sequence[Submission]) -> int:
        """How many jobs (array tasks) these attempts take in the queue."""
        return sum(len(chunk) for chunk in self.chunks(submissions))

    def queued_jobs(self, handles: Sequence[Handle]) -> int:
        """Jobs of these attempts, plus jobs whose cells have ended but that the scheduler
        still lists (the task is still writing its files): they hold a place in the queue."""
        return len({h.job_id or (h.extra.get("job_name"), h.extra.get("array_task_id"), h.key) for h in handles}
                   | set(self._lingering))  # fmt: skip

    def assign(self, submissions: Sequence[Submission]) -> None:
        for chunk in self.chunks(submissions):
            name = f"gs-{self.run_id}-{uuid.uuid4().hex[:6]}"
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
        self._unseen = True  # new jobs: asked about soon
        for name, by_index in by_name.items():
            packs = dict(sorted(by_index.items(), key=lambda item: item[0] or 0))  # array task N runs N.json
            subs = [sub for pack in packs.values() for sub in pack]
            res = subs[0].resources
            cells = {index or 0: self._specs(pack) for index, pack in packs.items()}
            try:
                staged = self._stage(name, cells)
            except OSError as exc:  # nothing reached the scheduler: these attempts never existed
                raise SubmitError(f"cannot write the cells of {len(packs)} job(s) under {self.tasks}: "
                                  f"{exc.strerror or exc}", handles) from None  # fmt: skip
            executor = self._chunk_executor(list(packs.values()), name)
            try:
                with executor.batch():
                    jobs = [executor.submit(run_pack, specs) for specs in cells.values()]
            except Exception as exc:  # sbatch's own message is the useful part
                shutil.rmtree(staged, ignore_errors=True)
                queued = self._queued_despite(name, subs)
                if queued is None:
                    raise SubmitError(f"sbatch refused {len(packs)} job(s) for partition "
                                      f"{res.partition or '(default)'}: {_clean(exc)}", handles) from None  # fmt: skip
                handles += queued
                continue
            chunk = []
            for pack, job in zip(packs.values(), jobs):
                array_id = job.job_id.split("_")[0]
                script = JobPaths(self.folder, job_id=array_id).submission_file
                for sub in pack:
                    h = sub.handle(job_id=job.job_id, state=JobState.PENDING,
                                   extra={"job_name": name, "pack": sub.record.get("pack"),
                                          "record": {"array_job_id": array_id, "script": str(script)}})  # fmt: skip
                    chunk.append(h)
            try:
                os.rename(staged, self.tasks / name)  # the jobs find their cells from now on
            except OSError as exc:  # they never will: they give up without running anything
                self._discard(chunk, f"its cells could not be named for the node ({exc.strerror or exc})")
            handles += chunk
            point("sbatch-returned")
        return handles

    def _stage(self, name: str, cells: dict[int, list[dict]]) -> Path:
        """Each job's cells, as the node task reads them, in a folder that takes the chunk's
        name only once sbatch has queued it (a job that starts sooner waits for it): a job
        sbatch queued while reporting a failure finds nothing to run."""
        staged = self.tasks / f".{name}"
        staged.mkdir(parents=True)
        try:
            for index, specs in cells.items():
                (staged / f"{index}.json").write_text(json.dumps({"cells": specs}))
        except OSError:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        return staged

    def _chunk_executor(self, packs: list[list[Submission]], name: str) -> submitit.SlurmExecutor:
        """The executor of one array; a pack's job may take each cell's limit plus the grace
        period of its kill."""
        res = packs[0][0].resources
        if self.profile.cells_per_job > 1:
            res = replace(res, time_s=max(len(p) for p in packs) * (res.time_s + PACK_KILL_GRACE_S))
        # an array task finds its file by its index; a lone job is told its file, as it may
        # inherit an SLURM_ARRAY_TASK_ID from a submitter that runs in an array task itself
        return self._executor(res, name, self.tasks / name if len(packs) > 1 else self.tasks / name / "0.json")

    def _specs(self, pack: list[Submission]) -> list[dict]:
        if not pack[0].record.get("pack"):
            return [self._spec(pack[0])]
        # the job's limit covers the whole pack; each cell keeps its own, enforced by the task
        return [{**self._spec(sub), "time_limit_s": sub.resources.time_s, "kill_grace_s": PACK_KILL_GRACE_S} for sub in pack]

    def _queued_despite(self, name: str, chunk: list[Submission]) -> list[Handle] | None:
        """sbatch failed: did it queue the array all the same (a timeout, a lost reply)? Then
        its tasks have no cells to run (their folder was never named): cancel them, and hand
        back their attempts as LOST so they are submitted again. None when nothing was queued."""
        for _ in range(3):
            found = find_by_name([name], self._since([]))
            if found:
                break
            time.sleep(1)
        else:
            return None
        handles = []
        for sub in chunk:
            h = sub.handle(state=JobState.PENDING, extra={"job_name": name, "array_task_id": sub.record["array_task_id"]})
            job_id = found.get((name, sub.record["array_task_id"]))
            h.job_id = job_id
            h.extra["record"] = {"array_job_id": job_id.split("_")[0]} if job_id else {}
            handles.append(h)
        self._discard(handles, "sbatch reported a failure but queued it")
        return handles

    def _discard(self, handles: Sequence[Handle], why: str) -> None:
        """Jobs that can never run their cell (their submission was cut short): cancel them;
        their attempts end LOST, so the retry policy submits the cells again."""
        ids = [h.job_id for h in handles if h.job_id]
        if ids:
            try:
                self.cancel(handles)
            except SchedulerError:
                pass  # they fail on their own within a minute, without running the command
        for h in handles:
            h.extra["discarded"] = f"{why}; job {h.job_id or '?'} was cancelled and the cell is submitted again"

    def _spec(self, sub: Submission) -> dict:
        # the captured variables and the profile's env are exported in the script, before the
        # profile's setup lines (module load, conda activate), which may change them: the
        # task lays nothing over them (but the secrets, which never enter the script)
        return {**self.task_spec(sub), "env": {}, "forward_usr2": bool(self.profile.warn_signal)}

    def _executor(self, res: Resources, name: str, cells: Path) -> submitit.SlurmExecutor:
        p = self.profile
        # the interpreter goes into the script as it is: quote it (a path may hold spaces)
        executor = NodeTaskExecutor(self.folder, shlex.quote(p.python) if p.python else None, cells)
        params: dict = {"job_name": name, "time": max(1, math.ceil(res.time_s / 60)), "use_srun": p.use_srun,
                        "stderr_to_stdout": False, "signal_delay_s": 0}  # fmt: skip
        for key in ("partition", "cpus_per_task", "account", "qos", "constraint"):
            if getattr(res, key) is not None:
                params[key] = getattr(res, key)
        if res.mem_mb:
            params["mem"] = f"{res.mem_mb}M"
        # gridsubmit owns every retry: a job SLURM requeued after a node failure would run
        # the cell again beside the new attempt
        extra = {"no-requeue": True, **p.sbatch_extra}
        if res.gpus_per_job:
            count = f"{res.gpu_type}:{res.gpus_per_job}" if res.gpu_type else str(res.gpus_per_job)
            if p.gpu_request == "gres":
                params["gres"] = f"gpu:{count}"
            elif p.gpu_request == "gpus-per-node":
                params["gpus_per_node"] = count
            else:
                extra["gpus"] = count
        if p.warn_signal:  # a warning before the limit, forwarded to the command
            extra["signal"] = p.warn_signal
        if p.array_parallelism:
            params["array_parallelism"] = p.array_parallelism
        plain = {k: v for k, v in self.captured.items() if not ctx.SECRET.search(k)}
        exports = [f"export {k}={shlex.quote(str(v))}" for k, v in {**plain, **p.env}.items()]
        if exports or p.setup:
            params["setup"] = [*exports, *p.setup]
        if extra:
            params["additional_parameters"] = extra
        executor.update_parameters(**params)
        return executor

    def describe(self, submissions: Sequence[Submission]) -> str:
        """The exact sbatch script of each array chunk (nothing is submitted)."""
        parts = []
        for chunk in self.chunks(submissions):
            executor = self._chunk_executor(chunk, f"gs-{self.run_id}-<chunk>")
            if len(chunk) > 1:
                executor.parameters["map_count"] = len(chunk)
            script = executor._make_submission_file_text(executor._submitit_command_str, "dry-run")
            cells = "\n".join(f"#   [{i}] {sub.key}: {' '.join(sub.argv)}" for i, pack in enumerate(chunk) for sub in pack)
            parts.append(f"# --- array of {len(chunk)} job(s) ---\n# array index -> cell:\n{cells}\n{script}")
        return "\n".join(parts)

    # --- status --------------------------------------------------------------------------------

    def asks(self, handles: Sequence[Handle]) -> bool:
        """After the adaptive interval, or sooner (poll_min_s) while some job has no row yet
        or ended jobs linger in the queue."""
        elapsed = time.monotonic() - self._last_query
        return elapsed >= self._query_every or elapsed >= self.profile.poll_min_s and (self._unseen or bool(self._lingering))

    def query(self, handles: Sequence[Handle], ask: bool) -> dict:
        """One sacct for every job id of the run (then one squeue for the ids sacct does not
        list yet, or for all when sacct fails), when asked; the answer is kept by job id in
        between. Attempts known by name only are looked up by name on the same cadence."""
        if ask:
            orphans = [h for h in handles if not h.job_id and h.extra.get("job_name")]
            unfound = self._adopt_by_name(orphans)
            with_ids = [h for h in handles if h.job_id and not h.extra.get("discarded")]
            with_ids += [h for h, _ in self._lingering.values()]
            silent_ids, calls = self._ask(with_ids, time.monotonic()) if with_ids else (set(), 0)
            calls += 2 if orphans else 0
            if calls:
                self._spent(calls)
            self._silent = {h.key for h in unfound} | {h.key for h in with_ids if h.job_id in silent_ids}
            self._retry_cancels()
            self._unseen = any(not h.job_id or h.job_id not in self._by_id for h in handles)
        rows: dict = {}
        for h in handles:
            if h.extra.get("discarded"):
                rows[h.key] = (JobState.LOST, {"error": h.extra["discarded"]})
            elif h.job_id in self._by_id:
                rows[h.key] = self._by_id[h.job_id]
        return rows

    def unanswered(self) -> set[str]:
        return self._silent

    def _ask(self, handles: Sequence[Handle], now: float) -> tuple[set[str], int]:
        """sacct (and squeue where needed) about these jobs: (the job ids it got no answer
        about, how many calls it made). A failed call is no evidence that a job is gone:
        only sacct's answer is (squeue forgets ended jobs), or squeue's when sacct answered."""
        ids = sorted({h.job_id.split("_")[0] for h in handles})
        names = sorted({h.extra["job_name"] for h in handles if h.extra.get("job_name")})
        cancelled = [h for h in handles if h.extra.get("cancel_sent")]
        failures = []
        try:
            by_id = self._sacct(ids, names, handles)
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
        self._outage(failures)
        if failures:  # ask again later, and later: a struggling controller gets fewer calls
            self._query_every = min(self.profile.poll_max_s, max(self.profile.poll_min_s, self._query_every * 2))
            self._by_id = {**self._by_id, **by_id}
            return {h.job_id for h in handles if h.job_id not in by_id}, calls
        # Ask again soon only when the scheduler has just ended jobs; queued -> running is not urgent.
        ended = {j for j, (state, _) in by_id.items() if state is not None and state.terminal}
        fresh = ended - {j for j, (state, _) in self._by_id.items() if state is not None and state.terminal}
        self._query_every = self.profile.poll_min_s if fresh else min(self.profile.poll_max_s, self._query_every * 1.5)
        self._by_id = {**self._by_id, **by_id}  # a row missing once (lag) keeps its last answer
        for job_id, (_, since) in list(self._lingering.items()):  # gone from the queue: room for the next wave
            state = by_id.get(job_id, (JobState.LOST, {}))[0]
            if state is not None and state.terminal or now - since > LINGER_MAX_S:
                del self._lingering[job_id]
        return set(), calls

    def _outage(self, failures: list[str]) -> None:
        """Keep count of status calls that failed in a row, and since when."""
        if not failures:
            self.outage = None
            return
        if self.outage is None:
            self.outage = {"since": time.time(), "failed_calls": 0}
        self.outage.update(failed_calls=self.outage["failed_calls"] + len(failures), last_error=failures[-1][:300])

    def poll(self, handles: Sequence[Handle]) -> list:
        if not handles and (self._lingering or self._uncancelled):  # ended jobs still hold the queue, or LOST ones to stop
            self.query([], self.asks([]))
        observations = super().poll(handles)
        # LOST means no word from the scheduler for the whole grace period (an outage, say):
        # before the retry policy submits the cell again, make sure the old job cannot run too
        lost, self._lost = self._lost, []
        if lost:
            self._uncancelled += lost
            self.holding |= {h.key for h in lost}
            self._retry_cancels()
        return observations

    def _retry_cancels(self) -> None:
        """scancel the jobs of LOST attempts until it succeeds or the scheduler shows them
        ended; until then their cells are not submitted again (both could run)."""
        if not self._uncancelled:
            return
        gone = [h for h in self._uncancelled if (self._by_id.get(h.job_id, (None,))[0] or JobState.PENDING).terminal]
        try:
            self.cancel([h for h in self._uncancelled if h not in gone])
        except SchedulerError as exc:
            log.warning("could not cancel LOST jobs %s: %s (asked again)", [h.job_id for h in self._uncancelled], exc)
            self._uncancelled = [h for h in self._uncancelled if h not in gone]
        else:
            self._uncancelled = []
        self.holding = {h.key for h in self._uncancelled}

    def on_end(self, h: Handle, state: JobState) -> None:
        if h.job_id and not (self._by_id.get(h.job_id, (None,))[0] or JobState.PENDING).terminal:
            self._lingering.setdefault(h.job_id, (h, time.monotonic()))
        if state is JobState.LOST and h.job_id and not h.extra.get("discarded") and not h.extra.get("pack_ended"):
            self._lost.append(h)

    def poll_interval(self, previous: float | None, changed: bool) -> float:
        return min(0.25, self.profile.poll_min_s)  # result files every tick; the scheduler when due

    @staticmethod
    def _since(handles: Sequence[Handle]) -> str:
        first = min(((h.extra.get("submitted_at") or time.time()) for h in handles), default=time.time())
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(first - 300))

    def _spent(self, calls: int) -> None:
        """One status call per poll_min_s on average, whatever the mix: the next is due
        poll_min_s after these returned (so no 60 s holds more than 60 / poll_min_s of them),
        one interval later for each call beyond the first."""
        self._last_query = time.monotonic() + (calls - 1) * self.profile.poll_min_s

    def _sacct(self, ids: list[str], names: list[str], handles: Sequence[Handle]) -> dict:
        """One sacct; final records are kept as the jobs' accounting."""
        by_id = sacct(ids, names, self._since(handles))
        self._accounted.update((j, info) for j, (state, info) in by_id.items() if state is not None and state.terminal)
        return by_id

    def job_log(self, h: Handle) -> Path | None:
        return JobPaths(self.folder, job_id=h.job_id).stderr if h.job_id else None

    def enrich(self, handles: Sequence[Handle]) -> dict[str, dict]:
        """sacct's final record (state, exit code, node, MaxRSS, Elapsed) of each ended
        attempt's job. Records seen while polling are used; the rest are asked for once,
        when a status call is due. sacct trails the jobs by seconds: an attempt that wrote
        its result (the node's own figures: elapsed_s, max_rss_bytes, cpu_s) is not waited
        for; it gets ``accounting: pending``, filled in by the next runner on the root
        (``wait``, ``submit``). Attempts that left no result are waited for, up to
        ACCOUNTING_WAIT_S, as the scheduler's word is all there is about their end."""
        jobs = {h.job_id for h in handles if h.job_id}
        unreported = {h.job_id for h in handles if h.job_id and not h.extra.get("reported")}
        deadline = time.monotonic() + ACCOUNTING_WAIT_S
        asked = False
        while missing := jobs - self._accounted.keys():
            pause = max(0.0, self._last_query + self.profile.poll_min_s - time.monotonic())
            if (asked or pause) and not missing & unreported or time.monotonic() + pause > deadline:
                break  # asked once when due; waited only for attempts that left no result
            time.sleep(pause)
            ask = [h for h in handles if h.job_id in missing]
            try:
                self._sacct(sorted({j.split("_")[0] for j in missing}),
                            sorted({h.extra["job_name"] for h in ask if h.extra.get("job_name")}), ask)  # fmt: skip
            except SchedulerError as exc:
                log.warning("sacct for the run's accounting failed: %s", exc)
            self._spent(1)
            asked = True
        # A reported attempt's last row was seen while its job ran: it says nothing about how
        # the job ended, so none of it stays. Without a result, the last row is all there is.
        pending = {"accounting": ACCOUNTING_PENDING}
        ran = {**pending, **dict.fromkeys(ROW_FIELDS)}
        return {j: {**self._accounted[j], "accounting": None} if j in self._accounted else
                pending if j in unreported else ran for j in jobs}  # fmt: skip

    def cancel(self, handles: Sequence[Handle]) -> None:
        """scancel, asked up to three times; raises SchedulerError if it keeps failing. A
        packed cell is marked so its task skips it; its job is cancelled only when the cell
        has started (its pack-mates that had not ended then run again) or all of the job's
        cells are asked to go."""
        ids = [h.job_id for h in handles if h.job_id and not h.extra.get("pack")]
        by_job: dict[str, list[Handle]] = defaultdict(list)
        for h in handles:
            h.extra.update(cancel_asked=True, looked=False)  # looked at again in the next cycle
            if h.job_id and h.extra.get("pack"):
                by_job[h.job_id].append(h)
        for job_id, mine in by_job.items():  # marked, then looked for a claim: see never_runs
            started = [h for h in mine if not never_runs(h) and not (h.attempt_dir / RESULT).exists()]
            if started or len(mine) == mine[0].extra["pack"]["size"]:
                ids.append(job_id)
        if ids:
            for attempt in range(3):
                try:
                    run_command(["scancel", *sorted(set(ids))])
                    break
                except SchedulerError:
                    if attempt == 2:
                        raise
                    time.sleep(1)
        for h in handles:
            if h.job_id in ids:
                h.extra["cancel_sent"] = True
        self._last_query = -math.inf  # ask again at once

    # --- re-attach -----------------------------------------------------------------------------

    def reattach(self, records: Sequence[tuple[dict, dict]]) -> list[Handle]:
        handles = []
        self._unseen = bool(records)
        for cell, attempt in records:
            h = self.handle_from_record(cell, attempt)
            h.extra.update(job_name=attempt.get("job_name"), submitted_at=attempt.get("submitted_at"),
                           array_task_id=attempt.get("array_task_id"))  # fmt: skip
            handles.append(h)
        self._adopt_by_name([h for h in handles if h.job_id is None and h.extra.get("job_name")])
        return handles

    def _adopt_by_name(self, orphans: Sequence[Handle]) -> list[Handle]:
        """Attempts recorded before sbatch answered: find their jobs by name. A job whose
        cells' folder was never named (the submitter died between sbatch and naming it) is
        rolled forward when the staged folder is complete (named now: its tasks wait for it
        up to a minute), else cancelled, its attempt LOST. Not found: asked again next time,
        until the grace period. Returns the orphans the scheduler gave no answer about."""
        if not orphans:
            return []
        found, answered = lookup_by_name(sorted({h.extra["job_name"] for h in orphans}), self._since(orphans))
        if not answered:
            self._outage(["sacct: no answer to the lookup by name"])
        adopted = []
        for h in orphans:
            job_id = found.get((h.extra["job_name"], h.extra.get("array_task_id")))
            if job_id:
                h.job_id = job_id
                h.extra["record"] = {"array_job_id": job_id.split("_")[0], "adopted": True}
                adopted.append(h)
        cut_short = [h for h in adopted if not (self.tasks / h.extra["job_name"]).is_dir()]
        for name in {h.extra["job_name"] for h in cut_short}:
            if self._roll_forward(name):
                cut_short = [h for h in cut_short if h.extra["job_name"] != name]
        if cut_short:
            self._discard(cut_short, "its submission was cut short before its cells were written")
        return [h for h in orphans if not h.job_id] if not answered else []

    def _roll_forward(self, name: str) -> bool:
        """Name the staged cells' folder of a chunk sbatch queued before its submitter died;
        False when it is missing or incomplete (a file that does not parse)."""
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


def _clean(exc: Exception) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return " / ".join(errors or lines[-3:])
