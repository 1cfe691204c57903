"""Local backend: the node task started directly, one process per cell, with our own slots.

At most ``max_parallel`` cells run at once, each with its own GPU ids in
``CUDA_VISIBLE_DEVICES``. A cell's process is started only when a slot is free: the runner
writes the cell's spec (``spec.json`` in its attempt folder) and starts
``python -m gridsubmit.task spec.json``, the same stdlib-only node task a SLURM job runs
(through ``/bin/sh`` after the profile's ``setup`` lines, when it has any, in the order of a
SLURM job script: captured variables, then ``env``, then ``setup``). It runs in its own session (a terminal's Ctrl-C or hangup reaches the runner, not the cells),
with no stdin, and its own messages go to ``task.log`` in the attempt folder (it never
holds the submitter's stdout: ``gridsubmit submit | tee log`` ends when gridsubmit does).
Nothing is started ahead and nothing waits: one interpreter per cell, none in between.

Exactly once: the task claims its attempt (``claim.json``, created exclusively) before the
command starts, as on SLURM; a second process for the same attempt leaves without running
anything. A process is known by its pid and its start time (``/proc/PID/stat``), recorded
in the attempt (``job_id``, ``process_start``) and in the claim, so a pid the kernel has
given to another process is never taken for ours. A runner that re-attaches follows the
recorded process while it lives, else the one that claimed the attempt; an attempt with
neither gets a new process (whichever claims first runs it), and one whose recorded process
is gone without claiming it never ran: LOST after the grace period, and retried.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Sequence

from ..cluster import ClusterProfile, Resources
from ..gpus import resolve, visible_gpus
from ..crashpoints import point
from ..errors import UsageError
from ..states import JobState
from ..fileio import read_json, start_time, write_json_atomic
from ..task import CLAIM, RESULT
from .base import Backend, Handle, Submission

KILL_GRACE_S = 10  # SIGTERM, then SIGKILL this long after (timeouts and cancels)
SPEC = "spec.json"  # the attempt's cell, as the node task reads it
TASK_LOG = "task.log"  # the node task's own messages (not the command's)


def default_parallel() -> int:
    """Without GPUs: half the CPUs this process may use, so that a laptop stays usable while
    a grid runs (each comparison may itself use more than one core)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, cpus // 2)


class LocalBackend(Backend):
    name = "local"
    grace_s = 1.0  # result.json is written before the process exits: little lag to allow for
    runs_unattended = False  # slots are handed out by the runner

    def __init__(self, profile: ClusterProfile, root: Path, workdir: Path, env: dict[str, str], host: str = ""):
        super().__init__(profile, root, workdir, env)
        if host and host != socket.gethostname():
            raise UsageError(f"{root}: this local run belongs to host {host!r}, its processes cannot be seen from "
                             f"{socket.gethostname()!r}: run `gridsubmit wait`/`cancel` on {host}")  # fmt: skip
        gpus = visible_gpus(profile)
        self.gpus_per_job = resolve(profile).resources.gpus_per_job  # the profile's, else one per GPU found
        if self.gpus_per_job > len(gpus):
            raise UsageError(f"{profile.source}: key 'gpus_per_job' asks for {self.gpus_per_job} GPU(s) per job "
                             f"but {len(gpus)} are visible (set 'gpus' or CUDA_VISIBLE_DEVICES, or gpus_per_job: 0)")  # fmt: skip
        # default: one job per GPU, else half the CPUs; never more jobs than GPUs can be handed out
        self.max_parallel = profile.max_parallel or (len(gpus) // self.gpus_per_job if self.gpus_per_job else default_parallel())
        if self.gpus_per_job:
            self.max_parallel = min(self.max_parallel, len(gpus) // self.gpus_per_job)
        self.free_gpus: list[str] = list(gpus)
        self._wake = None  # (pipe read end, write end, SIGCHLD handler, wakeup fd) once sleep() set them
        self.queue: deque[Handle] = deque()  # accepted, no process yet
        self.running: dict[str, tuple[Handle, list[str]]] = {}  # key -> attempt holding a slot, its GPU ids
        self.children: list[subprocess.Popen] = []  # processes this runner started that it has not reaped
        # per handle: .process is our Popen, or (pid, start time) of a process we follow;

    # --- protocol ----------------------------------------------------------------------------

    def submit(self, submissions: Sequence[Submission]) -> list[Handle]:
        """Queue the attempts; processes start as slots free (here for the first ones)."""
        handles = []
        for sub in submissions:
            h = sub.handle(state=JobState.PENDING)
            h.submission = sub
            handles.append(h)
            self.queue.append(h)
        if self.granting:
            self._schedule()
        for h in handles:
            if h.key in self.running:
                h.state = JobState.RUNNING
        return handles

    def query(self, handles: Sequence[Handle], ask: bool) -> dict:
        self._release_finished()
        if self.granting:
            self._schedule()
        states = {}
        for h in handles:
            if h.cancel_asked:  # CANCELLED once its result is written, or its process is gone
                stopping = self._alive(h) and not (h.attempt_dir / RESULT).exists()
                states[h.key] = (JobState.RUNNING if stopping else JobState.CANCELLED, {})
            elif h.key in self.running and self.running[h.key][0] is h:
                if self._alive(h):
                    states[h.key] = (JobState.RUNNING, {"job_id": h.job_id})
            elif h.submission is not None:  # waits for a slot
                states[h.key] = (JobState.PENDING, {})
            # else: its process is gone without a result (judged LOST after the grace period)
        return states

    def cancel(self, handles: Sequence[Handle]) -> None:
        for h in handles:
            h.cancel_asked = True
            if h in self.queue:
                self.queue.remove(h)
            else:  # the task forwards it to the command's group, waits its grace period, writes its result
                self._signal(h, signal.SIGTERM)

    def reattach(self, records: Sequence[tuple[dict, dict]]) -> list[Handle]:
        """Follow what each attempt shows; start nothing that may already run."""
        handles = []
        for cell, attempt in records:
            h = self.handle_from_record(cell, attempt)
            recorded = (int(h.job_id), attempt.get("process_start")) if h.job_id and h.job_id.isdigit() else None
            if recorded is not None and self._process_alive(*recorded):  # claimed or about to be: follow it
                self._follow(h, recorded, attempt.get("gpus"))
            else:
                claim = read_json(h.attempt_dir / CLAIM)  # read after: a process gone by now has claimed or never will
                if claim is not None:  # the command ran, runs, or never will: follow the task that claimed it
                    h.job_id = str(claim["pid"])
                    self._follow(h, (int(claim["pid"]), claim.get("start")), claim.get("gpus"))
                elif recorded is None:  # accepted by a runner that died before starting it
                    h.submission = Submission(h.key, h.attempt, cell["argv"], h.output_dir, h.attempt_dir,
                                                       Resources(**attempt["resources"]), h.expected_outputs)  # fmt: skip
                    self.queue.append(h)
                # else: its process ended without claiming the attempt: it never ran (LOST, then retried)
            handles.append(h)
        return handles

    def describe(self, submissions: Sequence[Submission]) -> str:
        head = f"local backend: {len(submissions)} job(s), at most {self.max_parallel} at once, " \
               f"{self.gpus_per_job} GPU(s) each, GPUs {','.join(self.free_gpus) or 'none'}"
        setup = "".join(f"\nsetup (before each cell's task): {line}" for line in self.profile.setup)
        return head + setup + "\n" + super().describe(submissions)

    def job_log(self, h: Handle) -> Path | None:
        return h.attempt_dir / TASK_LOG

    # --- slots -------------------------------------------------------------------------------

    def _follow(self, h: Handle, process: tuple[int, int | None], gpus: str | None) -> None:
        """Follow a process this runner did not start; its GPUs stay taken while it runs."""
        h.process = process
        taken = [g for g in (gpus or "").split(",") if g in self.free_gpus]
        self.free_gpus = [g for g in self.free_gpus if g not in taken]
        self.running[h.key] = (h, taken)

    def _release_finished(self) -> None:
        """One pass over the processes: a slot frees as soon as the command's result is
        written or its process is gone; ended children are reaped (no zombies)."""
        self.children = [p for p in self.children if p.poll() is None]
        for key, (h, gpus) in list(self.running.items()):
            if (h.attempt_dir / RESULT).exists() or not (self._alive(h) or self._follow_claimer(h)):
                del self.running[key]
                self.free_gpus.extend(gpus)

    def _follow_claimer(self, h: Handle) -> bool:
        """A process gone without a result may have found its attempt claimed by another (an
        orphan of a killed runner, started before its pid reached the manifest): follow that one."""
        claim = read_json(h.attempt_dir / CLAIM)
        if claim is None or str(claim.get("pid")) == h.job_id or not self._process_alive(claim["pid"], claim.get("start")):
            return False
        h.job_id = str(claim["pid"])
        h.process = (int(claim["pid"]), claim.get("start"))
        return True

    def _schedule(self) -> None:
        """Start the oldest queued attempts while slots are free."""
        while self.queue and len(self.running) < self.max_parallel:
            self._start(self.queue.popleft())

    def _start(self, h: Handle) -> None:
        sub, h.submission = h.submission, None
        gpus, self.free_gpus = self.free_gpus[: self.gpus_per_job], self.free_gpus[self.gpus_per_job :]
        self.running[h.key] = (h, gpus)
        visible = ",".join(gpus)
        spec = self.task_spec(sub)
        spec.update(time_limit_s=sub.resources.time_s, kill_grace_s=KILL_GRACE_S)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible}
        argv = [sys.executable, "-m", "gridsubmit.task", str(h.attempt_dir / SPEC)]
        if self.profile.setup:  # the order of a SLURM job: captured, then env, then setup; the task lays nothing over them
            env.update(spec["env"])
            spec["env"] = {}
            argv = ["/bin/sh", "-c", "\n".join([*self.profile.setup, 'exec "$@"']), "gridsubmit-setup", *argv]
        spec["env"]["CUDA_VISIBLE_DEVICES"] = visible  # over whatever the run captured: this slot's GPUs
        h.attempt_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(h.attempt_dir / SPEC, {"cells": [spec]}, sync=False)  # read at once by the task
        point("granted")
        try:
            with open(h.attempt_dir / TASK_LOG, "ab") as log:  # the setup lines' own words go there too
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=h.attempt_dir,
                                        env=env, start_new_session=True)  # fmt: skip
        except OSError as exc:  # nothing started: the attempt says why, and is judged like any that never ran
            write_json_atomic(h.attempt_dir / RESULT, {"started": False, "ended_at": time.time(),
                                                       "error": f"never started: cannot start the task: {exc}"})  # fmt: skip
            return
        self.children.append(proc)
        h.job_id = str(proc.pid)
        h.process = proc
        h.record = {"process_start": start_time(proc.pid, living=False), "gpus": visible}  # not reaped yet
        point("process-started")

    def _alive(self, h: Handle) -> bool:
        proc = h.process
        if proc is None:
            return False
        if isinstance(proc, subprocess.Popen):
            return proc.poll() is None  # our own child: reaped here once it ended
        return self._process_alive(*proc)

    def _process_alive(self, pid: int | str, started: int | None) -> bool:
        """A process this backend started still runs: it exists, is no zombie, and started when
        recorded (pids are reused). Without a recorded start, its command line must name the
        artifact root."""
        now = start_time(pid)
        if now is None:
            return False
        if started is not None:
            return now == started
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                return str(self.root).encode() in fh.read()
        except OSError:
            return False

    def _signal(self, h: Handle, sig: int) -> None:
        if self._alive(h):
            proc = h.process
            try:
                os.kill(proc.pid if isinstance(proc, subprocess.Popen) else int(proc[0]), sig)
            except ProcessLookupError:
                pass

    # --- the runner's sleep --------------------------------------------------------------------

    def close(self, finished: bool) -> None:
        if finished:  # every task has written its result: let them exit, so that none outlives the runner
            deadline = time.monotonic() + 5
            for proc in self.children:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        self.children = [p for p in self.children if p.poll() is None]
        if self._wake:
            signal.signal(signal.SIGCHLD, self._wake[2])
            signal.set_wakeup_fd(self._wake[3])
            os.close(self._wake[0])
            os.close(self._wake[1])
        self._wake = None

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake as soon as a child process ends (or a signal the runner handles
        arrives): the tasks this runner started are its children, so a slot frees without
        polling for it."""
        if self._wake is None:
            try:
                r, w = os.pipe()
                os.set_blocking(r, False)
                os.set_blocking(w, False)
                previous_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
                self._wake = (r, w, signal.signal(signal.SIGCHLD, lambda *_: None), previous_fd)
            except ValueError:  # not the main thread: plain sleeps
                os.close(r)
                os.close(w)
                self._wake = False
        if not self._wake:
            time.sleep(seconds)
            return
        select.select([self._wake[0]], [], [], seconds)
        try:
            while os.read(self._wake[0], 4096):
                pass
        except BlockingIOError:
            pass
