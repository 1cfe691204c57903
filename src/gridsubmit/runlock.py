"""Who may drive a run: one runner per artifact root, on the filesystems HPC sites have.

The lock is ``.gridsubmit/holder.json``, created with ``O_EXCL`` (atomic on local disks,
NFS v3+, Lustre and GPFS, with or without ``flock``) and naming its holder: host, pid, the
process's start time, the command. The holder touches it every ``HEARTBEAT_EVERY_S``. A
second runner takes it over only when its holder is provably gone: on the same host, the
process (pid *and* start time) no longer exists; from another host, the heartbeat is older
than ``STALE_AFTER_S``. Where ``flock`` works, it is taken too (``.gridsubmit/lock``): it
ends at once with its process, so a runner that was killed frees the run for every process
on its host without waiting for anything. Readers (``status``, ``report``, ``logs``) never
take either: they read ``holder.json``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

from .errors import UsageError
from .fileio import read_json, start_time

STATE_DIR = ".gridsubmit"
HOLDER = "holder.json"
HEARTBEAT_EVERY_S = 15.0
STALE_AFTER_S = 120.0  # a holder on another host that has not beaten for this long is gone
_NO_FLOCK = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL}


def _gone(record: dict, mtime: float) -> bool:
    """The holder named by ``record`` provably no longer drives the run."""
    if record.get("host") == socket.gethostname():
        pid = record.get("pid")
        return not isinstance(pid, int) or start_time(pid) != record.get("start")
    return time.time() - mtime > STALE_AFTER_S


class RunLock:
    """Exclusive right to write an artifact root's manifest; names its holder when refused."""

    def __init__(self, root: Path, command: str):
        self.dir = Path(root) / STATE_DIR
        self.command = command
        self._fh = None
        self._held = False
        self.lost = False  # the holder file names another runner now
        self._stop = threading.Event()

    def acquire(self) -> bool:
        """Take the lock if nobody holds it; False if somebody does."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self._flock():
            return False
        for _ in range(3):
            if self._create():
                self._held = True
                self._stop.clear()
                threading.Thread(target=self._beat, name="gridsubmit-heartbeat", daemon=True).start()
                return True
            if not self._take_over_if_gone():
                break
        self._unflock()
        return False

    def _flock(self) -> bool:
        fh = open(self.dir / "lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        except OSError as exc:  # Lustre without flock, ...: holder.json alone decides
            fh.close()
            if exc.errno not in _NO_FLOCK:
                raise UsageError(f"{self.dir / 'lock'}: cannot lock: {exc.strerror or exc}") from None
            return True
        self._fh = fh
        return True

    def _unflock(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def _create(self) -> bool:
        path = self.dir / HOLDER
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        record = {"pid": os.getpid(), "start": start_time(os.getpid()), "host": socket.gethostname(),
                  "command": self.command, "since": time.time()}  # fmt: skip
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def _take_over_if_gone(self) -> bool:
        """Remove the holder file of a holder that is provably gone; True if removed."""
        path = self.dir / HOLDER
        judged = read_json(path)
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return True  # it let go meanwhile
        record = judged or {}  # None: being written right now, or damaged: judged by its age alone
        ours_by_flock = self._fh is not None and record.get("host") == socket.gethostname()
        if not (ours_by_flock or _gone(record, mtime)):
            return False
        aside = path.with_name(f".{HOLDER}.{uuid.uuid4().hex}")
        try:
            os.rename(path, aside)  # only one taker wins the rename
        except FileNotFoundError:
            return True
        if read_json(aside) != judged:  # another taker replaced it meanwhile: that one is live, put it back
            try:
                os.link(aside, path)
            except OSError:
                pass  # a third holder is there already: it stands
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def _beat(self) -> None:
        """Touch the holder file while it names this process; stop (and say so) once it does
        not: another runner took the run over, having judged this one gone."""
        path = self.dir / HOLDER
        while not self._stop.wait(HEARTBEAT_EVERY_S):
            record = read_json(path) or {}
            if record and (record.get("pid"), record.get("host")) != (os.getpid(), socket.gethostname()):
                self.lost = True
                print(f"gridsubmit: {self.dir.parent}: another runner took this run over ({describe_holder(self.dir.parent)})",
                      file=sys.stderr)  # fmt: skip
                return
            try:
                os.utime(path)
            except OSError:
                pass

    def release(self) -> None:
        if self._held:
            self._stop.set()
            record = read_json(self.dir / HOLDER) or {}
            if record.get("pid") == os.getpid() and record.get("host") == socket.gethostname():
                (self.dir / HOLDER).unlink(missing_ok=True)
            self._held = False
        self._unflock()

    def __enter__(self) -> "RunLock":
        if not self.acquire():
            raise UsageError(f"{self.dir.parent}: in use by {describe_holder(self.dir.parent)}; "
                             "wait for it to end or stop it first")  # fmt: skip
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder(root: Path) -> dict | None:
    """Who holds the run now (None if nobody does); reads only, so it works on a read-only
    copy of a run and on filesystems without flock."""
    path = Path(root) / STATE_DIR / HOLDER
    record = read_json(path)
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    if record is None:  # being written this instant (or damaged): held while it is fresh
        return {} if time.time() - mtime <= STALE_AFTER_S else None
    return None if _gone(record, mtime) else record


def describe_holder(root: Path) -> str:
    from .provenance import local_time

    h = holder(root) or {}
    return (f"'gridsubmit {h.get('command', '?')}' (pid {h.get('pid', '?')} on {h.get('host', '?')}, "
            f"since {local_time(h.get('since'))})")
