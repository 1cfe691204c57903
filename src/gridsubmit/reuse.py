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
  the runner records ``outputs``: the number of files in its output folder, their bytes and a
  digest of every file's relative path, size and modification time (:func:`provenance.outputs_record`;
  ``stat`` only, nothing is read). The source folder is listed again before and after the
  copy; any difference (a file added, removed, rewritten or touched) refuses the reuse, and
  so does an attempt without that record (written by an older gridsubmit);
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
        why = _copy(source, other, last, cell)
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
                              "outputs": prov.outputs_record(cell["output_dir"])})  # fmt: skip
        cell["metrics"], cell["metrics_error"], cell["metrics_warning"] = read_metrics(Path(cell["output_dir"]) / METRICS_FILE)
        cell["stale"] = []
        reused[cell["key"]] = where
    return {"from": [str(s.root) for s in sources], "reused": reused, "refused": refused}


def _refusal(source: Source, cell: dict, last: dict) -> str | None:
    """Why a source cell whose fingerprint matches may not be reused, or None."""
    if cell["key"] in source.stale:
        return "stale in its run (" + "; ".join(source.stale[cell["key"]]) + ")"
    recorded = last.get("outputs")
    if not recorded:
        return "its attempt recorded no listing of its output folder to check a copy against"
    now = prov.outputs_record(cell["output_dir"])
    if now is None:
        return f"its output folder {cell['output_dir']} cannot be read"
    if now["digest"] != recorded.get("digest"):
        return (f"its output folder changed since the attempt ended ({recorded.get('files')} files, {recorded.get('bytes')} "
                f"bytes then; {now['files']} files, {now['bytes']} bytes now, or a file rewritten or touched)")  # fmt: skip
    return None


def _copy(source: Source, other: dict, last: dict, cell: dict) -> str | None:
    """Copy the source's output folder into the cell's; why it failed, or None."""
    src, dst = Path(other["output_dir"]), Path(cell["output_dir"])
    try:
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, dirs_exist_ok=True, symlinks=True)
    except (OSError, shutil.Error) as exc:
        return f"copying {src} to {dst} failed: {exc}"
    after = prov.outputs_record(src)
    if after is None or after["digest"] != (last.get("outputs") or {}).get("digest"):
        return "its output folder changed while it was copied"
    gone = [name for name in cell.get("expected_outputs", []) if not (dst / name).is_file()]
    if gone:
        return f"the copy lacks {', '.join(gone)}"
    return None


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
