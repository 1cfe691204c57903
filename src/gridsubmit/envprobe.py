"""What the command's own interpreter can import, asked on the node (stdlib only: the node task
imports it).

When a cell's command is a Python interpreter (``python``, ``python3.11``, a virtual
environment's ``.../bin/python``), the task runs that interpreter once more beside the command,
in the same working directory and environment: ``python -c PROBE``, which lists every
distribution ``importlib.metadata`` finds (name and version) and the Python version, and digests
them into a 16-hex-digit *environment fingerprint*. That costs one interpreter start and a scan
of the ``*.dist-info`` folders on its path (see docs/manifest.md for the figure measured), once
per job: the cells of a pack that share interpreter, working directory and PYTHONPATH share one
probe. The probe runs while the command runs and is read once it has ended.

Also here: the CUDA version that ``nvidia-smi`` reports in its header.
"""

from __future__ import annotations

import os
import re
import subprocess

PROBE_TIMEOUT_S = 30  # a probe still running this long after the command ended is killed: no fingerprint

# Reads the header lines of METADATA itself: the email parser behind dist.metadata costs a third more.
PROBE = r"""
import hashlib, json, sys
from importlib import metadata
seen = set()
for dist in metadata.distributions():
    name = version = None
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        if key == "Name" and name is None:
            name = value.strip()
        elif key == "Version" and version is None:
            version = value.strip()
    seen.add((name or "?", version or "?"))
items = [f"{n}=={v}" for n, v in sorted(seen, key=lambda t: (t[0].lower().replace("_", "-"), t[1]))]
py = ".".join(map(str, sys.version_info[:3]))
digest = hashlib.sha256(json.dumps([py, items]).encode()).hexdigest()[:16]
print(json.dumps({"fingerprint": digest, "python": py, "executable": sys.executable, "distributions": items}))
"""

_CUDA = re.compile(r"CUDA Version:\s*([0-9][0-9.]*)")
_cache: dict[tuple, object] = {}  # one probe per job: (interpreter, cwd, PYTHONPATH) -> Popen, then its answer


def interpreter(argv: list[str], env: dict) -> str | None:
    """The command's program when it is a Python interpreter (found on ``env``'s PATH), else None."""
    if not argv or not re.fullmatch(r"python(\d+(\.\d+)*)?", os.path.basename(argv[0])):  # python, python3, python3.11
        return None
    program = argv[0]
    if "/" in program:
        return program
    for folder in env.get("PATH", "").split(os.pathsep):
        path = os.path.join(folder, program)
        if folder and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def start(argv: list[str], cwd: str, env: dict):
    """Start the probe of the command's interpreter (or reuse this job's); None when the command
    is not a Python interpreter or it cannot start."""
    python = interpreter(argv, env)
    if python is None:
        return None
    key = (python, str(cwd), env.get("PYTHONPATH"), env.get("VIRTUAL_ENV"), env.get("CONDA_PREFIX"))
    if key not in _cache:
        try:
            _cache[key] = subprocess.Popen([python, "-c", PROBE], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                           stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)  # fmt: skip
        except OSError:
            _cache[key] = None
    return key


def collect(key) -> dict | None:
    """The probe's answer: ``{"fingerprint", "python", "executable", "distributions"}``, or None."""
    if key is None:
        return None
    found = _cache.get(key)
    if isinstance(found, subprocess.Popen):
        found = _answer(found)
        _cache[key] = found
    return found if isinstance(found, dict) else None


def _answer(proc: subprocess.Popen) -> dict | None:
    import json

    try:
        out, _ = proc.communicate(timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None
    try:
        data = json.loads(out.strip().splitlines()[-1]) if proc.returncode == 0 and out.strip() else None
    except ValueError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("fingerprint"), str) else None


def cuda_version(proc: subprocess.Popen | None) -> str | None:
    """The CUDA version in the header of a plain ``nvidia-smi`` (``CUDA Version: 12.4``), or None."""
    if proc is None:
        return None
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None
    found = _CUDA.search(out or "")
    return found.group(1) if found else None
