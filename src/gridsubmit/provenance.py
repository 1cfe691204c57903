"""What a cell's result depends on, and whether it still holds.

Each attempt records what it ran from: its argv, working directory, options and the
identity of each input (size and mtime, plus sha256 when hashing is asked for). The
fingerprint is a digest of that record; a COMPLETED cell whose record no longer matches
what the study plans now is *stale*, and :func:`changes` says which part moved.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import stat
import subprocess
import time
from pathlib import Path
from typing import Mapping

HASH_CHUNK = 4 * 1024 * 1024


def identity(path: str | None, digest: str | None = None) -> dict | None:
    """Size and mtime of an input (None when absent); ``digest`` adds its sha256."""
    if path is None:
        return None
    try:
        st = Path(path).stat()
    except OSError:
        return {"path": str(path), "size": None, "mtime": None}
    out = {"path": str(path), "size": st.st_size, "mtime": st.st_mtime}
    if digest:
        out["sha256"] = digest
    return out


class Hasher:
    """sha256 of input files, each (path, size, mtime) read once: cells share checkpoints."""

    def __init__(self) -> None:
        self._seen: dict[tuple, str] = {}

    def __call__(self, path: str) -> str | None:
        try:
            st = Path(path).stat()
        except OSError:
            return None
        key = (path, st.st_size, st.st_mtime_ns)
        if key not in self._seen:
            digest = sha256_file(path)
            if digest is None:  # unreadable now: no digest, judged by size and mtime
                return None
            self._seen[key] = digest
        return self._seen[key]


def sha256_file(path: str | Path) -> str | None:
    """sha256 of a file's content, read in chunks (outputs can be reconstructions of hundreds
    of MB); None when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(HASH_CHUNK):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def ran_from(cell: dict, workdir: str, hasher: Hasher | None = None) -> dict:
    """The record of what an attempt of ``cell`` runs from, taken now."""
    inputs = {}
    for name, path in cell["inputs"].items():
        if path is None:
            inputs[name] = None
            continue
        digest = hasher(path) if hasher is not None and Path(path).is_file() else None
        inputs[name] = identity(path, digest)
    record = {"argv": list(cell["argv"]), "command": shlex.join(cell["argv"]), "workdir": str(workdir),
              "options": dict(cell["options"]), "inputs": inputs}  # fmt: skip
    record["fingerprint"] = fingerprint(record)
    return record


def fingerprint(record: Mapping) -> str:
    """A digest of argv, working directory, options and input identities."""
    parts = {k: record.get(k) for k in ("argv", "workdir", "options", "inputs")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def changes(recorded: Mapping, current: Mapping, hasher: Hasher | None = None, code=None) -> list[str]:
    """Why ``current`` (what the study plans now) differs from what an attempt ran from;
    empty when it does not. With a recorded sha256, an input whose mtime moved but whose
    content did not is unchanged (``hasher`` reads it again to tell). ``code``: the code on
    disk now (codehash.Now), against the attempt's recorded script and ``code_paths``."""
    why = []
    if recorded.get("workdir") != current.get("workdir"):
        why.append(f"working directory: {recorded.get('workdir')} -> {current.get('workdir')}")
    old_opts, new_opts = recorded.get("options") or {}, current.get("options") or {}
    for name in sorted(set(old_opts) | set(new_opts)):
        if old_opts.get(name) != new_opts.get(name):
            why.append(f"option {name}: {old_opts.get(name)!r} -> {new_opts.get(name)!r}")
    old_in, new_in = recorded.get("inputs") or {}, current.get("inputs") or {}
    for name in sorted(set(old_in) | set(new_in)):
        reason = _input_change(name, old_in.get(name), new_in.get(name), hasher)
        if reason:
            why.append(reason)
    if code is not None:
        why += code.changes(recorded.get("code"), recorded.get("argv"), current.get("argv"))
    if not why and list(recorded.get("argv") or []) != list(current.get("argv") or []):
        why.append(f"command: {recorded.get('command') or shlex.join(recorded.get('argv') or [])} -> {current.get('command')}")
    return why


def _input_change(name: str, old: Mapping | None, new: Mapping | None, hasher: Hasher | None) -> str | None:
    if old is None or new is None:
        if old == new:
            return None
        return f"input {name}: {'appeared' if old is None else 'gone'} ({(new or old)['path']})"
    if old["path"] != new["path"]:
        return f"input {name}: {old['path']} -> {new['path']}"
    if new["size"] is None:
        return f"input {name}: {new['path']} is gone"
    if (old.get("size"), old.get("mtime")) == (new["size"], new["mtime"]):
        return None
    if old.get("sha256") and hasher is not None:
        now = new.get("sha256") or hasher(new["path"])
        if now == old["sha256"]:
            return None  # touched, not changed
    detail = [f"size {old.get('size')} -> {new['size']}" if old.get("size") != new["size"] else "",
              f"modified {local_time(new['mtime'])}" if old.get("mtime") != new["mtime"] else ""]  # fmt: skip
    return f"input {name} changed ({', '.join(d for d in detail if d)})"


def local_time(epoch: float | None) -> str:
    return "?" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def git_state(workdir: str | Path) -> dict | None:
    """The commit of the git repository holding ``workdir`` and whether it has uncommitted
    changes to tracked files; None outside a repository (or without git)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(workdir), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status), "repository": git("rev-parse", "--show-toplevel")}


def judged(cell: dict) -> dict | None:
    """The attempt a COMPLETED cell's results come from, when it recorded what it ran from
    (attempts recorded before fingerprints are not judged); None otherwise."""
    if cell["state"] != "COMPLETED" or not cell["attempts"] or "fingerprint" not in cell["attempts"][-1]:
        return None
    return cell["attempts"][-1]


def outputs_record(folder: str | Path) -> dict | None:
    """``{"files", "bytes", "digest", "sha256"}`` of every file under ``folder``: ``digest`` of
    the listing (relative path, size, modification time in ns), and ``sha256``, relative path
    -> 16 hex digits of its content (every file is read), since a size and a time can be put
    back after an edit (``touch -r``) and only the content says a copy is what the attempt
    wrote. None when the folder cannot be listed."""
    folder = Path(folder)
    entries, digests = [], {}
    try:
        for here, dirs, files in os.walk(folder, onerror=_raise):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(here, name)
                st = os.lstat(path)
                rel = os.path.relpath(path, folder)
                entries.append((rel, st.st_size, st.st_mtime_ns))
                digests[rel] = _content(path, st)
    except OSError:
        return None
    digest = hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]
    return {"files": len(entries), "bytes": sum(e[1] for e in entries), "digest": digest, "sha256": digests}


def _content(path: str, st: os.stat_result) -> str | None:
    """16 hex digits of a file's content (a link's: its target, as the copy keeps links);
    None for what cannot be read, or is no file (a FIFO would block): nothing to confirm."""
    if stat.S_ISLNK(st.st_mode):
        try:
            return hashlib.sha256(os.readlink(path).encode()).hexdigest()[:16]
        except OSError:
            return None
    digest = sha256_file(path) if stat.S_ISREG(st.st_mode) else None
    return digest and digest[:16]


def _raise(exc: OSError) -> None:
    raise exc


# --- what a cell computes, wherever it writes -----------------------------------------------
