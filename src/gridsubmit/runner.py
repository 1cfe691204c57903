"""The loop: plan -> submit what is due -> poll -> collect -> merge -> retry, until done.

The runner is the manifest's only writer; it holds the artifact root's lock while it runs.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from . import clean
from . import codehash
from . import comparability
from . import context as ctx
from . import freshness
from . import knobs
from . import manifest as mf
from . import provenance as prov
from .crashpoints import point
from .backends.base import Backend, Handle, QueueFull, SchedulerError, Submission, SubmitError
from .cluster import ClusterProfile, parse_profile
from .errors import UsageError
from .gpus import resolve as resolve_gpus
from .jobs import JobKey
from .notify import Notifier
from .progress import Progress
from .states import JobState
from .study import Filters
from .fileio import read_json, write_json_atomic
from .task import STDERR, STDOUT

CANCEL_DIR = "cancel-requests"
# While running, the manifest is rewritten at most this often (unless a cell fails; and at
# the end): a save costs time in proportion to the cells, so big grids save less often.
SAVE_EVERY_S = (0.5, 5.0)  # bounds; in between, one second per 1,000 cells
SAVE_SHARE = 0.01  # and far enough apart that saving takes at most this share of the runner's time


def make_backend(profile: ClusterProfile, root: Path, manifest: dict) -> Backend:
    """The profile's backend, running cells in the context the manifest recorded."""
    context = run_context(root, manifest)
    if profile.backend == "slurm":
        from .backends.slurm import SlurmBackend

        return SlurmBackend(profile, root, context.workdir, dict(context.env), manifest["run_id"])
    from .backends.local import LocalBackend

    return LocalBackend(profile, root, context.workdir, dict(context.env), context.host)


def run_context(root: Path, manifest: dict) -> ctx.RunContext:
    # a schema-1 manifest recorded no context: its cells ran wherever gridsubmit was started
    recorded = manifest.get("context") or {"workdir": str(Path.cwd())}
    return ctx.load(Path(root) / mf.STATE_DIR, recorded)


def profile_of(manifest: dict) -> ClusterProfile:
    """The cluster profile a manifest was run with, re-validated (once per command: `wait`
    and `Run.done` ask for it again and again)."""
    profile = _parsed_profile(json.dumps(manifest["cluster"], sort_keys=True), os.environ.get("CUDA_VISIBLE_DEVICES"))
    return knobs.apply(profile, knobs.recorded(manifest))  # --max-parallel, --time, ... of the last submission


@functools.lru_cache(maxsize=8)
def _parsed_profile(text: str, _visible: str | None) -> ClusterProfile:  # a local profile's GPUs depend on the second
    cluster = json.loads(text)
    return resolve_gpus(parse_profile({k: v for k, v in cluster.items() if k != "source"}, cluster["source"]))


def prepare(root: Path, grid, profile: ClusterProfile, rerun: mf.Rerun, run_id: str, context: ctx.RunContext) -> dict:
    """The manifest to run: a new one, or the existing one with the fresh plan laid over it.
    Refuses (before anything is written) another study, reruns of cells that are running,
    and cells to rerun that the grid does not have."""
    old = mf.load(root)
    fresh = mf.new_manifest(grid, profile, root, old["run_id"] if old else run_id, context.as_manifest())
    unknown = [key for key in rerun.cells if key not in {c["key"] for c in fresh["jobs"]}]
    if unknown:
        example = fresh["jobs"][0]["key"] if fresh["jobs"] else "dose_1000/dense/train"
        raise UsageError(f"--rerun {unknown[0]}: no such cell in this grid (cells are named like {example})")
    if old is None:
        return fresh
    active = {a["backend"] for _, a in mf.active_attempts(old)} - {profile.backend}
    if active:
        raise UsageError(f"{root}: cells of this run are still active on the {active.pop()} backend; "
                         f"`gridsubmit wait {root}` or `gridsubmit cancel {root}` before switching to {profile.backend}")  # fmt: skip
    differs = mf.study_differences(old["study"], fresh["study"])
    if differs and not rerun.all:
        raise UsageError(f"{root}: holds a run of another study ({'; '.join(differs)}). One artifact root holds one "
                         "study: submit into a new --artifact-root, or pass --rerun-all to replace this one's cells")  # fmt: skip
    running = [cell["key"] for cell, _ in mf.active_attempts(old) if rerun.all or cell["key"] in rerun.cells]
    if running:
        raise UsageError(f"{root}: cannot rerun {running[0]}{f' (and {len(running) - 1} more)' if len(running) > 1 else ''}: "
                         f"still running; `gridsubmit wait {root}` or `gridsubmit cancel {root}` first")  # fmt: skip
    out = mf.adopt_plan(old, fresh, rerun, stale_cells(old, fresh, str(context.workdir)))
    if differs:  # --rerun-all into a root of another study: its cells that the new one lacks go
        study = fresh["study"]
        out["jobs"] = [c for c in out["jobs"] if c["view"] in study["views"] and c["split"] in study["splits"]
                       and (isinstance(study["doses"], str) or c["dose"] in study["doses"])]  # fmt: skip
    return out


def stale_cells(old: dict, fresh: dict, workdir: str) -> dict[str, list[str]]:
    """COMPLETED cells of ``old`` whose last attempt ran from something other than what the
    fresh plan would run now: key -> reasons."""
    by_key = {cell["key"]: cell for cell in old["jobs"]}
    hasher = prov.Hasher()
    code = codehash.Now(workdir, fresh["study"].get("code_paths") or [], old.get("code_trees"))
    out = {}
    for new in fresh["jobs"]:
        last = prov.judged(by_key[new["key"]]) if new["key"] in by_key else None
        why = [] if last is None else freshness.reasons(last, new, workdir, hasher, code)
        if why:
            out[new["key"]] = why
    return out


class Runner:
    def __init__(self, root: Path, manifest: dict, profile: ClusterProfile, backend: Backend,
                 progress: Progress | None = None):  # fmt: skip
        self.root = Path(root)
        self.manifest = manifest
        self.cells = {cell["key"]: cell for cell in manifest["jobs"]}  # the runner never adds or drops cells
        self.profile = profile
        self.backend = backend
        self.progress = progress or Progress(quiet=True)
        self.handles: dict[str, Handle] = {}
        self.ended: list[Handle] = []
        self._saved_at = 0.0
        self.dirty = False
        self._attached = False
        self._warned: set[str] = set()  # job ids already reported as stuck
        self._hasher = prov.Hasher()
        self.held_back = 0  # due cells left for a later wave (the queue cap)
        self._due: dict[str, dict] | None = None  # cells due for an attempt, kept up to date as cells change
        self._save_floor = min(SAVE_EVERY_S[1], max(SAVE_EVERY_S[0], len(self.cells) / 1000))
        self._save_every = self._save_floor  # each save spaces the next by what it cost
        self.notifier = Notifier(self.root, manifest, profile.notify, profile.notify_timeout_s, self.save)

    # --- the loop ------------------------------------------------------------------------------

    def run(self, wait: bool = True, submit_new: bool = True, until_ended: set[str] | None = None,
            deadline: float | None = None, stop_when_stuck: bool = False, cancel_on_interrupt: bool = True) -> dict:  # fmt: skip
        """Drive the grid. ``wait=False`` returns once everything due is submitted;
        ``until_ended`` returns once those cells have ended; ``deadline`` (time.monotonic)
        returns then, whatever is still running."""
        interval = None
        signals = _Interrupts()  # Ctrl-C and a closed terminal act between cycles, never half-way through one
        try:
            self.attach()
            self.save()
            while True:
                signals.check()
                changed = self._cycle(submit_new)
                more_due = submit_new and bool(self._due_cells())
                if not self.handles and not more_due:
                    break
                if until_ended is not None and not until_ended & self.handles.keys():
                    break
                if not wait and self.backend.runs_unattended and (not more_due or self.held_back):
                    break  # submitted what the queue cap allows; `wait` submits the rest
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if stop_when_stuck and self.stuck():
                    break
                interval = self.backend.poll_interval(interval, changed)
                signals.check()
                self.backend.sleep(interval)
            if not self.handles and mf.finished(self.manifest) and not mf.due_cells(self.manifest, self.profile.retry):
                self.notifier.end()  # every cell final: once per submission, whichever runner sees it
            point("finished")
            self._enrich()
            point("enriched")
        except KeyboardInterrupt:
            if not self.backend.runs_unattended and cancel_on_interrupt:
                self._stop_attached_jobs()
            raise
        finally:
            signals.restore()
            self.dirty |= self.notifier.collect(wait=True)  # a notifier that hangs is killed at its timeout
            if self.dirty:
                self.save()
            self.backend.close(finished=not self.handles)
            self.progress.update(self.manifest)
            self.progress.done()
        return self.manifest

    def attach(self) -> None:
        """Take over the manifest's active attempts (once), and the ended ones whose
        accounting the scheduler had not finished when their runner stopped."""
        if not self._attached:
            self.progress.seen(self.manifest)
            self._record_handles(self.backend.reattach(mf.active_attempts(self.manifest)))
            pending = [(cell, a) for cell in self.manifest["jobs"] for a in cell["attempts"]
                       if a.get("accounting") == mf.ACCOUNTING_PENDING]  # fmt: skip
            for h in self.backend.reattach(pending) if pending else []:
                h.reported = True
                self.ended.append(h)
            self._attached = True
            self._apply_clean_records()

    def _cycle(self, submit_new: bool) -> bool:
        """One round: cancel requests, submissions, one poll, merge; True if anything changed."""
        changed = self._apply_cancel_requests()
        self._apply_clean_records()
        if submit_new:
            changed |= self._submit_due()
        observations = self.backend.poll(list(self.handles.values()))
        point("polled")
        changed |= self._note_outage()
        comparability.keep_environments(self.manifest, observations)  # each distinct one once, not per attempt
        changed |= mf.merge(self.manifest, observations, self.cells)
        point("merged")
        for obs in observations:
            if obs.state.terminal:
                self.ended.append(self.handles.pop(obs.key))
                if mf.is_due(self.cells[obs.key], self.profile.retry):
                    self._due = None  # to be retried: found again, in grid order
        self.dirty |= changed
        self.notifier.observe(observations, self.cells, self.profile.retry)
        if observations:  # only news can make a job stuck
            self._warn_stuck()
            self.notifier.stuck(self.stuck())
        self.dirty |= self.notifier.collect()
        act = any(o.state.terminal and o.state is not JobState.COMPLETED for o in observations)  # someone may act on it
        since = time.monotonic() - self._saved_at
        if self.dirty and (act and since >= self._save_every / 5 or since >= self._save_every):
            self.save()
            point("saved")
        self.progress.update(self.manifest, [self.cells[o.key] for o in observations])
        return changed

    def _note_outage(self) -> bool:
        """The scheduler stopped (or started again) answering: say so, and keep it in the
        manifest for `status`; nothing is judged from its silence."""
        outage = self.backend.outage
        recorded = self.manifest.get("scheduler_outage")
        if (outage is None) == (recorded is None) and (outage is None or outage["failed_calls"] == recorded["failed_calls"]):
            return False
        if outage is not None and recorded is None:
            self.progress.note(f"the scheduler is not answering ({outage.get('last_error')}); the run goes on, "
                               "nothing is judged lost meanwhile, and status calls back off")  # fmt: skip
        elif outage is None:
            self.progress.note(f"the scheduler answers again after {time.time() - recorded['since']:.0f} s "
                               f"({recorded['failed_calls']} calls failed)")  # fmt: skip
        self.manifest["scheduler_outage"] = dict(outage) if outage else None
        return True

    def stuck(self) -> list[tuple[str, dict]]:
        """Queued attempts that will not start by themselves (held, invalid account, ...)."""
        if not self.backend.runs_unattended:  # only a scheduler's queue holds jobs back
            return []
        return [(key, self.cells[key]["attempts"][h.attempt - 1]) for key, h in self.handles.items()
                if self.cells[key]["state"] == JobState.PENDING.value and self.cells[key]["attempts"][h.attempt - 1].get("stuck")]

    def _warn_stuck(self) -> None:
        for key, attempt in self.stuck():
            if attempt["job_id"] not in self._warned:
                self._warned.add(attempt["job_id"])
                self.progress.note(f"{key}: job {attempt['job_id']} waits for someone to act ({attempt['pending_reason']}): "
                                   f"`scontrol release {attempt['job_id']}` for a held job, or cancel it")  # fmt: skip

    def _stop_attached_jobs(self, timeout_s: float = 15.0) -> None:
        """Interrupted while jobs depend on this process: cancel every cell that has not ended
        and record how each ended. Running commands get SIGTERM through their task (SIGKILL
        after its 10 s grace period, within ``timeout_s``) and end CANCELLED with their partial
        logs; attempts that never started, and cells not submitted yet, end CANCELLED too
        (`--rerun-failed` runs them)."""
        for cell in self.manifest["jobs"]:
            if cell["key"] not in self.handles and cell["attempts"] and JobState(cell["attempts"][-1]["state"]).active:
                # recorded, but no process was ever started for it (the interrupt came while submitting)
                cell["attempts"][-1].update(state=JobState.CANCELLED.value, error="interrupted before it started")
                cell.update(state=JobState.CANCELLED.value, cancel_requested=True)
                self.dirty = True
        self.cancel(Filters())
        deadline = time.monotonic() + timeout_s
        while self.handles and time.monotonic() < deadline:
            self._cycle(submit_new=False)
            if self.handles:
                self.backend.sleep(0.05)

    def _enrich(self) -> None:
        """The scheduler's last word on each ended attempt, by its own job id (newer facts
        replace older ones, a None removes the field; an attempt without a job id gets none;
        in a pack, the job's figures are the pack's: manifest.apply_job_facts)."""
        facts = self.backend.enrich(self.ended)
        for h in self.ended:
            if h.job_id and facts.get(h.job_id):
                attempt = self.cells[h.key]["attempts"][h.attempt - 1]
                self.dirty |= mf.apply_job_facts(attempt, facts[h.job_id])  # a packed cell's are its pack's

    def save(self) -> None:
        started = time.monotonic()
        mf.save(self.root, self.manifest)
        self.dirty = False
        self._saved_at = time.monotonic()
        self._save_every = max(self._save_floor, (self._saved_at - started) / SAVE_SHARE)

    def _next_submission(self, cell: dict) -> Submission:
        """The cell's next attempt, with resources grown after TIMEOUT / OUT_OF_MEMORY."""
        fates = tuple(JobState(a["state"]) for a in cell["attempts"][cell["retry_base"]:])
        resources = self.profile.resources_for(JobKey.parse(cell["key"]), fates)
        n = len(cell["attempts"]) + 1
        attempt_dir = mf.next_attempt_dir(self.root, cell)
        return Submission(cell["key"], n, cell["argv"], Path(cell["output_dir"]), attempt_dir, resources,
                          tuple(cell.get("expected_outputs", ())))  # fmt: skip

    def dry_run(self) -> str:
        due = mf.due_cells(self.manifest, self.profile.retry)
        return self.backend.describe([self._next_submission(cell) for cell in due])

    def _due_cells(self) -> list[dict]:
        """The cells due for an attempt, in grid order: found again only after a cell became
        due (a retry, a refused submission), and kept up to date as cells are submitted or
        cancelled, as a pass over every cell each cycle would cost more than the cycle."""
        if self._due is None:
            self._due = {cell["key"]: cell for cell in mf.due_cells(self.manifest, self.profile.retry)}
        return list(self._due.values())

    def _submit_due(self) -> bool:
        due = self._due_cells()
        self.held_back = 0
        room = None
        if due and self.backend.queue_cap is not None:  # waves: at most queue_cap jobs queued at once
            room = max(0, self.backend.queue_cap - self.backend.queued_jobs(list(self.handles.values())))
            for note in self.backend.take_notes():  # the site's limits, as found
                self.progress.note(note)
            self.held_back = max(0, len(due) - room * self.profile.cells_per_job)
            due = due[: len(due) - self.held_back]  # only what may fit is planned
        if self.backend.holding:  # their old job may still run: not again until it is known gone
            due = [cell for cell in due if cell["key"] not in self.backend.holding]
        submissions = [self._next_submission(cell) for cell in due]
        while room is not None and submissions and self.backend.jobs_of(submissions) > room:
            submissions.pop()  # cells of several resource groups fill packs partly
            self.held_back += 1
        due = due[: len(submissions)]
        if not due:
            return False
        self.backend.assign(submissions)
        history = self.manifest.get("submissions") or [{}]
        hasher = self._hasher if history[-1].get("hash_inputs") else None
        code = self._code_recorder()
        for sub, cell in zip(submissions, due):
            rel = sub.attempt_dir.relative_to(self.root)
            origin = prov.ran_from(cell, str(self.backend.workdir), hasher)
            trees = self.manifest.get("code_trees") or {}
            if code_record := code.record(cell["argv"], trees):
                origin["code"] = code_record
            if trees:
                self.manifest["code_trees"] = trees
            mf.add_attempt(cell, {**origin, "submission": history[-1].get("n"),
                "backend": self.backend.name, "job_id": None, "state": JobState.SUBMITTED.value,
                "submitted_at": time.time(), "dir": str(rel), "stdout": str(rel / STDOUT),
                "stderr": str(rel / STDERR), "resources": sub.resources.as_dict(), **sub.record})  # fmt: skip
        for cell in due:
            del self._due[cell["key"]]
        self.save()  # the intent is on disk before anything reaches the scheduler
        point("intent-saved")
        self.backend.done_dir.mkdir(exist_ok=True)
        try:
            handles = self.backend.submit(submissions)
            point("backend-returned")
        except SubmitError as exc:  # the scheduler refused: what it did not accept never existed
            self._record_handles(exc.handles)
            accepted = {h.key for h in getattr(exc, "handles", [])}
            for sub in submissions:  # refused: these attempts never existed
                if sub.key not in accepted:
                    cell = self.cells[sub.key]
                    cell["attempts"].pop()
                    cell["state"] = cell["attempts"][-1]["state"] if cell["attempts"] else JobState.PLANNED.value
            self._due = None  # refused cells are due again
            self.save()
            for note in self.backend.take_notes():
                self.progress.note(note)
            if isinstance(exc, QueueFull):  # a limit: submitted again as the run's jobs end
                self.held_back += len(submissions) - len(accepted)
                return True
            if accepted:
                exc.args = (f"{exc.args[0]}\n{len(accepted)} job(s) submitted before the refusal are recorded in the "
                            f"manifest: `gridsubmit wait {self.root}` collects them, `gridsubmit cancel {self.root}` stops them",)  # fmt: skip
            raise
        self._record_handles(handles)
        point("handles-recorded")
        self.save()  # every job id is on disk before the runner moves on
        point("handles-saved")
        return True

    def _code_recorder(self) -> codehash.Recorder:
        """The code each new attempt runs (its script, the study's code_paths), read once per round."""
        if getattr(self, "_code", None) is None:
            env = {**self.backend.captured, **{k: str(v) for k, v in self.profile.env.items()}}
            self._code = codehash.Recorder(str(self.backend.workdir), env, self.manifest["study"].get("code_paths") or [])
        self._code.new_round()
        return self._code

    def _record_handles(self, handles: list[Handle]) -> None:
        for h in handles:
            self.handles[h.key] = h
            cell = self.cells[h.key]
            cell["attempts"][-1].update(job_id=h.job_id, state=h.state.value, **h.record)
            cell["state"] = h.state.value
            h.submitted_at = cell["attempts"][-1]["submitted_at"]

    # --- cancel ------------------------------------------------------------------------------

    def cancel(self, filters: Filters) -> list[str]:
        """Cancel the selected cells that have not ended or wait for a retry; returns their keys.
        A scheduler that keeps refusing is reported on the cells, never retried forever."""
        self.attach()
        keys = []
        due = {cell["key"] for cell in mf.due_cells(self.manifest, self.profile.retry)}
        for cell in mf.select(self.manifest, filters):
            if cell["cancel_requested"] or JobState(cell["state"]).terminal and cell["key"] not in due:
                continue
            cell["cancel_requested"] = True
            keys.append(cell["key"])
            if self._due is not None:
                self._due.pop(cell["key"], None)
            if cell["key"] not in self.handles:  # nothing runs for it: cancelled here and now
                cell["state"] = JobState.CANCELLED.value
        targets = [h for key, h in self.handles.items() if key in keys]
        if targets:
            try:
                self.backend.cancel(targets)
            except SchedulerError as exc:  # reported, not retried forever: the cells go on
                for h in targets:
                    self.cells[h.key].update(cancel_error=str(exc), cancel_requested=False)
                    keys.remove(h.key)
                self.progress.note(f"cancel failed: {exc}")
        self.dirty |= bool(keys)
        return keys

    def _apply_clean_records(self) -> None:
        """What `gridsubmit clean` removed while this runner held the root, into the manifest."""
        if clean.apply_pending(self.root, self.manifest):
            self.save()
            clean.forget_pending(self.root)

    def _apply_cancel_requests(self) -> bool:
        folder = self.root / mf.STATE_DIR / CANCEL_DIR
        if not folder.is_dir():
            return False
        changed = False
        for path in sorted(folder.glob("*.json")):
            request = read_json(path)
            if request is not None:
                f = request["filters"]
                changed |= bool(self.cancel(Filters(tuple(f["dose"]), tuple(f["view"]), tuple(f["split"]))))
                if self.dirty:  # on disk before the requester reads what was marked
                    self.save()
            path.unlink(missing_ok=True)  # applied once (applying it again would change nothing)
        return changed


class HangUp(BaseException):
    """The terminal was closed (SIGHUP): the runner saved what it knew and stopped; the cells
    go on (a local run is handed to a background runner)."""


class _Interrupts:
    """While the runner runs (in the main thread, with Python's default handlers in place),
    Ctrl-C (SIGINT) and a closed terminal (SIGHUP) only set a flag, raised as KeyboardInterrupt
    or HangUp where the runner checks: between cycles, never half-way through a manifest
    update or a process start. The sleep between cycles wakes for them (the signal wakeup fd)."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self.previous: dict[int, object] = {}
        wanted = {signal.SIGINT: signal.default_int_handler, signal.SIGHUP: signal.SIG_DFL}
        for sig, default in wanted.items():
            try:
                if signal.getsignal(sig) is default:
                    self.previous[sig] = signal.signal(sig, self._note)
            except ValueError:  # not the main thread: signals act as Python makes them
                break

    def _note(self, signum: int, _frame) -> None:
        if signum == signal.SIGHUP:  # the terminal is gone: what is printed from now on goes nowhere
            devnull = os.open(os.devnull, os.O_WRONLY)
            for fd in (1, 2):
                os.dup2(devnull, fd)
            os.close(devnull)
            self.pending = signum
        elif self.pending is None:
            self.pending = signum

    def check(self) -> None:
        if self.pending == signal.SIGHUP:
            raise HangUp()
        if self.pending == signal.SIGINT:
            self.pending = 0  # once: a second Ctrl-C while the cells are being stopped changes nothing
            raise KeyboardInterrupt()

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


def cancel(root: Path, filters: Filters) -> str:
    """Cancel cells of a run: through its attached runner if one holds the lock, else here."""
    manifest = mf.existing(root)
    due = {cell["key"] for cell in mf.due_cells(manifest, profile_of(manifest).retry)}
    if all(JobState(cell["state"]).terminal and cell["key"] not in due for cell in mf.select(manifest, filters)):
        return "nothing to cancel: every selected cell has ended"
    lock = mf.RunLock(root, "cancel")
    if not lock.acquire():  # the attached runner applies the request within one poll cycle
        request = request_cancel(root, filters)
        deadline = time.monotonic() + 30
        while request.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if request.exists():
            return f"cancel requested; the attached runner {mf.describe_holder(root)} will apply it ({request})"
        selected = mf.select(mf.existing(root), filters)
        stopping = [c for c in selected if c["cancel_requested"] and not JobState(c["state"]).terminal]
        ended = [c for c in selected if c["state"] == JobState.CANCELLED.value]
        text = f"{len(stopping) + len(ended)} cell(s) marked for cancelling"
        if stopping:
            text += (f"; the attached runner {mf.describe_holder(root)} is stopping {len(stopping)} of them "
                     f"(`gridsubmit status {root}` shows them as cancelling until they end)")  # fmt: skip
        return text
    try:
        manifest = mf.existing(root)
        profile = profile_of(manifest)
        runner = Runner(root, manifest, profile, make_backend(profile, root, manifest))
        runner.backend.granting = False  # follow what runs; start nothing new
        keys = runner.cancel(filters)
        runner.run(submit_new=False, until_ended=set(keys))  # collect the cancelled jobs' fates
    finally:
        lock.release()
    return f"cancelled {len(keys)} cell(s); every one has ended"


def detach_waiter(root: Path) -> None:
    """The local backend schedules its own slots, so `submit --no-wait` leaves a runner behind."""
    with open(root / mf.STATE_DIR / "runner.log", "ab") as log:
        subprocess.Popen([sys.executable, "-m", "gridsubmit", "wait", str(root), "--quiet"], stdout=log, stderr=log,
                         stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 5
    while mf.holder(root) is None and time.monotonic() < deadline:  # hand over: it holds the lock
        time.sleep(0.05)


def request_cancel(root: Path, filters: Filters) -> Path:
    """Ask the runner that holds the lock to cancel cells (it applies this within one cycle)."""
    folder = Path(root) / mf.STATE_DIR / CANCEL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.json"
    write_json_atomic(path, {"filters": filters.as_dict(), "at": time.time()})
    return path


def exit_status(manifest: dict) -> int:
    """0 when every runnable cell completed and none of them is stale (as ``manifest`` marks
    them: Run.manifest judges them when read), 1 otherwise."""
    for cell in manifest["jobs"]:
        if cell["state"] not in (JobState.COMPLETED.value, JobState.BLOCKED.value) or cell.get("stale") and \
                cell["state"] == JobState.COMPLETED.value:  # fmt: skip
            return 1
    return 0
