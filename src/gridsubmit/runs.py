"""All runs at a glance: the artifact roots under a folder, one line each (read-only).

An artifact root is a folder holding ``comparison_manifest.json``. :func:`find_roots` looks in
the folder itself and in folders up to ``DEPTH`` levels below it, never inside an artifact
root (its ``logs/`` and output folders hold no other runs), nor in hidden folders (``.git``,
``.venv``, ``.gridsubmit``) or folders it cannot read (skipped, and counted). For each root
only its manifest and ``.gridsubmit/holder.json`` are read, and what :func:`freshness.judge`
reads to tell its stale cells (as ``status`` does): no attempt's files.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import freshness
from . import manifest as mf
from .errors import UsageError
from .progress import format_counts
from .provenance import local_time
from .runlock import holder

DEPTH = 3  # DIR, DIR/a, DIR/a/b and DIR/a/b/c are looked in


def find_roots(folder: str | Path, depth: int = DEPTH) -> tuple[list[Path], list[str]]:
    """(artifact roots under ``folder``, sorted; folders that could not be read)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder")
    roots: list[Path] = []
    unreadable: list[str] = []

    def visit(here: Path, level: int) -> None:
        try:
            with os.scandir(here) as it:
                entries = list(it)
        except OSError as exc:
            unreadable.append(f"{here}: {exc.strerror or exc}")
            return
        if any(e.name == mf.MANIFEST and e.is_file() for e in entries):
            roots.append(here)
            return
        if level >= depth:
            return
        for entry in sorted(entries, key=lambda e: e.name):
            try:
                if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                    continue
            except OSError:
                continue
            visit(Path(entry.path), level + 1)

    visit(folder, 0)
    return roots, unreadable


def gpu_hours(manifest: dict) -> float | None:
    """The run's GPU-hours from its ledger (``ledger.gpu_hours``); None without one."""
    ledger = manifest.get("ledger")
    if isinstance(ledger, dict):
        for key in ("gpu_hours", "total_gpu_hours"):
            value = ledger.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
    return None


def describe(root: Path, base: Path) -> dict:
    """One root's line: study, backend, created, last update, cells by state, the COMPLETED
    ones that are stale (judged now, as ``status`` does), runner, GPU-hours. A manifest that
    cannot be read gives a line with its ``error``."""
    shown = os.path.relpath(root, base) if root != base else "."
    try:
        manifest = mf.load(root)
    except UsageError as exc:
        return {"root": shown, "path": str(root), "error": str(exc)}
    if manifest is None:  # removed meanwhile
        return {"root": shown, "path": str(root), "error": "no manifest"}
    counts = mf.counts(manifest)
    who = holder(root)
    return {
        "root": shown,
        "path": str(root),
        "run_id": manifest.get("run_id"),
        "study": (manifest.get("study") or {}).get("name"),
        "backend": (manifest.get("cluster") or {}).get("backend"),
        "created_at": manifest.get("created_at"),
        "updated_at": manifest.get("updated_at"),
        "cells": len(manifest["jobs"]),
        "counts": counts,
        "stale": len(freshness.judge(manifest).stale),
        "finished": mf.finished(manifest),
        "runner": None if who is None else {k: who.get(k) for k in ("pid", "host", "command", "since")},
        "gpu_hours": gpu_hours(manifest),
    }


def list_runs(folder: str | Path = ".", depth: int = DEPTH) -> dict:
    """``{"folder", "runs": [describe(...) per root], "unreadable": [...]}``."""
    base = Path(folder).expanduser().resolve()
    roots, unreadable = find_roots(base, depth)
    return {"folder": str(base), "depth": depth, "runs": [describe(root, base) for root in roots], "unreadable": unreadable}


def runs_table(listing: dict) -> str:
    from .report import table

    rows = []
    for run in listing["runs"]:
        if "error" in run:
            rows.append([run["root"], "?", "?", "", "", "", "", "", f"unreadable: {run['error']}"])
            continue
        runner = run["runner"]
        rows.append([run["root"], run["study"] or "?", run["backend"] or "?", local_time(run["created_at"]),
                     local_time(run["updated_at"]), run["cells"],
                     (format_counts(run["counts"]) or "-") + (f" ({run['stale']} stale)" if run["stale"] else ""),
                     "-" if run["gpu_hours"] is None else f"{run['gpu_hours']:.2f}",
                     f"{runner.get('command', '?')} pid {runner.get('pid', '?')}@{runner.get('host', '?')}" if runner
                     else "-"])  # fmt: skip
    text = table(["root", "study", "backend", "created", "updated", "cells", "states", "gpu_h", "runner"], rows) if rows \
        else f"no artifact roots in {listing['folder']} (looked {listing['depth']} levels deep)"
    for line in listing["unreadable"]:
        text += f"\nskipped (unreadable): {line}"
    return text
