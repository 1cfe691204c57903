"""Tidy up: remove the folders of superseded attempts (``gridsubmit clean ROOT``).

A superseded attempt is any attempt of a cell but its last: one that failed, timed out, was
cancelled or lost and was run again, or a COMPLETED one replaced by a rerun. Its attempt
folder (``logs/<cell>/attempt-N``: stdout, stderr, result, claim, spec) is removed, and on
SLURM the scheduler's log files of its job when no attempt that stays shares that job (a
pack). Never removed: the last attempt of a cell, an attempt that has not ended, an attempt
whose claiming process still runs on this host, the cells' output folders, and anything under
``.gridsubmit`` but those job logs. The manifest keeps every attempt's record (with its log
tails): a removed one gets ``cleaned_at``, and the run's ``cleanups`` list says what each
clean removed and how many bytes (file sizes, as the dry run counts them).

Only a lock holder writes the manifest. With the root free, ``clean`` takes the lock,
removes and records. While a runner holds it, ``clean`` refuses if any superseded attempt is
still in use; otherwise it removes and leaves the record in ``.gridsubmit/clean-records/``,
which the runner folds into the manifest within a cycle (and any later lock holder, should
that runner stop first).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import context as ctx
from . import manifest as mf
from .errors import UsageError
from .states import JobState
from .fileio import read_json, start_time
from .task import CLAIM, RESULT

RECORDS = "clean-records"


@dataclass
class Removal:
    key: str
    attempt: int
    state: str
    paths: list[Path] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    in_use: str = ""  # why it must stay, when it must


def _size(path: Path) -> tuple[int, int]:
    """(files, bytes) under ``path`` (file sizes; links counted as themselves)."""
    try:
        st = os.lstat(path)
    except OSError:
        return 0, 0
    if not os.path.isdir(path) or os.path.islink(path):
        return 1, st.st_size
    files = size = 0
    for here, _dirs, names in os.walk(path):
        for name in names:
            try:
                size += os.lstat(os.path.join(here, name)).st_size
                files += 1
            except OSError:
                pass
    return files, size


def _claimed_alive(folder: Path) -> str:
    """Why the attempt folder is still in use by a process on this host ('' when it is not)."""
    claim = read_json(folder / CLAIM)
    if not claim or (folder / RESULT).exists() or claim.get("host") != socket.gethostname():
        return ""
    pid = claim.get("pid")
    started = start_time(pid) if isinstance(pid, int) else None
    if started is not None and claim.get("start") in (None, started):
        return f"its claiming process {pid} still runs"
    return ""


def _job_logs(root: Path, attempt: dict) -> list[Path]:
    """The scheduler's own log files of a SLURM attempt's job (none for a local attempt)."""
    if attempt.get("backend") != "slurm" or not attempt.get("job_id"):
        return []
    try:
        from submitit.core.utils import JobPaths
    except ImportError:  # pragma: no cover - submitit is a dependency
        return []
    paths = JobPaths(root / mf.STATE_DIR / "submitit", job_id=attempt["job_id"])
    return [p for p in (paths.stdout, paths.stderr) if p.exists()]


def plan(root: Path, manifest: dict) -> list[Removal]:
    """The superseded attempts of ``manifest`` not removed yet, each with what would go."""
    root = Path(root)
    kept_jobs = {a.get("job_id") for cell in manifest["jobs"] for a in cell["attempts"][-1:] if a.get("job_id")}
    active_jobs = {a.get("job_id") for cell in manifest["jobs"] for a in cell["attempts"]
                   if a.get("job_id") and JobState(a["state"]).active}  # fmt: skip
    out = []
    for cell in manifest["jobs"]:
        for a in cell["attempts"][:-1]:
            if a.get("cleaned_at"):
                continue
            r = Removal(cell["key"], a["attempt"], a["state"])
            folder = root / a["dir"]
            if JobState(a["state"]).active:
                r.in_use = "it has not ended"
            else:
                r.in_use = _claimed_alive(folder)
            if folder.exists():
                r.paths.append(folder)
            for name in ("stdout", "stderr"):  # inside the folder unless recorded elsewhere
                path = root / a[name]
                if path.exists() and folder not in path.parents:
                    r.paths.append(path)
            if a.get("job_id") not in kept_jobs | active_jobs:
                r.paths += _job_logs(root, a)
            for path in r.paths:
                files, size = _size(path)
                r.files += files
                r.bytes += size
            out.append(r)
    return out


def _remove(removals: list[Removal]) -> None:
    for r in removals:
        for path in r.paths:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass


def _record(removals: list[Removal]) -> dict:
    return {"id": uuid.uuid4().hex[:12], "at": time.time(), "user": ctx.user(), "host": socket.gethostname(),
            "attempts": [{"cell": r.key, "attempt": r.attempt} for r in removals],
            "files": sum(r.files for r in removals), "bytes": sum(r.bytes for r in removals)}  # fmt: skip


def apply_record(manifest: dict, record: dict) -> bool:
    """Fold one clean's record into the manifest (in place; the caller holds the lock), once:
    False when it is there already."""
    if any(c.get("id") == record["id"] for c in manifest.get("cleanups", [])):
        return False
    cells = {cell["key"]: cell for cell in manifest["jobs"]}
    for item in record["attempts"]:
        cell = cells.get(item["cell"])
        if cell is not None and 1 <= item["attempt"] <= len(cell["attempts"]):
            cell["attempts"][item["attempt"] - 1]["cleaned_at"] = record["at"]
    manifest["cleanups"] = [*manifest.get("cleanups", []), record]
    return True


def apply_pending(root: Path, manifest: dict) -> bool:
    """Fold the records a clean left for the lock holder into the manifest; True if any."""
    folder = Path(root) / mf.STATE_DIR / RECORDS
    if not folder.is_dir():
        return False
    changed = False
    for path in sorted(folder.glob("*.json")):
        record = read_json(path)
        if record is not None:
            changed |= apply_record(manifest, record)
    return changed


def forget_pending(root: Path) -> None:
    """Remove the records once the manifest that holds them is saved."""
    folder = Path(root) / mf.STATE_DIR / RECORDS
    for path in folder.glob("*.json") if folder.is_dir() else ():
        path.unlink(missing_ok=True)


def clean(root: str | Path, dry_run: bool = False, wait_s: float = 10.0) -> dict:
    """Remove (or with ``dry_run`` only list) the superseded attempts of the run in ``root``.
    Returns ``{"attempts": [...], "files", "bytes", "skipped": [...], "recorded"}``."""
    root = Path(root).expanduser().resolve()
    manifest = mf.existing(root)
    removals = plan(root, manifest)
    out = {"root": str(root), "dry_run": dry_run, "recorded": None}
    if dry_run:
        return _summary(out, removals)
    lock = mf.RunLock(root, "clean")
    if lock.acquire():
        try:
            manifest = mf.existing(root)
            if apply_pending(root, manifest):  # an earlier clean's, its runner gone before folding it in
                mf.save(root, manifest)
                forget_pending(root)
            removals = plan(root, manifest)
            doing = [r for r in removals if not r.in_use]
            if doing:
                _remove(doing)
                apply_record(manifest, _record(doing))
                mf.save(root, manifest)
                out["recorded"] = "manifest"
        finally:
            lock.release()
        return _summary(out, removals)
    busy = [r for r in removals if r.in_use]
    if busy:
        raise UsageError(f"{root}: in use by {mf.describe_holder(root)}, and {busy[0].key} attempt {busy[0].attempt} "
                         f"is in use ({busy[0].in_use}); clean once the run has ended")  # fmt: skip
    if removals:
        _remove(removals)
        folder = root / mf.STATE_DIR / RECORDS
        folder.mkdir(exist_ok=True)
        path = folder / f"{uuid.uuid4().hex}.json"
        tmp = folder / f".{path.name}.tmp"
        tmp.write_text(json.dumps(_record(removals)))
        tmp.rename(path)
        deadline = time.monotonic() + wait_s
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        out["recorded"] = "manifest" if not path.exists() else f"pending: the runner {mf.describe_holder(root)} records it ({path})"
    return _summary(out, removals)


def _summary(out: dict, removals: list[Removal]) -> dict:
    doing = [r for r in removals if not r.in_use]
    out.update(attempts=[{"cell": r.key, "attempt": r.attempt, "state": r.state, "files": r.files, "bytes": r.bytes,
                          "paths": [str(p) for p in r.paths]} for r in doing],
               skipped=[{"cell": r.key, "attempt": r.attempt, "why": r.in_use} for r in removals if r.in_use],
               files=sum(r.files for r in doing), bytes=sum(r.bytes for r in doing))  # fmt: skip
    return out


def clean_text(out: dict) -> str:
    verb = "would remove" if out["dry_run"] else "removed"
    lines = [f"  {a['cell']} attempt {a['attempt']} ({a['state']}): {a['files']} file(s), {human(a['bytes'])}"
             for a in out["attempts"]]  # fmt: skip
    lines += [f"  left: {s['cell']} attempt {s['attempt']}: {s['why']}" for s in out["skipped"]]
    head = (f"{verb} {len(out['attempts'])} superseded attempt(s): {out['files']} file(s), {out['bytes']} bytes "
            f"({human(out['bytes'])})" if out["attempts"] else "nothing to remove: no superseded attempt left")  # fmt: skip
    tail = [] if out["dry_run"] or not out["recorded"] or out["recorded"] == "manifest" else [out["recorded"]]
    return "\n".join([head, *lines, *tail])


def human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"
