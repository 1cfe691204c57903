"""Reuse across artifact roots: a cell another run already computed is copied, not run again.

``submit --reuse-from ROOT`` (``reuse_from=`` in the API) looks, for every cell due to run,
for a COMPLETED cell of ROOT that ran from the same thing: the same command (with each
root's own output folder and artifact root put back as placeholders), working directory,
options and input identities (path, size, modification time). Such a cell is not run: the
files of its output folder are copied into this root's output folder (its logs into a new
attempt folder), and the cell is COMPLETED with an attempt that says ``reused`` and names
the source root, cell and attempt; its metrics are read from the copy.

Never reused:

* a source cell that is stale (:func:`gridsubmit.freshness.judge`), or whose last attempt
  recorded no fingerprint;
* a source whose output folder changed since its attempt ended. When an attempt COMPLETES,
  the runner records ``outputs``: the number of files in its output folder, their bytes, a
  digest of the listing and the sha256 of every file's content
  (:func:`provenance.outputs_record`). Sizes and times alone can be put back after an edit
  (``touch -r``), so the source's files are read again before the copy and the copy is read
  back after it; a file whose content differs, a file gone or added refuses the reuse, named,
  and so does an attempt without content digests (written by an older gridsubmit: a check
  that cannot confirm is no check);
* a copy that lacks one of the cell's ``expected_outputs``.

Files are copied (``shutil.copy2``: contents, modes and times), not hard-linked: the study's
command rewrites its outputs in place (opening them for writing truncates the file), so a
later rerun of the cell in either root would change the other root's results through a
shared inode. What was reused and what was refused, and why, is recorded in the
submission's ``reuse`` entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from . import freshness
from . import manifest as mf
from . import provenance as prov
from .errors import UsageError
from .metrics import METRICS_FILE, read_metrics
from .states import JobState
from .fileio import write_json_atomic
from .task import STDERR, STDOUT

REUSED = "reused.json"  # in a reused attempt's folder: where its outputs came from


def reuse_fingerprint(record: dict, output_dir: str, artifact_root: str) -> str:
    """A digest of what an attempt ran from (see provenance.ran_from) with this root's own
    output folder and artifact root replaced by placeholders in its command, and inputs by
    path, size and modification time (a sha256 one side recorded and the other did not
    does not matter)."""
    argv = [str(item) for item in record.get("argv") or []]
    for path, name in ((str(output_dir).rstrip(os.sep), "{output_dir}"), (str(artifact_root).rstrip(os.sep), "{artifact_root}")):
        if path:  # whole path parts only: root /runs/b is not the start of /runs/behaviours.json
            pattern = re.compile(r"(?<![\w.\-/])" + re.escape(path) + r"(?![\w.\-])")
            argv = [pattern.sub(name, item) for item in argv]
    inputs = {n: None if i is None else {k: i.get(k) for k in ("path", "size", "mtime")}
              for n, i in (record.get("inputs") or {}).items()}  # fmt: skip
    parts = {"argv": argv, "workdir": record.get("workdir"), "options": record.get("options"), "inputs": inputs}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- the sources ----------------------------------------------------------------------------


@dataclass
class Source:
    root: Path
    manifest: dict
    stale: dict[str, list[str]]
    by_fingerprint: dict[str, dict] = field(default_factory=dict)  # reuse fingerprint -> source cell
    by_key: dict[str, dict] = field(default_factory=dict)


def load_sources(roots: Iterable[str | Path], own_root: Path) -> list[Source]:
    """The runs to reuse from, read now; a root without a run, or this root itself, is a UsageError."""
    out = []
    for given in roots:
        root = Path(given).expanduser().resolve()
        if root == Path(own_root).resolve():
            raise UsageError(f"--reuse-from {given}: that is this run's own artifact root")
        manifest = mf.load(root)
        if manifest is None:
            raise UsageError(f"--reuse-from {given}: no {mf.MANIFEST} in {root}; expected the artifact root of an earlier run")
        source = Source(root, manifest, freshness.judge(manifest).stale)
        for cell in manifest["jobs"]:
            source.by_key[cell["key"]] = cell
            last = cell["attempts"][-1] if cell["attempts"] else None
            if cell["state"] == JobState.COMPLETED.value and last is not None and "fingerprint" in last:
                fp = reuse_fingerprint(last, cell["output_dir"], manifest["artifact_root"])
                source.by_fingerprint.setdefault(fp, cell)
        out.append(source)
    return out


def _match(sources: list[Source], cell: dict, fp: str) -> tuple[Source, dict] | None:
    """The source cell computed from the same thing, preferring one of the same key."""
    for source in sources:
        other = source.by_fingerprint.get(fp)
        if other is not None and other["key"] == cell["key"]:
            return source, other
    for source in sources:
        if fp in source.by_fingerprint:
            return source, source.by_fingerprint[fp]
    return None


# --- reuse ----------------------------------------------------------------------------------


def apply(manifest: dict, sources: list[Source], due: list[dict], *, backend: str, workdir: str,
          submission: int | None) -> dict:  # fmt: skip
    """Reuse what ``sources`` computed for the ``due`` cells of ``manifest`` (in place; the
    caller holds this root's lock and saves). Returns the submission's ``reuse`` entry:
    ``from`` (roots), ``reused`` (cell key -> "ROOT CELL attempt N") and ``refused``
    (cell key -> why a matching source cell was not reused)."""
    root = Path(manifest["artifact_root"])
    reused: dict[str, str] = {}
    refused: dict[str, str] = {}
    for cell in due:
        if not cell["argv"]:
            continue
        record = prov.ran_from(cell, workdir)
        hit = _match(sources, cell, reuse_fingerprint(record, cell["output_dir"], manifest["artifact_root"]))
        if hit is None:
            continue
        source, other = hit
        last = other["attempts"][-1]
        where = f"{source.root} {other['key']} attempt {last['attempt']}"
        why = _refusal(source, other, last)
        if why:
            refused[cell["key"]] = f"{where}: {why}"
            continue
        why, outputs = _copy(other, last, cell)
        if why:
            refused[cell["key"]] = f"{where}: {why}"
            continue
        attempt_dir = mf.next_attempt_dir(root, cell)
        attempt_dir.mkdir(parents=True, exist_ok=True)
        for stream, name in (("stdout", STDOUT), ("stderr", STDERR)):  # what the command said when it made them
            if last.get(stream) and (source.root / last[stream]).is_file():
                shutil.copy2(source.root / last[stream], attempt_dir / name)
        origin = {"root": str(source.root), "run_id": source.manifest.get("run_id"), "cell": other["key"],
                  "attempt": last["attempt"], "fingerprint": last.get("fingerprint"), "ended_at": last.get("ended_at"),
                  "elapsed_s": last.get("elapsed_s"), "origin": _origin_submission(source.manifest, last)}  # fmt: skip
        write_json_atomic(attempt_dir / REUSED, {**origin, "at": time.time(), "host": socket.gethostname()})
        rel = attempt_dir.relative_to(root)
        now = time.time()
        mf.add_attempt(cell, {**record, "submission": submission, "backend": backend, "job_id": None,
                              "state": JobState.COMPLETED.value, "submitted_at": now, "ended_at": now, "returncode": 0,
                              "dir": str(rel), "stdout": str(rel / STDOUT), "stderr": str(rel / STDERR),
                              "resources": dict(cell.get("resources") or {}), "reused": origin,
                              "outputs": outputs})  # fmt: skip
        cell["metrics"], cell["metrics_error"], cell["metrics_warning"] = read_metrics(Path(cell["output_dir"]) / METRICS_FILE)
        cell["stale"] = []
        reused[cell["key"]] = where
    return {"from": [str(s.root) for s in sources], "reused": reused, "refused": refused}


def _refusal(source: Source, cell: dict, last: dict) -> str | None:
    """Why a source cell whose fingerprint matches may not be reused, or None. Its files are
    read here, before anything is copied: a size and a time can be put back after an edit, so
    only their content confirms them, and a changed source leaves nothing in this root."""
    if cell["key"] in source.stale:
        return "stale in its run (" + "; ".join(source.stale[cell["key"]]) + ")"
    if "outputs" in last and last["outputs"] is None:
        return "its output folder could not be listed when the attempt ended: nothing to check it against"
    if "sha256" not in (last.get("outputs") or {}):
        return ("its attempt predates content checks (an older gridsubmit recorded its outputs' sizes and times "
                "at most, which an edit can keep): nothing confirms the folder holds what it wrote")  # fmt: skip
    now = prov.outputs_record(cell["output_dir"])
    if now is None:
        return f"its output folder {cell['output_dir']} cannot be read"
    changed = _differences(last["outputs"]["sha256"], now["sha256"])
    return f"its output folder changed since the attempt ended ({changed})" if changed else None


def _copy(other: dict, last: dict, cell: dict) -> tuple[str | None, dict | None]:
    """Copy the source's output folder into the cell's and read the copy back: (why it is not
    what the source attempt wrote, None), or (None, the copy's ``outputs`` record)."""
    src, dst = Path(other["output_dir"]), Path(cell["output_dir"])
    wrote = last["outputs"]["sha256"]
    try:
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, dirs_exist_ok=True, symlinks=True)
    except (OSError, shutil.Error) as exc:
        return _undo(dst, wrote, f"copying {src} to {dst} failed: {exc}")
    copy = prov.outputs_record(dst)
    if copy is None:
        return _undo(dst, wrote, f"its copy {dst} cannot be read")
    # files this root held before are not the source's to confirm
    wrong = _differences(wrote, {name: d for name, d in copy["sha256"].items() if name in wrote})
    if wrong:
        return _undo(dst, wrote, f"the copy is not what the attempt wrote ({wrong})")
    gone = [name for name in cell.get("expected_outputs", []) if not (dst / name).is_file()]
    if gone:
        return _undo(dst, wrote, f"the copy lacks {', '.join(gone)}")
    return None, copy


def _undo(dst: Path, names: Iterable[str], why: str) -> tuple[str, None]:
    """Remove the copied files again, so that the cell's own run does not find them (a log it
    appends to, a reconstruction it does not rewrite); (why, None)."""
    for name in names:
        try:
            os.unlink(dst / name)
        except OSError:
            pass  # never copied
    return why, None


def _differences(wrote: dict, now: dict) -> str:
    """The files whose content differs from what the attempt wrote (relative path -> digest),
    or that are gone, new or unreadable, in a few words; '' when all are as written."""
    kinds = {"content differs": [n for n in wrote if now.get(n) and wrote[n] and now[n] != wrote[n]],
             "cannot be read": [n for n in wrote if n in now and not (now[n] and wrote[n])],
             "gone": [n for n in wrote if n not in now], "added": [n for n in now if n not in wrote]}  # fmt: skip
    return "; ".join(f"{_few(names)}: {kind}" for kind, names in kinds.items() if names)


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _origin_submission(manifest: dict, attempt: dict) -> dict | None:
    """The code and tool versions the source attempt ran with (its submission's), for diff."""
    subs = manifest.get("submissions") or []
    n = attempt.get("submission")
    if isinstance(n, int) and 1 <= n <= len(subs):
        sub = subs[n - 1]
        return {"git": sub.get("git"), "versions": sub.get("versions")}
    return None


def reused_from(cell: dict) -> dict | None:
    """The source of a cell whose last attempt was reused, or None."""
    last = cell["attempts"][-1] if cell.get("attempts") else None
    return last.get("reused") if last else None


def reused_note(cell: dict) -> str:
    """'reused from ROOT (CELL attempt N)' for a reused cell, '' otherwise."""
    origin = reused_from(cell)
    if not origin:
        return ""
    same = "" if origin.get("cell") == cell["key"] else f"{origin.get('cell')} "
    return f"reused from {origin.get('root')} ({same}attempt {origin.get('attempt')})"
