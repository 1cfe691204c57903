"""What runs for each job on the compute node (stdlib only: it starts once per job).

Runs the cell's argv without a shell, in the run's working directory (the cell's output
folder is created first, and named in its argv); the child writes its
stdout and stderr straight into two files, so a killed job still leaves its partial logs.
Ends by writing ``result.json`` atomically: the command's own exit code survives whatever
the scheduler's wrapper reports.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

RESULT = "result.json"
SLOT = "slot.json"  # local backend: written by the scheduler when the job may start
STDOUT = "stdout.log"
STDERR = "stderr.log"

_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)
_ENDING = (signal.SIGTERM, signal.SIGINT)  # after these, the child gets kill_grace_s to exit
_SCHEDULER_ENV = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_GPUS",
                  "SLURM_JOB_PARTITION", "SUBMITIT_LOCAL_JOB_ID")  # fmt: skip


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class _Signals:
    """Remembers the first ending signal and forwards signals to the child's group.

    SIGUSR2 is the schedulers' "time is nearly up" warning (submitit asks SLURM for it);
    it is forwarded only when the profile asked for it, as a command that does not handle
    it would die of it long before its real limit."""

    def __init__(self, forward_usr2: bool) -> None:
        self.child: subprocess.Popen | None = None
        self.received: str | None = None
        self.ending_at: float | None = None
        self.warned = False
        self.forward_usr2 = forward_usr2
        self._previous = {sig: signal.signal(sig, self._handle) for sig in _FORWARDED}

    def _handle(self, signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if signum in _ENDING:
            self.received = self.received or name
            self.ending_at = self.ending_at or time.monotonic()
        else:
            self.warned = True
            if not self.forward_usr2:
                return
        if self.child is not None and self.child.poll() is None:
            try:
                os.killpg(self.child.pid, signum)
            except ProcessLookupError:
                pass

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _wait_for_slot(folder: Path, deadline: float | None, signals: _Signals) -> dict | None:
    slot = folder / SLOT
    while True:
        grant = read_json(slot)
        if grant is not None:
            return grant
        if signals.ending_at is not None or (deadline is not None and time.time() > deadline):
            return None
        time.sleep(0.005)


def run_task(spec: dict) -> dict:
    """Run one attempt. ``spec``: argv, cwd, output_dir, attempt_dir, env (additions), and optionally
    time_limit_s (enforced here: the local backend's limit), gate (wait for slot.json),
    gate_deadline (epoch seconds to give up waiting), kill_grace_s, forward_usr2."""
    folder = Path(spec["attempt_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    signals = _Signals(bool(spec.get("forward_usr2")))
    env = dict(os.environ)
    env.update(spec.get("env") or {})
    result: dict = {"argv": list(spec["argv"]), "cwd": spec["cwd"], "hostname": socket.gethostname(), "pid": os.getpid()}
    try:
        if spec.get("gate"):
            grant = _wait_for_slot(folder, spec.get("gate_deadline"), signals)
            if grant is None:
                result.update(started=False, interrupted_by=signals.received, ended_at=time.time())
                write_json_atomic(folder / RESULT, result)
                return result
            env["CUDA_VISIBLE_DEVICES"] = grant.get("gpus", "")
        result.update(_run(spec, env, folder, signals))
    finally:
        signals.restore()
    result["warned_by_usr2"] = signals.warned
    result["scheduler"] = {k: os.environ[k] for k in _SCHEDULER_ENV if k in os.environ}
    result["cuda_visible_devices"] = env.get("CUDA_VISIBLE_DEVICES")
    write_json_atomic(folder / RESULT, result)
    return result


def _run(spec: dict, env: dict, folder: Path, signals: _Signals) -> dict:
    cwd = Path(spec["cwd"])
    if spec.get("output_dir"):
        Path(spec["output_dir"]).mkdir(parents=True, exist_ok=True)
    limit = spec.get("time_limit_s")
    grace = float(spec.get("kill_grace_s", 10))
    started = time.time()
    out: dict = {"started": True, "started_at": started, "timed_out": False, "error": None}
    with open(folder / STDOUT, "ab", buffering=0) as stdout, open(folder / STDERR, "ab", buffering=0) as stderr:
        try:
            child = subprocess.Popen(spec["argv"], cwd=cwd, env=env, stdout=stdout, stderr=stderr,
                                     stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        except OSError as exc:
            why = exc.strerror or str(exc) if cwd.is_dir() else f"working directory {cwd} does not exist"
            message = f"cannot start {spec['argv'][0]!r}: {why}"
            stderr.write(f"gridsubmit: {message}\n".encode())
            now = time.time()
            return {**out, "returncode": 127, "error": message, "ended_at": now, "elapsed_s": now - started}
        signals.child = child
        if signals.ending_at is not None:  # a signal arrived while starting
            os.killpg(child.pid, signal.SIGTERM)
        while child.poll() is None:
            now = time.monotonic()
            if limit and not out["timed_out"] and time.time() - started >= limit:
                out["timed_out"] = True
                signals.ending_at = signals.ending_at or now
                _signal_group(child, signal.SIGTERM)
            if signals.ending_at is not None and now - signals.ending_at >= grace:
                _signal_group(child, signal.SIGKILL)
            try:
                child.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(child, signal.SIGKILL)  # leave no grandchildren behind
    ended = time.time()
    # a child killed by a forwarded warning was interrupted too
    received = signals.received or ("SIGUSR2" if signals.warned and signals.forward_usr2 else None)
    return {**out, "returncode": child.returncode, "interrupted_by": received,
            "ended_at": ended, "elapsed_s": round(ended - started, 3)}  # fmt: skip


def _signal_group(child: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(child.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
