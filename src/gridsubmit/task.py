"""What runs for each job on the compute node (stdlib only: it starts once per job).

A SLURM job runs ``python -m gridsubmit.task FOLDER``: the cells of array task N are in
``FOLDER/N.json`` (a lone job is given its file); see backends.slurm_submission. The local backend
starts ``python -m gridsubmit.task ATTEMPT_DIR/spec.json`` itself, one process per cell,
once a slot is free (backends.local).

Runs the cell's argv without a shell, in the run's working directory (the cell's output
folder is created first, and named in its argv); the child writes its stdout and stderr
straight into two files, so a killed job still leaves its partial logs. Ends by writing
``result.json`` atomically: the command's own exit code survives whatever the scheduler's
wrapper reports.

Exactly once: before the command starts, the task creates ``claim.json`` in the attempt
folder exclusively (with its pid and process start time, by which a runner that re-attaches
recognises it); a second process for the same attempt finds it and leaves without running
anything. Waiting for the command blocks: time limits and kill grace periods are timers, not
polling loops.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import envprobe
from .fileio import read_json, start_time, write_json_atomic

RESULT = "result.json"
CLAIM = "claim.json"  # whoever creates it first runs the attempt (or gives it up)
CANCEL = "cancel.json"  # a cell of a pack cancelled before its turn: skipped
TASKS_DIR = "tasks"  # SLURM: one folder of cell specs per array chunk, one file per array task
TASKS_WAIT_S = 60  # a job that starts before sbatch returned waits this long for its cells' folder
STDOUT = "stdout.log"
STDERR = "stderr.log"

_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)
_ENDING = (signal.SIGTERM, signal.SIGINT)  # after these, the child gets kill_grace_s to exit
_SCHEDULER_ENV = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_GPUS", "SLURM_JOB_PARTITION")


class _Signals:
    """Remembers the first ending signal, forwards signals to the child's group, and runs
    the time limit and the kill grace period as timers (SIGALRM).

    SIGUSR2 is the schedulers' "time is nearly up" warning (submitit asks SLURM for it);
    it is forwarded only when the profile asked for it, as a command that does not handle
    it would die of it long before its real limit."""

    def __init__(self, forward_usr2: bool, grace_s: float) -> None:
        self.child: subprocess.Popen | None = None
        self.received: str | None = None
        self.ending = False
        self.timed_out = False
        self.warned = False
        self.sent: list[str] = []  # what this wrapper sent the command, in order
        self.forward_usr2 = forward_usr2
        self.grace_s = grace_s
        handlers = {sig: self._handle for sig in _FORWARDED} | {signal.SIGALRM: self._alarm}
        self._previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}

    def _handle(self, signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if signum in _ENDING:
            self.received = self.received or name
            self._end()
        else:
            self.warned = True
            if not self.forward_usr2:
                return
        self.send(signum, f"{name} (forwarded)")

    def _alarm(self, _signum: int, _frame) -> None:
        if self.ending:  # the grace period is over
            self.send(signal.SIGKILL, "SIGKILL (grace period over)")
        else:
            self.timed_out = True
            self.send(signal.SIGTERM, "SIGTERM (time limit)")
            self._end()

    def _end(self) -> None:
        if not self.ending:
            self.ending = True
            signal.setitimer(signal.ITIMER_REAL, self.grace_s)

    def send(self, signum: int, why: str) -> None:
        if self.child is not None and self.child.returncode is None:
            self.sent.append(why)
            _signal_group(self.child, signum)

    def restore(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def job_id() -> str:
    """This job's id as its runner knows it: the task's own pid."""
    return str(os.getpid())


def _claim(folder: Path, record: dict) -> bool:
    """Take the attempt: True for the first process only."""
    try:
        fd = os.open(folder / CLAIM, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh)
    return True


def run_task(spec: dict) -> dict:
    """Run one attempt. ``spec``: argv, cwd, output_dir, attempt_dir, env (additions), and optionally
    env_file and env_names (more additions: those names from a file readable by the run's
    owner only), time_limit_s (enforced here: the local backend's limit, and each cell's in
    a pack), kill_grace_s, forward_usr2,
    done (the file that marks the attempt's end for the runner)."""
    folder = Path(spec["attempt_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal ends the runner, not the cells
    signals = _Signals(bool(spec.get("forward_usr2")), float(spec.get("kill_grace_s", 10)))
    env = dict(os.environ)
    if spec.get("env_file"):  # the secret-looking captured variables: never written into a job script
        secrets = read_json(Path(spec["env_file"])) or {}
        env.update({name: secrets[name] for name in spec.get("env_names", secrets) if name in secrets})
    env.update(spec.get("env") or {})
    result: dict = {"argv": list(spec["argv"]), "cwd": spec["cwd"], "hostname": os.uname().nodename, "pid": os.getpid()}
    try:
        claim = {"job": job_id(), "pid": os.getpid(), "start": start_time(), "host": result["hostname"], "at": time.time(),
                 "gpus": env.get("CUDA_VISIBLE_DEVICES")}  # fmt: skip
        if not _claim(folder, claim):
            return result  # another process ran (or runs) this attempt: never run it twice
        if (folder / CANCEL).exists():  # checked after claiming: the submitter checks the claim after asking
            result.update(started=False, cancelled=True, error="cancelled before its turn in the pack", ended_at=time.time())
        else:
            result.update(_run(spec, env, folder, signals))
    finally:
        signals.restore()
    result["warned_by_usr2"] = signals.warned
    result["scheduler"] = {k: os.environ[k] for k in _SCHEDULER_ENV if k in os.environ}
    result["cuda_visible_devices"] = env.get("CUDA_VISIBLE_DEVICES")
    write_json_atomic(folder / RESULT, result)
    _mark_done(spec)
    return result


def run_pack(specs: list[dict]) -> list[dict]:
    """Run several attempts one after another in one job (``cells_per_job``), each with its
    own claim, logs and result. A SIGTERM or SIGINT (scancel, the job's limit) ends the
    pack: the cells after it never claim their attempt, and the submitter marks them so
    that they never run (backends.base.never_runs) before it submits them again."""
    stop: list[str] = []  # a SIGTERM/SIGINT between two cells (run_task handles those during one)
    previous = {sig: signal.signal(sig, lambda signum, _: stop.append(signal.Signals(signum).name)) for sig in _ENDING}
    results = []
    try:
        for spec in specs:
            if stop:
                break
            result = run_task(spec)
            results.append(result)
            if result.get("interrupted_by") in {sig.name for sig in _ENDING}:
                break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return results


def _mark_done(spec: dict) -> None:
    """One empty file per ended attempt in one folder: the runner lists that folder once per
    cycle instead of opening every attempt's result file."""
    if spec.get("done"):
        try:
            os.close(os.open(spec["done"], os.O_WRONLY | os.O_CREAT, 0o644))
        except OSError:
            pass  # the result file is there; the scheduler's word leads the runner to it


def _run(spec: dict, env: dict, folder: Path, signals: _Signals) -> dict:
    cwd = Path(spec["cwd"])
    if spec.get("output_dir"):
        Path(spec["output_dir"]).mkdir(parents=True, exist_ok=True)
    limit = spec.get("time_limit_s")
    started = time.time()
    out: dict = {"started": True, "started_at": started, "timed_out": False, "error": None,
                 "outputs_before": _identities(spec)}
    if signals.ending:  # told to stop before the command started: it never does
        return {"started": False, "interrupted_by": signals.received, "ended_at": started,
                "error": f"never started: {signals.received} arrived first"}  # fmt: skip
    memory = _memory_cgroup()  # the command's, as it inherits it: its OOM kills are counted there
    before = _oom_kills(memory)  # read before it starts, so that however soon it is killed, the kill counts
    with open(folder / STDOUT, "ab", buffering=0) as stdout, open(folder / STDERR, "ab", buffering=0) as stderr:
        try:
            child = subprocess.Popen(spec["argv"], cwd=cwd, env=env, stdout=stdout, stderr=stderr,
                                     stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_dies_with_task())  # fmt: skip
        except OSError as exc:
            why = exc.strerror or str(exc) if cwd.is_dir() else f"working directory {cwd} does not exist"
            message = f"cannot start {spec['argv'][0]!r}: {why}"
            stderr.write(f"gridsubmit: {message}\n".encode())
            now = time.time()
            return {**out, "returncode": 127, "error": message, "ended_at": now, "elapsed_s": now - started}
        signals.child = child
        smi = _ask_gpus(env)  # runs beside the command; read once it ended
        cuda = _ask_gpus(env, [])  # a plain nvidia-smi: its header names the CUDA version
        probe = envprobe.start(spec["argv"], str(cwd), env)  # what the command's interpreter can import
        if signals.ending:  # a signal arrived while starting
            signals.send(signal.SIGTERM, f"SIGTERM ({signals.received} arrived while starting)")
        elif limit:
            signal.setitimer(signal.ITIMER_REAL, float(limit))
        usage = _reap(child)  # blocks; the signal handlers and timers act meanwhile
        signal.setitimer(signal.ITIMER_REAL, 0)
        after = _oom_kills(memory)  # before the group is killed below: that kill is never the OOM killer's
        _signal_group(child, signal.SIGKILL)  # leave no grandchildren behind
    gpu_info = _gpu_info(smi, env.get("CUDA_VISIBLE_DEVICES"))
    comparable = {"cuda_version": envprobe.cuda_version(cuda), "environment": envprobe.collect(probe)}
    ended = time.time()
    rc = child.returncode
    # a child killed by a forwarded warning was interrupted too
    received = signals.received or ("SIGUSR2" if signals.warned and signals.forward_usr2 else None)
    record = {**out, "returncode": rc, "timed_out": signals.timed_out, "interrupted_by": received,
              "signals_sent": signals.sent, "ended_at": ended, "elapsed_s": round(ended - started, 3),
              "gpu_info": gpu_info, **comparable, **usage,
              "memory_cgroup": memory and memory[0], "oom_kill_count": {"before": before, "after": after}}  # fmt: skip
    if rc < 0 and not signals.sent:  # killed by somebody else: the scheduler, a node failure, the OOM killer
        record["killed_by_signal"] = signal.Signals(-rc).name if -rc in signal.Signals.__members__.values() else -rc
    # The OOM killer's kill is a SIGKILL this task did not send, counted in the command's memory
    # cgroup while the command ran. (A pid in the kernel log is no such evidence: pids are reused,
    # and inside a pid namespace the log names another one.)
    record["oom_killed"] = (rc == -signal.SIGKILL and not any(s.startswith("SIGKILL") for s in signals.sent)
                            and before is not None and after is not None and after > before)  # fmt: skip
    return record


def _dies_with_task():
    """What the command runs before exec so that a task killed outright (SIGKILL by an admin or
    the OOM killer) takes the command with it: a retry never runs beside an orphan. Linux's
    PR_SET_PDEATHSIG; None where it is not to be had."""
    try:
        import ctypes  # loaded here, in the task, not in the child between fork and exec

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def _identities(spec: dict) -> dict:
    """Size and mtime (ns) of the outputs the runner will look for, as they are before the
    command starts: a file an earlier attempt left that this one did not rewrite is told apart
    without comparing clocks (a node's and a shared filesystem's may differ)."""
    out = {}
    for name in spec.get("watch") or ():
        try:
            st = os.stat(os.path.join(spec["output_dir"], name))
        except OSError:
            continue
        out[name] = [st.st_size, st.st_mtime_ns]
    return out


def _reap(child: subprocess.Popen) -> dict:
    """Wait for the command and return what the kernel measured of it: its peak resident
    memory (the largest of it and the processes it waited for) and its CPU time."""
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return {"max_rss_bytes": usage.ru_maxrss * 1024, "cpu_s": round(usage.ru_utime + usage.ru_stime, 3)}


def _ask_gpus(env: dict, query: list[str] | None = None) -> subprocess.Popen | None:
    """Start ``nvidia-smi`` (where the node has one) to name the GPUs and the driver (``query``:
    other arguments)."""
    # PATH searched here: shutil.which would import shutil and its compression modules (~2 ms) in every job
    found = (os.path.join(d, "nvidia-smi") for d in env.get("PATH", "").split(os.pathsep) if d)
    path = next((f for f in found if os.access(f, os.X_OK) and os.path.isfile(f)), None)
    if path is None:
        return None
    try:
        args = ["--query-gpu=index,uuid,name,driver_version", "--format=csv,noheader"] if query is None else query
        return subprocess.Popen([path, *args],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                env=env, text=True)  # fmt: skip
    except OSError:
        return None


def _gpu_info(smi: subprocess.Popen | None, visible: str | None) -> list[dict] | None:
    """The GPUs the command could see (by index or UUID in CUDA_VISIBLE_DEVICES; all when unset)."""
    if smi is None:
        return None
    try:
        out, _ = smi.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        smi.kill()
        smi.wait()
        return None
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            gpus.append(dict(zip(("index", "uuid", "name", "driver"), parts)))
    if visible is not None:
        wanted = [v.strip() for v in visible.split(",") if v.strip()]
        gpus = [g for g in gpus if g["index"] in wanted or g["uuid"] in wanted]
    return gpus


def _memory_cgroup(pid: str = "self") -> tuple[str, str] | None:
    """The memory cgroup ``pid`` runs in: (its folder, the file that counts its OOM kills), from
    cgroup v1's memory hierarchy where one is mounted (``memory.oom_control``), else cgroup v2's
    (``memory.events``, when the memory controller is enabled there); None when neither is readable."""
    try:
        with open(f"/proc/{pid}/cgroup") as fh:
            cgroup = fh.read()
        with open("/proc/self/mountinfo") as fh:
            mountinfo = fh.read()
    except OSError:
        return None
    return _find_memory_cgroup(cgroup, mountinfo, os.path.isfile)


def _find_memory_cgroup(cgroup: str, mountinfo: str, isfile) -> tuple[str, str] | None:
    """:func:`_memory_cgroup` from the texts of ``/proc/PID/cgroup`` and ``/proc/self/mountinfo``."""
    lines, mounts = cgroup.splitlines(), mountinfo.splitlines()
    paths = {}  # "v1" / "v2" -> the cgroup's path in its hierarchy
    for line in lines:
        _, _, rest = line.partition(":")
        controllers, colon, path = rest.partition(":")
        if not colon:
            continue
        if line.startswith("0::"):
            paths["v2"] = path
        elif "memory" in controllers.split(","):
            paths["v1"] = path
    for version, counter in (("v1", "memory.oom_control"), ("v2", "memory.events")):
        if version not in paths:
            continue
        for mount in mounts:
            fields, _, fs = mount.partition(" - ")
            fs_type, _, options = (fs.split(" ") + ["", "", ""])[:3]
            if fs_type != ("cgroup" if version == "v1" else "cgroup2") or version == "v1" and "memory" not in options.split(","):
                continue
            root, mountpoint = (_unescape(f) for f in fields.split(" ")[3:5])
            path = paths[version]
            if root != "/" and path != root and not path.startswith(root + "/"):
                continue  # this mount shows another part of the hierarchy
            folder = mountpoint + (path if root == "/" else path[len(root):])
            folder = folder.rstrip("/") or "/"
            if isfile(os.path.join(folder, counter)):
                return folder, os.path.join(folder, counter)
    return None


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _oom_kills(memory: tuple[str, str] | None) -> int | None:
    """How many processes of that cgroup the OOM killer has killed (``oom_kill``), or None."""
    if memory is None:
        return None
    try:
        with open(memory[1]) as fh:
            for line in fh:
                name, _, value = line.partition(" ")
                if name == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        pass
    return None  # unreadable, or a kernel too old to count them (v1 before Linux 4.13)


def _signal_group(child: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(child.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str]) -> int:
    """A SLURM job's command: run the cells of ``argv[0]``, a file, or a folder holding one
    file per array index, one after another."""
    signal.signal(signal.SIGUSR2, lambda *_: None)  # a warning between two cells ends nothing
    target = Path(argv[0])
    if target.suffix == ".json":
        folder, path = target.parent, target
    else:
        folder, path = target, target / f"{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}.json"
    deadline = time.monotonic() + TASKS_WAIT_S
    while not folder.is_dir():  # named once sbatch returned: a job may start before that
        if time.monotonic() > deadline:
            print(f"gridsubmit: {folder} did not appear in {TASKS_WAIT_S} s: its submission was cut short; "
                  "nothing was run", file=sys.stderr)  # fmt: skip
            return 1
        time.sleep(1)
    spec = read_json(path)
    if spec is None:
        print(f"gridsubmit: {path} is missing or unreadable; nothing was run", file=sys.stderr)
        return 1
    run_pack(spec["cells"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
