#!/usr/bin/env python3
"""Fault-injecting wrapper of sbatch, sacct, squeue and scancel, for tests.

Install: ``tests/fakeslurm/bin/{sbatch,sacct,squeue,scancel}`` are symlinks to this file; a
test puts ``tests/fakeslurm/bin`` first on PATH and sets ``GRIDSUBMIT_FAULTS`` to a JSON file.
The wrapper knows which command it stands for from the name it was invoked as, and finds the
real command in ``GRIDSUBMIT_REAL_SLURM_BIN`` (a directory) when that is set, else on PATH with
its own bin directory (and anything that resolves to this file) left out.

Without ``GRIDSUBMIT_FAULTS`` the wrapper only calls the real command (nothing is logged).
With it, every call appends one JSON line, after the call finished, to
``<dir of faults.json>/calls.jsonl``::

    {"cmd": "sbatch", "argv": ["sbatch", ...args], "t": 1700000000.0, "rc": 0, "fault": null | {...}}

faults.json (re-read on every call; a missing file means no faults)::

    {"sbatch": [FAULT, ...], "sacct": [...], "squeue": [...], "scancel": [...]}

Each list is consumed in order: a call gets the first entry that is not used up. An entry
applies to its next ``"times"`` calls (default 1; -1 = every call from then on; 0 = never).
Consumed counts live in ``<dir of faults.json>/faults.state.json``, so they are shared by all
processes. They are kept by entry position *and* content: rewriting faults.json with extra
entries keeps the counts of the ones already there, a changed entry starts afresh, and an
identical entry stays used up (give it a different ``"id"``, or delete faults.state.json, to
re-arm it). calls.jsonl is locked with ``fcntl.flock`` while a line is appended and while
faults.json and the state file are read and updated.

FAULT keys: ``"do"`` (below), ``"times"``, and ``"id"`` / ``"note"`` (free text, ignored).

``{"do": "fail", "message": M, "rc": 1}``
    Do not call the real command; print ``<cmd>: error: M`` to stderr, exit rc.
    M defaults to ``Socket timed out on send/recv operation``.
``{"do": "slow", "seconds": S}``
    Sleep S seconds, then call the real command as usual.
``{"do": "after", "message": M, "rc": 1}``   (meant for sbatch; any command)
    Call the real command (the job IS queued), drop its stdout, print ``<cmd>: error: M`` to
    stderr, exit rc.
``{"do": "kill_parent", "when": "before" | "after", "marker": PATH}``   (meant for sbatch)
    ``before``: SIGKILL the parent process (os.getppid()) without calling the real command,
    exit 1. ``after``: call the real command, SIGKILL the parent, print the real stdout and
    exit 0 (the real exit code if that was not 0). ``marker``, when given, is touched just
    before the kill.
``{"do": "hide", "job_ids": ["123", ...]}``   (sacct, squeue)
    Call the real command and drop from its stdout each row whose job id (first
    ``|``-separated field) matches: its base id (the digits before ``_`` / ``.``: ``123`` for
    ``123``, ``123_4``, ``123_[0-3]``, ``123_4.batch``), the whole field or the field without
    its step is in job_ids. Without job_ids every row is dropped; a header line (first field
    not starting with a digit) is kept.
``{"do": "state", "value": V, "job_ids": [...]}``   (sacct, squeue)
    Call the real command and set the state field of the matching rows (all rows without
    job_ids) to V. The state column is found in the command's format option: the ``State``
    field of sacct ``-o/--format`` (``-o JobID,JobName,State,...`` -> 3rd field), the
    ``%T``/``%t`` item of squeue ``-o/--format`` (``-o %i|%T|%N`` -> 2nd field). Without a
    format option it assumes exactly those orders (sacct 3rd, squeue 2nd field); with a
    format that has no state column (``-o JobID,JobName``) the output is left unchanged.
    Rows are ``|``-separated, i.e. sacct with -P/-p and squeue with a ``|`` format.
``{"do": "stdout", "text": T, "rc": 0}``
    Do not call the real command; print T exactly as given (add the newline yourself), exit rc.

Any error of the wrapper itself (bad faults.json, real command not found, ...) prints
``faultwrap: ...`` to stderr and exits 99.
"""

import fcntl
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

COMMANDS = ("sbatch", "sacct", "squeue", "scancel")
WRAPPER_ERROR = 99
DEFAULT_MESSAGE = "Socket timed out on send/recv operation"
COMMON_KEYS = {"do", "times", "id", "note"}
FAULT_KEYS = {
    "fail": {"message", "rc"},
    "slow": {"seconds"},
    "after": {"message", "rc"},
    "kill_parent": {"when", "marker"},
    "hide": {"job_ids"},
    "state": {"value", "job_ids"},
    "stdout": {"text", "rc"},
}
ROW_FAULTS = {"hide": ("sacct", "squeue"), "state": ("sacct", "squeue")}


class WrapperError(Exception):
    pass


# --- finding the real command -------------------------------------------------------------------


def _same_dir(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def find_real(name: str, invoked_as: str) -> str:
    me = os.path.realpath(__file__)
    override = os.environ.get("GRIDSUBMIT_REAL_SLURM_BIN")
    if override:
        path = os.path.join(override, name)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise WrapperError(f"GRIDSUBMIT_REAL_SLURM_BIN={override}: no executable {name} there")
        if os.path.realpath(path) == me:
            raise WrapperError(f"GRIDSUBMIT_REAL_SLURM_BIN={override} is the wrapper's own bin directory")
        return path
    own_dir = os.path.dirname(os.path.abspath(invoked_as))
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        entry = entry or "."
        if os.path.isdir(entry) and _same_dir(entry, own_dir):
            continue
        path = os.path.join(entry, name)
        if os.path.isfile(path) and os.access(path, os.X_OK) and os.path.realpath(path) != me:
            return path
    raise WrapperError(f"the real {name} is not on PATH (without {own_dir}); "
                       "set GRIDSUBMIT_REAL_SLURM_BIN to its directory")


# --- faults.json, its state and calls.jsonl ------------------------------------------------------


class Lock:
    """flock on calls.jsonl: held while a line is appended and while faults are chosen."""

    def __init__(self, log_path: str):
        self.log_path = log_path
        self.fh = None

    def __enter__(self):
        self.fh = open(self.log_path, "a", encoding="utf-8")
        fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX)
        return self.fh

    def __exit__(self, *exc):
        try:
            self.fh.flush()
        finally:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
            self.fh.close()


def _check_int(value, what: str, minimum=None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
        raise WrapperError(f"{what} must be an integer" + (f" >= {minimum}" if minimum is not None else "")
                           + f", got {value!r}")
    return value


def validate(cmd: str, index: int, fault) -> dict:
    where = f"faults.json {cmd}[{index}]"
    if not isinstance(fault, dict):
        raise WrapperError(f"{where}: a fault is a JSON object, got {fault!r}")
    do = fault.get("do")
    if do not in FAULT_KEYS:
        raise WrapperError(f"{where}: unknown or missing \"do\": {do!r} (one of {', '.join(FAULT_KEYS)})")
    unknown = set(fault) - COMMON_KEYS - FAULT_KEYS[do]
    if unknown:
        raise WrapperError(f"{where}: keys not known for \"{do}\": {', '.join(sorted(unknown))}")
    if do in ROW_FAULTS and cmd not in ROW_FAULTS[do]:
        raise WrapperError(f"{where}: \"{do}\" is for {' and '.join(ROW_FAULTS[do])} only")
    _check_int(fault.get("times", 1), f"{where}: \"times\"", -1)
    if "rc" in fault:
        _check_int(fault["rc"], f"{where}: \"rc\"", 0)
    for key in ("message", "text", "value", "marker"):
        if key in fault and not isinstance(fault[key], str):
            raise WrapperError(f"{where}: \"{key}\" must be a string")
    if do == "slow":
        seconds = fault.get("seconds")
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
            raise WrapperError(f"{where}: \"slow\" needs \"seconds\" >= 0, got {seconds!r}")
    if do == "kill_parent" and fault.get("when") not in ("before", "after"):
        raise WrapperError(f"{where}: \"kill_parent\" needs \"when\": \"before\" or \"after\"")
    if do == "state" and "value" not in fault:
        raise WrapperError(f"{where}: \"state\" needs \"value\"")
    if do == "stdout" and "text" not in fault:
        raise WrapperError(f"{where}: \"stdout\" needs \"text\"")
    if "job_ids" in fault:
        ids = fault["job_ids"]
        if not isinstance(ids, list) or not all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in ids):
            raise WrapperError(f"{where}: \"job_ids\" must be a list of job id strings")
    return fault


def load_faults(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise WrapperError(f"cannot read faults file {path}: {exc}") from None
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WrapperError(f"faults file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise WrapperError(f"faults file {path}: the top level must be an object of command -> list")
    for cmd, faults in data.items():
        if cmd not in COMMANDS:
            raise WrapperError(f"faults file {path}: unknown command {cmd!r} (one of {', '.join(COMMANDS)})")
        if not isinstance(faults, list):
            raise WrapperError(f"faults file {path}: {cmd} must map to a list of faults")
        for i, fault in enumerate(faults):
            validate(cmd, i, fault)
    return data


def _entry_key(index: int, fault: dict) -> str:
    digest = hashlib.sha256(json.dumps(fault, sort_keys=True).encode()).hexdigest()[:16]
    return f"{index}:{digest}"


def take_fault(cmd: str, faults_path: str, state_path: str):
    """The fault this call gets (or None), counted in the state file. Caller holds the lock."""
    faults = load_faults(faults_path).get(cmd, [])
    if not faults:
        return None
    try:
        with open(state_path, encoding="utf-8") as fh:
            state = json.load(fh)
        if not isinstance(state, dict):
            raise ValueError("not an object")
    except FileNotFoundError:
        state = {}
    except (OSError, ValueError) as exc:
        raise WrapperError(f"state file {state_path} is unreadable ({exc}); delete it to reset") from None
    counts = state.setdefault(cmd, {})
    for i, fault in enumerate(faults):
        key = _entry_key(i, fault)
        used = counts.get(key, 0)
        times = fault.get("times", 1)
        if times == -1 or used < times:
            counts[key] = used + 1
            tmp = f"{state_path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(state, fh, indent=1, sort_keys=True)
            os.replace(tmp, state_path)
            return fault
    return None


def log_call(log_path: str, cmd: str, argv: list, rc: int, fault) -> None:
    line = json.dumps({"cmd": cmd, "argv": argv, "t": time.time(), "rc": rc, "fault": fault})
    with Lock(log_path) as fh:
        fh.write(line + "\n")


# --- output rewriting --------------------------------------------------------------------------


def _ids_of(field: str) -> set:
    field = field.strip()
    ids = {field, field.split(".")[0]}
    m = re.match(r"\d+", field)
    if m:
        ids.add(m.group(0))
    return ids


def _is_row(field: str) -> bool:
    return bool(re.match(r"\s*\d", field))


def _matches(field: str, job_ids) -> bool:
    if job_ids is None:
        return True
    return bool(_ids_of(field) & {str(i) for i in job_ids})


def _format_arg(argv: list, short: str, long: str):
    """The last value of -o/--format in argv, or None."""
    value = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in (short, long):
            if i + 1 < len(argv):
                value = argv[i + 1]
            i += 2
            continue
        if arg.startswith(long + "="):
            value = arg[len(long) + 1:]
        elif arg.startswith(short) and not arg.startswith("--") and len(arg) > len(short):
            value = arg[len(short):]
        i += 1
    return value


def state_column(cmd: str, argv: list):
    """Index of the state field in a |-separated row, or None when the format has none."""
    fmt = _format_arg(argv, "-o", "--format")
    if fmt is None:
        return 2 if cmd == "sacct" else 1
    if cmd == "sacct":
        names = [f.split("%")[0].strip().lower() for f in fmt.split(",")]
        return names.index("state") if "state" in names else None
    items = fmt.split("|")
    for i, item in enumerate(items):
        if re.search(r"%[.\-]?\d*[Tt]", item):
            return i
    return None


def rewrite(cmd: str, argv: list, fault: dict, out: bytes) -> bytes:
    text = out.decode("utf-8", "surrogateescape")
    job_ids = fault.get("job_ids")
    lines = text.splitlines(keepends=True)
    result = []
    if fault["do"] == "hide":
        for line in lines:
            first = line.split("|", 1)[0]
            if _is_row(first) and _matches(first, job_ids):
                continue
            result.append(line)
    else:  # state
        column = state_column(cmd, argv)
        for line in lines:
            body = line.rstrip("\r\n")
            ending = line[len(body):]
            fields = body.split("|")
            if column is not None and len(fields) > column and _is_row(fields[0]) and _matches(fields[0], job_ids):
                old = fields[column]
                # keep squeue's padding width when it pads
                fields[column] = fault["value"].ljust(len(old)) if old != old.strip() else fault["value"]
                line = "|".join(fields) + ending
            result.append(line)
    return "".join(result).encode("utf-8", "surrogateescape")


# --- running ----------------------------------------------------------------------------------


def _exit_code(rc: int) -> int:
    return 128 - rc if rc < 0 else rc  # killed by signal N -> 128+N, as a shell reports it


def write_out(data: bytes, stream) -> None:
    if not data:
        return
    try:
        stream.buffer.write(data)
        stream.flush()
    except BrokenPipeError:
        # the reader is gone (e.g. the parent was killed): nothing to print to
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())


def kill_parent(fault: dict) -> None:
    marker = fault.get("marker")
    if marker:
        with open(marker, "a", encoding="utf-8"):
            os.utime(marker)
    parent = os.getppid()
    if parent > 1:
        os.kill(parent, signal.SIGKILL)


def run_fault(cmd: str, real_argv, args: list, fault) -> int:
    """Carry out the call (with the fault, if any); return the exit code."""
    do = fault["do"] if fault else None
    if do == "fail" or (do == "kill_parent" and fault["when"] == "before"):
        if do == "kill_parent":
            kill_parent(fault)
            return 1
        write_out(f"{cmd}: error: {fault.get('message', DEFAULT_MESSAGE)}\n".encode(), sys.stderr)
        return fault.get("rc", 1)
    if do == "stdout":
        write_out(fault["text"].encode("utf-8", "surrogateescape"), sys.stdout)
        return fault.get("rc", 0)
    if do == "slow":
        time.sleep(fault["seconds"])
    if do in (None, "slow"):
        sys.stdout.flush()
        sys.stderr.flush()
        return _exit_code(subprocess.call(real_argv()))
    # after, kill_parent after, hide, state: the real command with its stdout captured
    proc = subprocess.run(real_argv(), stdout=subprocess.PIPE)
    rc = _exit_code(proc.returncode)
    if do == "after":
        write_out(f"{cmd}: error: {fault.get('message', DEFAULT_MESSAGE)}\n".encode(), sys.stderr)
        return fault.get("rc", 1)
    if do == "kill_parent":
        kill_parent(fault)
        write_out(proc.stdout, sys.stdout)
        return rc
    write_out(rewrite(cmd, args, fault, proc.stdout), sys.stdout)
    return rc


def main() -> int:
    invoked_as = sys.argv[0]
    cmd = os.path.basename(invoked_as)
    args = sys.argv[1:]
    if cmd not in COMMANDS:
        raise WrapperError(f"invoked as {cmd!r}; link this file as one of {', '.join(COMMANDS)}")
    real = find_real(cmd, invoked_as)

    def real_argv():
        return [real, *args]

    faults_path = os.environ.get("GRIDSUBMIT_FAULTS")
    if not faults_path:
        sys.stdout.flush()
        return _exit_code(subprocess.call(real_argv()))
    faults_path = os.path.abspath(faults_path)
    base = os.path.dirname(faults_path)
    if not os.path.isdir(base):
        raise WrapperError(f"GRIDSUBMIT_FAULTS={faults_path}: its directory does not exist")
    log_path = os.path.join(base, "calls.jsonl")
    state_path = os.path.join(base, "faults.state.json")
    try:
        with Lock(log_path):
            fault = take_fault(cmd, faults_path, state_path)
    except WrapperError:
        log_call(log_path, cmd, [cmd, *args], WRAPPER_ERROR, None)
        raise
    rc = run_fault(cmd, real_argv, args, fault)
    log_call(log_path, cmd, [cmd, *args], rc, fault)
    return rc


if __name__ == "__main__":
    try:
        code = main()
    except WrapperError as exc:
        print(f"faultwrap ({os.path.basename(sys.argv[0])}): {exc}", file=sys.stderr)
        code = WRAPPER_ERROR
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # never a traceback: the calling test reads stderr
        print(f"faultwrap ({os.path.basename(sys.argv[0])}): internal error: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        code = WRAPPER_ERROR
    sys.exit(code)
