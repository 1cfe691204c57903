"""Files written whole or not at all, JSON read leniently, processes told apart (stdlib only).

Low in the house: the node task (which starts once per job and imports nothing heavy) and
the submitter's modules share these, so there is one atomic write.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_text_atomic(path: Path, text: str, sync: bool = True, mode: int = 0o644) -> None:
    """Whole or not at all. ``sync``: the file and its folder are on the disk before the
    call returns (a crash just after leaves the old or the new file, never an empty one)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if sync:
            _sync_folder(path.parent)
    finally:  # interrupted half-way: leave no temporary file behind
        if tmp.exists():
            tmp.unlink()


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot sync a folder; the rename stands
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: dict, sync: bool = True, mode: int = 0o644) -> None:
    write_text_atomic(path, json.dumps(data, indent=1), sync, mode)


def file_digest(path: str | Path) -> str | None:
    """sha256 of a (small) file's content; None when it cannot be read."""
    import hashlib  # here: the node task imports this module and never hashes

    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def read_json(path: Path) -> dict | None:
    """The JSON in ``path``; None when it is missing or not (yet) whole."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def start_time(pid: int | str = "self", living: bool = True) -> int | None:
    """When a process started (clock ticks since boot, field 22 of /proc/PID/stat): with its
    pid, what tells it apart from a later process that was given the same pid. None when the
    process is gone, is a zombie (unless not ``living``), or /proc cannot say."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # after the command name: state is field 3, starttime field 22
    return None if living and fields[0] in ("Z", "X") else int(fields[19])
