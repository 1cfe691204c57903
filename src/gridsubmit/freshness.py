"""Is a COMPLETED cell still what the study plans? One judgement, read by every view.

A cell is *fresh* while its last attempt's record (argv, working directory, options, input
identities; see provenance) matches what the study plans now; otherwise it is *stale*, for
named reasons. "Now" is the study file recorded at the last submit when it has changed on
disk since (read again and planned again, without writing anything), else the plan that
submit recorded, with the inputs as they are on disk now. ``status`` (table and ``--json``),
``report`` (text, CSV, HTML, ``--require-complete``), ``diff`` and the Python API all take
their verdict from :func:`judge`, so they never disagree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from . import provenance as prov
from .codehash import Now
from .errors import ConfigError, UsageError
from .fileio import file_digest
from .states import JobState

_COMPLETED = JobState.COMPLETED.value


@dataclass
class Freshness:
    stale: dict[str, list[str]] = field(default_factory=dict)  # COMPLETED cell key -> reasons
    notes: list[str] = field(default_factory=list)  # about the run as a whole (the study file changed, ...)


def study_file_record(study) -> dict | None:
    """What ``submit`` records of a study read from a file, to notice later edits: its
    absolute path (status and report run from anywhere), content digest and the roots given
    beside it (``--phase-c-root`` ..., absolute already)."""
    if not study.digest:
        return None
    return {"path": os.path.abspath(study.source), "sha256": study.digest,
            "roots": {k: str(v) for k, v in study.given_roots.items()}}  # fmt: skip


def judge(manifest: dict) -> Freshness:
    """Which COMPLETED cells of ``manifest`` are stale now, and why."""
    out = Freshness()
    plans = _replanned(manifest, out.notes)
    workdir = str((manifest.get("context") or {}).get("workdir") or "")
    hasher = prov.Hasher()
    code = Now.of(manifest)
    for cell in manifest["jobs"]:
        last = prov.judged(cell)
        if last is None:
            continue
        plan = plans.get(cell["key"], cell) if plans is not None else cell
        why = reasons(last, plan, workdir or last.get("workdir"), hasher, code)
        if why:
            out.stale[cell["key"]] = why
    if plans is not None:
        _summarise(manifest, plans, out)
    return out


def reasons(last: dict, plan: dict, workdir: str, hasher: prov.Hasher | None = None, code: Now | None = None) -> list[str]:
    """Why the attempt ``last`` no longer matches ``plan`` (a cell's argv, options and input
    paths) run in ``workdir`` with its inputs (and ``code``, the script and code_paths) as they
    are on disk now; empty when it does."""
    sought = plan.get("sought") or {}  # an absent optional input that is there now has appeared
    inputs = {name: prov.identity(path) if path is not None else
              prov.identity(sought[name]) if name in sought and os.path.exists(sought[name]) else None
              for name, path in plan["inputs"].items()}  # fmt: skip
    now = {"argv": list(plan["argv"] or last.get("argv") or []), "workdir": str(workdir), "options": plan["options"],
           "inputs": inputs}
    return prov.changes(last, now, hasher, code)


def _replanned(manifest: dict, notes: list[str]) -> dict[str, dict] | None:
    """The cells as the study file plans them now, when it changed since the last submit
    (key -> argv, options, inputs); None when it did not change or cannot be read."""
    record = manifest.get("study_file")
    if not record:
        return None
    path = Path(record["path"])
    if not path.is_absolute():  # recorded as typed by an older gridsubmit: from where it ran
        path = Path((manifest.get("context") or {}).get("workdir") or manifest["artifact_root"]) / path
    digest = file_digest(path)
    if digest is None:
        notes.append(f"study file {path} is gone; cells are judged against the plan of the last submit")
        return None
    if digest == record["sha256"]:
        return None
    from .cluster import parse_profile  # planning again needs the study and cluster layers
    from .study import Filters, load_study, plan

    try:
        study = load_study(path, record.get("roots") or {})
        filters = manifest.get("filters") or {}
        profile = parse_profile({k: v for k, v in manifest["cluster"].items() if k != "source"}, manifest["cluster"]["source"])
        grid = plan(study, manifest["artifact_root"], Filters(tuple(filters.get("dose", ())), tuple(filters.get("view", ())),
                    tuple(filters.get("split", ()))), python=profile.python, workdir=(manifest.get("context") or {}).get("workdir"))  # fmt: skip
    except (ConfigError, UsageError) as exc:
        notes.append(f"study file {path} changed since the last submit and cannot be planned now ({exc}); "
                     "cells are judged against the plan of the last submit")  # fmt: skip
        return None
    return {str(job.key): {"argv": list(job.argv), "options": dict(job.options), "sought": {n: str(p) for n, p in job.sought.items()},
                           "inputs": {n: None if p is None else str(p) for n, p in job.inputs.items()}} for job in grid.jobs}  # fmt: skip


def _summarise(manifest: dict, plans: dict[str, dict], out: Freshness) -> None:
    """One note on what the edited study file would change, by reason."""
    path = manifest["study_file"]["path"]
    by_reason: dict[str, int] = {}
    for reasons in out.stale.values():
        for why in reasons:
            by_reason[why] = by_reason.get(why, 0) + 1
    keys = {cell["key"] for cell in manifest["jobs"]}
    added = [k for k in plans if k not in keys]
    dropped = [k for k in keys if k not in plans]
    parts = [f"{n} cell(s) would run with {why}" for why, n in by_reason.items()]
    if added:
        parts.append(f"{len(added)} cell(s) it plans have not run here (`gridsubmit submit` runs them)")
    if dropped:
        parts.append(f"{len(dropped)} cell(s) here are no longer in it")
    out.notes.append(f"study file {path} changed since the last submit: " + ("; ".join(parts) if parts else "no cell would change"))


def with_verdict(manifest: dict, verdict: Freshness) -> dict:
    """``manifest`` (not changed) with each COMPLETED cell's ``stale`` reasons as judged now
    and the run's ``freshness`` notes."""
    out = dict(manifest)
    out["jobs"] = [{**cell, "stale": list(verdict.stale.get(cell["key"], []))} if cell["state"] == _COMPLETED or cell.get("stale")
                   else cell for cell in manifest["jobs"]]  # fmt: skip
    out["freshness"] = {"notes": list(verdict.notes)}
    return out
