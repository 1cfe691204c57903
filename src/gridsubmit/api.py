"""The public Python API: plan a study, submit it, wait, look, cancel. The CLI uses nothing else.

    from gridsubmit import GridExecutor, load_study

    executor = GridExecutor("runs/g2", cluster="cluster_configs/slurm-gpu.yaml")
    grid = executor.plan(load_study("study.yaml"))
    run = executor.submit(grid)          # returns once submitted
    manifest = run.wait()                # polls to the end (re-attaches from any process)

and, for the study's own call site, :func:`execute_comparison_jobs`.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from . import context as ctx
from . import knobs as kn
from . import manifest as mf
from . import freshness
from . import provenance as prov
from . import reuse
from .backends.base import check_root
from .cluster import ClusterProfile, default_local_profile, load_profile, parse_profile
from .errors import UsageError
from .gpus import resolve as resolve_gpus
from .jobs import JobKey
from .preflight import check_commands
from .progress import ProgressLike, progress_of
from .runner import HangUp, Runner, cancel, detach_waiter, exit_status, make_backend, prepare, profile_of
from .states import JobState
from .study import Filters, Grid, Study, load_study, plan

ClusterLike = ClusterProfile | str | Path | Mapping[str, Any] | None
KnobsLike = kn.Knobs | Mapping[str, Any] | None
FOLLOW_EVERY_S = 0.5  # how often a second waiter re-reads the manifest of a run another process drives

# The fields of the study's ComparisonJob, and the built-in study's names for them.
JOB_INPUTS = ("phase_c_npz", "pinn_checkpoint", "baseline_checkpoint", "phase_f_manifest")
JOB_OPTIONS = ("ms_ssim_sigma", "skip_registration", "register_ptychi_only")


def load_cluster(cluster: ClusterLike = None) -> ClusterProfile:
    """A cluster profile from a YAML path, a mapping, a profile, or None (the local backend)."""
    if cluster is None:
        return resolve_gpus(default_local_profile())
    if isinstance(cluster, ClusterProfile):
        return resolve_gpus(cluster)
    if isinstance(cluster, Mapping):
        return resolve_gpus(parse_profile(dict(cluster), "cluster mapping"))
    return resolve_gpus(load_profile(cluster))


class GridExecutor:
    """Runs grids into one artifact root on one cluster profile (like submitit's executors)."""

    def __init__(self, artifact_root: str | Path, cluster: ClusterLike = None, *, progress: ProgressLike = None):
        self.root = Path(artifact_root).expanduser().resolve()
        self.profile = load_cluster(cluster)
        self.progress = progress_of(progress)

    def recorded_context(self) -> ctx.RunContext | None:
        """The working directory and environment of this root's run, if it has one."""
        manifest = mf.load(self.root)
        if manifest is None or not manifest.get("context"):
            return None
        return ctx.load(self.root / mf.STATE_DIR, manifest["context"])

    def plan(self, study: Study | str | Path | Mapping | None = None, *, filters: Filters = Filters(),
             workdir: str | Path | None = None,
             given: Sequence[tuple[JobKey, Mapping[str, Any]]] | None = None) -> Grid:  # fmt: skip
        """Every cell of ``study`` (a Study, a YAML path, a mapping, None: built-in) with its
        argv, run in the working directory this root recorded, else ``workdir``, else the
        study's, else the current directory."""
        if not isinstance(study, Study):
            study = load_study(study)
        recorded = self.recorded_context()
        where = recorded.workdir if recorded else workdir
        return plan(study, self.root, filters, python=self.profile.python, workdir=where, given=given)

    def context_for(self, grid: Grid) -> ctx.RunContext:
        """The context the grid's cells will run in: the recorded one, or captured now."""
        recorded = self.recorded_context()
        if recorded is not None:
            return recorded
        return ctx.capture(grid.workdir, [*grid.study.capture_env, *self.profile.capture_env])

    def check(self, grid: Grid) -> list[str]:
        """Problems that would stop the cells' command from starting (see preflight)."""
        context = self.context_for(grid)
        return check_commands((job.argv for job in grid.runnable), context.workdir, {**context.env, **self.profile.env})

    def due(self, preview: dict) -> list[str]:
        """The keys of the cells a manifest laid out by :meth:`preview` would run."""
        return [cell["key"] for cell in mf.due_cells(preview, self.profile.retry)]

    def preview(self, grid: Grid, *, rerun: mf.Rerun = mf.Rerun()) -> dict:
        """The manifest as ``submit`` would lay it out, without writing or submitting
        anything: each cell's state, ``stale`` reasons, and whether it is due to run."""
        return prepare(self.root, grid, self.profile, rerun, mf.new_run_id(), self.context_for(grid))

    def dry_run(self, grid: Grid, *, rerun: mf.Rerun = mf.Rerun()) -> str:
        """What would be submitted (for SLURM: the sbatch scripts); submits nothing."""
        manifest = self.preview(grid, rerun=rerun)
        return Runner(self.root, manifest, self.profile, make_backend(self.profile, self.root, manifest)).dry_run()

    def submit(self, grid: Grid, *, rerun_failed: bool = False, rerun_stale: bool = True, rerun_all: bool = False,
               rerun: Sequence[str] = (), hash_inputs: bool = False, wait: bool = False,
               timeout: float | None = None, command: str | None = None, reuse_from: Sequence[str | Path] = (),
               knobs: KnobsLike = None, progress: ProgressLike = None) -> "Run":  # fmt: skip
        """Record the grid in the root's manifest and submit its due cells: cells never run,
        and those ended before that ``rerun_failed`` / ``rerun_stale`` / ``rerun_all`` /
        ``rerun`` (cell keys) pick. The grid is the truth: a COMPLETED cell whose record
        differs from it (stale) runs again by default; with ``rerun_stale=False`` it stays,
        and counts as failed (``error: "stale: …"``) in ``execution_results``, never as a
        success. Other COMPLETED cells never run again. ``hash_inputs``: record each input's sha256 (else size and mtime). ``wait``:
        poll to the end here (``timeout`` seconds at most, then TimeoutError). Without
        ``wait`` a local run is handed to a background runner, since local cells need one.
        ``reuse_from``: artifact roots of earlier runs whose COMPLETED cells are copied instead
        of run where they ran from the same thing (see :mod:`gridsubmit.reuse`). ``knobs``:
        ``{"max_parallel", "time", "partition", "cells_per_job"}`` (or a
        :class:`gridsubmit.knobs.Knobs`) over the profile for this run, recorded in the
        submission. ``progress``: a callable given each :class:`gridsubmit.progress.ProgressEvent`
        while it waits (default: this executor's)."""
        selection = mf.Rerun(rerun_failed, rerun_stale, rerun_all, tuple(rerun))
        knob = kn.Knobs.of(knobs)
        kn.check(knob, self.profile.backend)
        profile = kn.apply(self.profile, knob)
        progress = self.progress if progress is None else progress_of(progress)
        context = self.context_for(grid)
        run_id = mf.new_run_id()
        prepare(self.root, grid, profile, selection, run_id, context)  # refuses before anything is written
        sources = reuse.load_sources(reuse_from, self.root) if reuse_from else []
        check_root(self.root, self.profile.backend)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / mf.STATE_DIR).mkdir(exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{self.root}: cannot create the artifact root: {exc.strerror or exc}") from None
        deadline = None if timeout is None else time.monotonic() + timeout
        hung_up = False
        with mf.RunLock(self.root, "submit"):
            old = mf.load(self.root)
            manifest = prepare(self.root, grid, profile, selection, run_id, context)
            if old is None or not old.get("context"):  # a new run, or one from before contexts were kept
                ctx.save(self.root / mf.STATE_DIR, context)
                manifest["context"] = context.as_manifest()
            manifest["schema_version"] = mf.SCHEMA_VERSION
            reused = None
            if sources:  # copied, not run: under this root's lock, before the due cells are counted
                reused = reuse.apply(manifest, sources, mf.due_cells(manifest, profile.retry), backend=profile.backend,
                                     workdir=str(context.workdir), submission=len(manifest.get("submissions", [])) + 1)  # fmt: skip
            due = [cell["key"] for cell in mf.due_cells(manifest, profile.retry)]
            who = {"user": ctx.user(), "host": socket.gethostname(), "cwd": os.getcwd(),
                   "command": command or shlex.join(sys.argv)}  # fmt: skip
            entry = mf.submission_record(manifest, selection, hash_inputs, due, prov.git_state(context.workdir), who)
            entry.update({k: v for k, v in (("knobs", knob.as_dict()), ("reuse", reused)) if v})
            manifest["submissions"] = [*manifest.get("submissions", []), entry]
            backend = make_backend(profile, self.root, manifest)
            runner = Runner(self.root, manifest, profile, backend, progress)
            if not wait and not backend.runs_unattended:
                runner.save()
            else:
                try:
                    runner.run(wait=wait, deadline=deadline)
                except HangUp:  # the terminal closed: the manifest is saved, the cells go on
                    hung_up = True
        run = Run(self.root)
        if not backend.runs_unattended and not run.done:
            detach_waiter(self.root)
        if hung_up:
            raise HangUp()
        if wait and not run.done:
            raise TimeoutError(f"{self.root}: not finished after {timeout} s; the run goes on (`gridsubmit wait {self.root}`)")
        return run


class Detached(KeyboardInterrupt):
    """``wait`` was interrupted and left the run going."""


class StuckError(RuntimeError):
    """``wait(fail_on_stuck=True)``: a job is held or otherwise cannot start by itself."""


class Run:
    """One artifact root's run, from any process: its manifest, waiting, cancelling."""

    def __init__(self, artifact_root: str | Path):
        self.root = Path(artifact_root).expanduser().resolve()

    @classmethod
    def open(cls, artifact_root: str | Path) -> "Run":
        run = cls(artifact_root)
        mf.existing(run.root)  # a clear error if there is no run here
        return run

    @property
    def manifest(self) -> dict:
        """The manifest as on disk now, with each COMPLETED cell's ``stale`` reasons judged now
        (see :mod:`gridsubmit.freshness`; ``freshness.notes`` says what the run as a whole
        is judged against) and the study's derived fields (execution_results, counts)."""
        manifest = mf.existing(self.root)
        return mf.with_results(freshness.with_verdict(manifest, freshness.judge(manifest)))

    @property
    def done(self) -> bool:
        """Every cell has ended and none is due for a retry."""
        manifest = mf.existing(self.root)
        return mf.finished(manifest) and not mf.due_cells(manifest, profile_of(manifest).retry)

    def stale(self) -> dict[str, list[str]]:
        """COMPLETED cells whose results no longer match what the study plans now: key -> reasons
        (an option, the command, the working directory, or an input on disk changed; the study
        file is read again when it changed since the last submit)."""
        return freshness.judge(mf.existing(self.root)).stale

    def ended(self) -> set[tuple[str, int]]:
        """(cell key, attempt number) of the attempts that have ended by now (none without a
        run here): what ended between two calls is what ran in between."""
        return mf.ended_attempts(mf.load(self.root))

    @property
    def exit_status(self) -> int:
        """0: every runnable cell completed; 1: any did not."""
        return exit_status(self.manifest)  # stale cells judged now: never a success

    def wait(self, timeout: float | None = None, progress: ProgressLike = None, fail_on_stuck: bool = False,
             cancel_on_interrupt: bool = False, knobs: KnobsLike = None) -> dict:  # fmt: skip
        """Drive the run to its end, or follow the process that drives it and take over when
        it stops. Raises TimeoutError after ``timeout`` seconds, leaving the run going, and
        with ``fail_on_stuck`` StuckError once a job waits for someone to act (held, ...).
        Interrupted (Ctrl-C), it detaches: a local run is handed to a background runner,
        unless ``cancel_on_interrupt``. ``progress``: a callable given each
        :class:`gridsubmit.progress.ProgressEvent` (an attempt ended; the counts), or a
        :class:`gridsubmit.progress.Progress`; by default events go to the ``gridsubmit``
        logger only. ``knobs`` (as for ``GridExecutor.submit``) apply from now on and are
        recorded in the last submission; they need this call to drive the run."""
        progress = progress_of(progress)
        knob = kn.Knobs.of(knobs)
        if knob:
            kn.check(knob, profile_of(mf.existing(self.root)).backend)
        deadline = None if timeout is None else time.monotonic() + timeout
        lock = mf.RunLock(self.root, "wait")
        following = False
        while True:
            if lock.acquire():
                try:
                    manifest = mf.existing(self.root)
                    if knob:
                        if not manifest.get("submissions"):
                            raise UsageError(f"{self.root}: this run has no submission history to record "
                                             f"{', '.join(kn.FLAGS[k][0] for k in knob.as_dict())} in; submit it again")  # fmt: skip
                        last = manifest["submissions"][-1]
                        last["knobs"] = {**(last.get("knobs") or {}), **knob.as_dict()}
                    profile = profile_of(manifest)
                    backend = make_backend(profile, self.root, manifest)
                    runner = Runner(self.root, manifest, profile, backend, progress)
                    try:
                        runner.run(wait=True, deadline=deadline, stop_when_stuck=fail_on_stuck,
                                   cancel_on_interrupt=cancel_on_interrupt)  # fmt: skip
                    except HangUp:  # the terminal closed: the run goes on without it
                        if profile.backend == "local":
                            lock.release()
                            detach_waiter(self.root)
                        raise
                    except KeyboardInterrupt:
                        if profile.backend == "local" and not cancel_on_interrupt:
                            lock.release()
                            detach_waiter(self.root)
                            raise Detached(f"{self.root}: detached; a background runner goes on "
                                           f"(`gridsubmit wait {self.root}` follows it, `gridsubmit cancel` stops it)") from None  # fmt: skip
                        raise
                    stuck = runner.stuck() if fail_on_stuck else []
                finally:
                    lock.release()
                if stuck:
                    raise StuckError(f"{self.root}: {len(stuck)} job(s) wait for someone to act: " + "; ".join(
                        f"{key} job {a['job_id']} ({a['pending_reason']})" for key, a in stuck) + "; the run goes on")
                break
            if knob:
                raise UsageError(f"{self.root}: {', '.join(kn.FLAGS[k][0] for k in knob.as_dict())} apply to a runner "
                                 f"this wait starts, and {mf.describe_holder(self.root)} drives the run; wait for it "
                                 "to end, or cancel and submit again")  # fmt: skip
            try:
                if not following:  # what ended before is not news
                    progress.seen(mf.existing(self.root))
                    following = True
                progress.update(mf.existing(self.root))  # another process drives it: follow
                if deadline is not None and time.monotonic() >= deadline:
                    break
                time.sleep(FOLLOW_EVERY_S)
            except KeyboardInterrupt:
                raise Detached(f"{self.root}: stopped following; {mf.describe_holder(self.root)} goes on") from None
        progress.done()
        if not self.done:
            if profile_of(mf.existing(self.root)).backend == "local" and mf.holder(self.root) is None:
                detach_waiter(self.root)  # local cells need a runner: hand over
            raise TimeoutError(f"{self.root}: not finished after {timeout} s; the run goes on")
        return self.manifest

    def cell(self, key: str, manifest: dict | None = None) -> dict:
        """One cell of the run by its key (``dose_1000/dense/train``), from ``manifest``
        (default: as on disk now)."""
        manifest = manifest or mf.existing(self.root)
        for cell in manifest["jobs"]:
            if cell["key"] == key:
                return cell
        raise UsageError(f"{self.root}: no cell {key!r}; cells are named like {manifest['jobs'][0]['key']!r}"
                         if manifest["jobs"] else f"{self.root}: the run has no cells")  # fmt: skip

    def attempt(self, key: str, attempt: int | None = None) -> dict:
        """One attempt of a cell as the manifest records it (default: its last attempt)."""
        attempts = self.cell(key)["attempts"]
        if not attempts:
            raise UsageError(f"{self.root}: cell {key} has not been submitted; it has no logs")
        if attempt is not None and not 1 <= attempt <= len(attempts):
            raise UsageError(f"{self.root}: cell {key} has attempts 1 to {len(attempts)}, not {attempt}")
        return attempts[(attempt or len(attempts)) - 1]

    def log_path(self, key: str, attempt: int | None = None, stream: str = "stdout") -> Path:
        """The stdout or stderr file of one attempt of a cell (default: its last attempt);
        neither exists when the attempt's command never started."""
        return self.root / self.attempt(key, attempt)[stream]

    def cancel(self, filters: Filters = Filters()) -> str:
        """Cancel the selected cells that have not ended or wait for a retry (all by default)."""
        check_filters(mf.existing(self.root), filters, self.root)
        return cancel(self.root, filters)

    def ledger(self, manifest: dict | None = None) -> dict:
        """The GPU-hour ledger of ``manifest`` (default: as :attr:`manifest` gives it): per attempt,
        cell, dose and run, and the projection for the cells still to run (see gridsubmit.ledger)."""
        from . import ledger

        manifest = manifest if manifest is not None else self.manifest
        return ledger.ledger(manifest, [c["key"] for c in mf.due_cells(manifest, profile_of(manifest).retry)])

    def comparability(self, manifest: dict | None = None) -> dict:
        """What varies (GPU model, driver, CUDA, code, environment, options, gridsubmit version)
        across the cells that contribute metrics, with the cells of each value (gridsubmit.comparability)."""
        from . import comparability
        from .report import completeness

        manifest = manifest if manifest is not None else self.manifest
        return comparability.judge(manifest, completeness(manifest, mf.stale_of(manifest))[0])

    @property
    def exists(self) -> bool:
        """Whether this root holds a run."""
        return mf.load(self.root) is not None

    @property
    def files(self) -> tuple[Path, Path]:
        """The manifest and the one-line-per-cell summary beside it."""
        return self.root / mf.MANIFEST, self.root / mf.SUMMARY

    def runner(self) -> str | None:
        """Who drives the run now ('gridsubmit wait' (pid … on host, since …)), None if nobody."""
        return mf.describe_holder(self.root) if mf.holder(self.root) is not None else None

    def select(self, filters: Filters = Filters(), states: Sequence[str] = (), strict: bool = True) -> dict:
        """The manifest as :attr:`manifest` gives it, with only the cells that ``filters`` and
        ``states`` (JobState names; none: any) select, its counts derived from those. A filter
        value the run does not have (unless not ``strict``: several runs are filtered alike),
        or a state that does not exist, is a UsageError."""
        raw = mf.existing(self.root)
        manifest = freshness.with_verdict(raw, freshness.judge(raw))
        if strict:
            check_filters(manifest, filters, self.root)
        unknown = [state for state in states if state not in JobState.__members__]
        if unknown:
            raise UsageError(f"no state {', '.join(map(repr, unknown))}; states are: {', '.join(JobState.__members__)}")
        jobs = [cell for cell in mf.select(manifest, filters) if not states or cell["state"] in states]
        return mf.with_results({**manifest, "jobs": jobs})


Rerun = mf.Rerun  # which cells that already ran a submit runs again


def finished(manifest: dict) -> bool:
    """Every cell of ``manifest`` has ended (BLOCKED included)."""
    return mf.finished(manifest)


def stale_of(manifest: dict) -> dict[str, list[str]]:
    """The stale COMPLETED cells of a manifest as :attr:`Run.manifest` judged them: key -> reasons."""
    return mf.stale_of(manifest)


def check_filters(manifest: dict, filters: Filters, root: Path) -> None:
    """A filter value the run does not have is a mistake (a typo cancels nothing), not a no-op."""
    present = {axis: list(dict.fromkeys(cell[axis] for cell in manifest["jobs"])) for axis in ("dose", "view", "split")}
    stray = filters.stray(present["dose"], present["view"], present["split"], "no cell of this run")
    if stray:
        raise UsageError(f"{root}: {stray}")


def execute_comparison_jobs(jobs: Iterable[Any], artifact_root: str | Path, *, cluster: ClusterLike = None,
                            workdir: str | Path | None = None, study: Study | str | Path | Mapping | None = None,
                            rerun_failed: bool = False, rerun_stale: bool = True,
                            timeout: float | None = None, reuse_from: Sequence[str | Path] = (),
                            progress: ProgressLike = None, knobs: KnobsLike = None) -> dict:  # fmt: skip
    """Run the study's ComparisonJob objects and return the manifest, as the study's own
    executor does: ``execution_results`` (dose, view, split, returncode, log_path, and the
    job's inputs), ``n_jobs``, ``n_executed``, ``n_success``, ``n_failed``.

    Each job runs ``python -m scripts.compare_models`` (the built-in study's command, or
    ``study``'s) from ``workdir`` (default: the current directory), with ``--tike_recon_path``
    when its Phase F manifest names a reconstruction that exists. Local backend by default,
    or ``cluster`` (a profile path, mapping or ClusterProfile). A job that fails, or cannot
    run because an input is missing, is counted as failed, never raised.

    Called again into the same root, the jobs given are the truth: a cell that COMPLETED
    from other inputs, options or command runs again (``rerun_stale=False``: it is counted
    as failed, ``error: "stale: …"``, with its reasons in ``stale``).

    ``reuse_from``: artifact roots of earlier runs to copy matching COMPLETED cells from
    instead of running them. ``progress``: a callable given each
    :class:`gridsubmit.progress.ProgressEvent` (``kind`` ``"ended"`` per attempt, ``"summary"``
    with the counts); default: events logged to the ``gridsubmit`` logger. ``knobs``: as for
    :meth:`GridExecutor.submit`."""
    given = []
    seen: set[JobKey] = set()
    for i, job in enumerate(jobs):
        absent = [name for name in ("dose", "view", "split", *JOB_INPUTS) if not hasattr(job, name)]
        if absent:
            raise UsageError(f"jobs[{i}]: expected a ComparisonJob with {', '.join(absent)}; got {type(job).__name__}")
        if not isinstance(job.dose, int) or isinstance(job.dose, bool) or job.dose <= 0:
            raise UsageError(f"jobs[{i}]: expected a positive integer dose, got {job.dose!r}")
        for axis in ("view", "split"):
            if not isinstance(getattr(job, axis), str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", getattr(job, axis)) \
                    or getattr(job, axis) in (".", ".."):
                raise UsageError(f"jobs[{i}]: expected a {axis} name of letters, digits, '_', '-' or '.', got {getattr(job, axis)!r}")
        key = JobKey(job.dose, job.view, job.split)
        if key in seen:
            raise UsageError(f"jobs[{i}]: {key} is listed twice")
        seen.add(key)
        values = {name: getattr(job, name) for name in (*JOB_INPUTS, *JOB_OPTIONS) if hasattr(job, name)}
        given.append((key, values))
    executor = GridExecutor(artifact_root, cluster)
    grid = executor.plan(study, workdir=workdir, given=given)
    problems = executor.check(grid)
    if problems:  # nothing could start: one clear error, not a grid of failures
        raise UsageError("the comparison command cannot start:\n  " + "\n  ".join(problems))
    run = executor.submit(grid, rerun_failed=rerun_failed, rerun_stale=rerun_stale, wait=True, timeout=timeout,
                          reuse_from=reuse_from, knobs=knobs, progress=progress)  # fmt: skip
    return study_manifest(run.manifest, {str(key) for key in seen})


def study_manifest(manifest: dict, keys: set[str] | None = None) -> dict:
    """The manifest with every cell (of ``keys``, when given) in ``execution_results``: a job
    the caller asked for that could not run (BLOCKED) counts as failed."""
    results = [mf.execution_result(manifest, cell) for cell in manifest["jobs"] if keys is None or cell["key"] in keys]
    success = sum(1 for r in results if mf.succeeded(r))
    return {**manifest, "execution_results": results, "n_jobs": len(results), "n_executed": len(results),
            "n_success": success, "n_failed": len(results) - success}  # fmt: skip
