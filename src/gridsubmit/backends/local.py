"""Local backend: submitit's LocalExecutor for real processes, with our own slot scheduler.

LocalExecutor has no concurrency cap and gives every job the same GPUs, so slots are
scheduled here: at most ``max_parallel`` commands run at once, each with its own GPU ids
in ``CUDA_VISIBLE_DEVICES``. Starting a job costs two Python interpreters (submitit's
controller and its task), about 0.3 s; to keep that off the critical path, up to
``max_parallel`` jobs are started ahead and wait at a gate (``slot.json``) until a slot
frees. The gate also carries the GPU ids, and the time limit runs from the gate opening.

Exactly once: a grant names the one process that may run the attempt, and is written only
for processes whose pid is already in the manifest (submit starts processes, a later poll
grants them). A runner that re-attaches adopts what the attempt folder shows: the process
that claimed it (``claim.json``: it runs or ran the command) or the one waiting at its gate
(``waiting.json``); only an attempt with neither gets a new process. Waiting processes
leave by themselves when the runner's heartbeat goes stale or the attempt is claimed.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from collections import deque
from pathlib import Path
from typing import Sequence

import submitit

from ..cluster import ClusterProfile, Resources, visible_gpus
from ..crashpoints import point
from ..errors import UsageError
from ..manifest import STATE_DIR
from ..states import JobState
from ..task import CLAIM, RESULT, SLOT, WAITING, read_json, run_task, write_json_atomic
from .base import Backend, Handle, Submission

KILL_GRACE_S = 10  # SIGTERM, then SIGKILL this long after (timeouts and cancels)
HEARTBEAT = "heartbeat"  # touched every poll; waiting tasks give up when it goes stale


class LocalBackend(Backend):
    name = "local"
    grace_s = 1.0  # result.json is written before the process exits: little lag to allow for
    runs_unattended = False  # slots are granted by the runner

    def __init__(self, profile: ClusterProfile, root: Path, workdir: Path, env: dict[str, str], host: str = ""):
        super().__init__(profile, root, workdir, env)
        if host and host != socket.gethostname():
            raise UsageError(f"{root}: this local run belongs to host {host!r}, its processes cannot be seen from "
                             f"{socket.gethostname()!r}: run `gridsubmit wait`/`cancel` on {host}")  # fmt: skip
        gpus = visible_gpus(profile)
        per_job = profile.resources.gpus_per_job
        self.gpus_per_job = (1 if gpus else 0) if per_job < 0 else per_job
        if self.gpus_per_job > len(gpus):
            raise UsageError(f"{profile.source}: key 'gpus_per_job' asks for {self.gpus_per_job} GPU(s) per job "
                             f"but {len(gpus)} are visible (set 'gpus' or CUDA_VISIBLE_DEVICES, or gpus_per_job: 0)")  # fmt: skip
        # default: one job per GPU, else per CPU; never more jobs than GPUs can be handed out
        self.max_parallel = profile.max_parallel or (len(gpus) // self.gpus_per_job if self.gpus_per_job else os.cpu_count() or 1)
        if self.gpus_per_job:
            self.max_parallel = min(self.max_parallel, len(gpus) // self.gpus_per_job)
        self.free_gpus: list[str] = list(gpus)
        self.folder = self.root / STATE_DIR / "submitit"
        self.heartbeat = self.root / STATE_DIR / HEARTBEAT
        self._executor: submitit.LocalExecutor | None = None
        self._wake = None  # (pipe read end, write end, SIGCHLD handler, wakeup fd) before sleep() set them
        self.queue: deque[Handle] = deque()  # accepted, no process yet
        self.waiting: deque[Handle] = deque()  # process started, waiting at the gate
        self.running: dict[str, tuple[Handle, list[str]]] = {}  # key -> granted attempt, its GPU ids
        # per handle: extra["process"] is our submitit job, or the pid of an adopted one;
        # extra["cancelled"] marks an attempt cancel() was asked for

    # --- protocol ----------------------------------------------------------------------------

    def submit(self, submissions: Sequence[Submission]) -> list[Handle]:
        """Queue the attempts and start spare processes; none may run before a later poll
        grants it, so every process that runs a command is on disk first."""
        handles = []
        for sub in submissions:
            h = sub.handle(state=JobState.PENDING)
            h.extra["submission"] = sub
            handles.append(h)
            self.queue.append(h)
        self._beat()
        try:
            self._start_spares()
        except BaseException:  # interrupted: nothing started here may outlive the runner
            for h in handles:
                self._signal(h, signal.SIGKILL)
            raise
        return handles

    def query(self, handles: Sequence[Handle], ask: bool) -> dict:
        self._beat()
        self._release_finished()
        if self.granting:
            self._schedule()
        states = {}
        for h in handles:
            if h.extra.get("cancelled"):  # CANCELLED once its result is written, or its process is gone
                stopping = self._alive(h) and not (h.attempt_dir / RESULT).exists()
                states[h.key] = (JobState.RUNNING if stopping else JobState.CANCELLED, {})
            elif h.key in self.running and self.running[h.key][0] is h:
                if self._alive(h):
                    states[h.key] = (JobState.RUNNING, {"job_id": h.job_id})
            elif h.job_id is None or self._alive(h):
                states[h.key] = (JobState.PENDING, {"job_id": h.job_id})
        return states

    def cancel(self, handles: Sequence[Handle]) -> None:
        for h in handles:
            h.extra["cancelled"] = True
            if h in self.queue:
                self.queue.remove(h)
            else:
                if h in self.waiting:
                    self.waiting.remove(h)
                self._signal(h, signal.SIGTERM)

    def reattach(self, records: Sequence[tuple[dict, dict]]) -> list[Handle]:
        """Adopt what each attempt folder shows; start nothing that may already run."""
        handles = []
        for cell, attempt in records:
            h = self.handle_from_record(cell, attempt)
            claim, waiting = read_json(h.attempt_dir / CLAIM), read_json(h.attempt_dir / WAITING)
            if claim is not None:  # the command started (or the attempt was given up): follow that task
                self._adopt(h, claim)
                grant = read_json(h.attempt_dir / SLOT) or {}
                gpus = [g for g in grant.get("gpus", "").split(",") if g]
                self.running[h.key] = (h, gpus)
                self.free_gpus = [g for g in self.free_gpus if g not in gpus]
            elif h.job_id is not None or (waiting and _pid_alive(int(waiting["job"]), str(self.folder))):
                job = h.job_id if h.job_id is not None else waiting["job"]
                self._adopt(h, {"job": job, "pid": int(job)})
                self.waiting.append(h)  # at its gate, or still starting: granted in turn
            else:  # accepted by a runner that died before starting it
                h.extra["submission"] = Submission(h.key, h.attempt, cell["argv"], h.output_dir, h.attempt_dir,
                                                   Resources(**attempt["resources"]), h.expected_outputs)  # fmt: skip
                self.queue.append(h)
            handles.append(h)
        return handles

    def _adopt(self, h: Handle, record: dict) -> None:
        """Follow a process from a claim (or waiting) record: its job id, and the pid that
        shows it alive (the task itself once it claimed: it outlives submitit's controller)."""
        h.job_id = str(record["job"])
        h.extra["process"] = int(record["pid"])

    def describe(self, submissions: Sequence[Submission]) -> str:
        head = f"local backend: {len(submissions)} job(s), at most {self.max_parallel} at once, " \
               f"{self.gpus_per_job} GPU(s) each, GPUs {','.join(self.free_gpus) or 'none'}"
        return head + "\n" + super().describe(submissions)

    # --- slots -------------------------------------------------------------------------------

    def _release_finished(self) -> None:
        """One pass over the processes: a slot frees as soon as the command's result is
        written or its process is gone; waiting processes that are gone leave the queue."""
        for key, (h, gpus) in list(self.running.items()):
            if (h.attempt_dir / RESULT).exists() or not (self._alive(h) or self._follow_claimer(h)):
                del self.running[key]
                self.free_gpus.extend(gpus)
        waiting: deque[Handle] = deque()
        for h in self.waiting:
            if self._alive(h):
                waiting.append(h)
            elif self._follow_claimer(h):
                self.running[h.key] = (h, [])
        self.waiting = waiting

    def _follow_claimer(self, h: Handle) -> bool:
        """A process gone without a result may have found its attempt claimed by another (an
        orphan of a killed runner, granted before its id reached the manifest): follow that one."""
        claim = read_json(h.attempt_dir / CLAIM)
        if claim is None or str(claim.get("job")) == h.job_id or not _pid_alive(claim["pid"], str(self.folder)):
            return False
        self._adopt(h, claim)
        return True

    def _schedule(self) -> None:
        """Open gates while slots are free (oldest first), then keep spares started."""
        while len(self.running) < self.max_parallel and (self.waiting or self.queue):
            if not self.waiting:
                self._start_spares()
            self._grant(self.waiting.popleft())
        self._start_spares()

    def _start_spares(self) -> None:
        while self.queue and len(self.waiting) < self.max_parallel + max(0, self.max_parallel - len(self.running)):
            self.waiting.append(self._start(self.queue.popleft()))

    def _grant(self, h: Handle) -> None:
        gpus, self.free_gpus = self.free_gpus[: self.gpus_per_job], self.free_gpus[self.gpus_per_job :]
        self.running[h.key] = (h, gpus)
        write_json_atomic(h.attempt_dir / SLOT, {"gpus": ",".join(gpus), "job": h.job_id, "granted_at": time.time()})
        point("granted")
        waiting = read_json(h.attempt_dir / WAITING)
        if waiting is not None and waiting.get("job") == h.job_id:  # it blocks in sigtimedwait: wake it
            try:
                os.kill(waiting["pid"], signal.SIGUSR1)
            except ProcessLookupError:
                pass

    def close(self, finished: bool) -> None:
        if finished:  # a process still waiting at a gate (an orphan of a killed runner) leaves now
            self.heartbeat.unlink(missing_ok=True)
        if self._wake:
            signal.signal(signal.SIGCHLD, self._wake[2])
            signal.set_wakeup_fd(self._wake[3])
            os.close(self._wake[0])
            os.close(self._wake[1])
        self._wake = None

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake as soon as a child process ends: the jobs this runner started are
        its children, so a slot frees without polling for it."""
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

    def _beat(self) -> None:
        try:
            os.utime(self.heartbeat)
        except FileNotFoundError:
            self.heartbeat.parent.mkdir(parents=True, exist_ok=True)
            self.heartbeat.touch()

    def _start(self, h: Handle) -> Handle:
        sub: Submission = h.extra.pop("submission")
        limit = sub.resources.time_s
        # submitit's own limit is only a backstop (a day past twice the limit, for the time
        # at the gate): the task enforces the real one from the moment its gate opens.
        if self._executor is None:
            self._executor = submitit.LocalExecutor(folder=self.folder)
        self._executor.update_parameters(timeout_min=(2 * limit + KILL_GRACE_S) / 60 + 24 * 60, signal_delay_s=KILL_GRACE_S)
        h.attempt_dir.mkdir(parents=True, exist_ok=True)
        spec = {**self.task_spec(sub), "time_limit_s": limit, "gate": True, "heartbeat": str(self.heartbeat),
                "kill_grace_s": KILL_GRACE_S}  # fmt: skip
        job = self._executor.submit(run_task, spec)
        h.job_id = str(job.job_id)
        h.extra["process"] = job
        point("process-started")
        return h

    def _alive(self, h: Handle) -> bool:
        proc = h.extra.get("process")
        if proc is None:
            return False
        if isinstance(proc, int):
            return _pid_alive(proc, str(self.folder))
        return not proc.done()  # our own child: submitit polls (and reaps) it

    def _signal(self, h: Handle, sig: int) -> None:
        if self._alive(h):
            proc = h.extra.get("process")
            try:
                os.kill(proc if isinstance(proc, int) else int(h.job_id), sig)
            except ProcessLookupError:
                pass


def _pid_alive(pid: int, marker: str) -> bool:
    """A process started by this backend still runs: exists, is no zombie, and its command
    line names our submitit folder (pids are reused)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X") and marker in cmdline
