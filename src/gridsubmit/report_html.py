"""One self-contained HTML page for a run (``gridsubmit report --html FILE``), read-only.

The page needs nothing from the network: its CSS is inline and its plot is a PNG embedded as
a ``data:`` URI. Everything taken from the manifest is escaped (the template autoescapes).
The manifest is what :attr:`gridsubmit.api.Run.manifest` returns; any field beyond the cell's
and the attempt's documented ones (``docs/manifest.md``) is optional and shown when present.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shlex
import time
from pathlib import Path

import jinja2

from . import manifest as mf
from . import report
from .reuse import reused_from, reused_note
from .states import JobState
from .errors import UsageError
from .report_defend import defend_sections

# state -> colour class in the template, in the order states are counted in the header;
# a state not listed here is shown uncoloured, after these
STATE_CLASS = {
    "COMPLETED": "ok",
    **dict.fromkeys(("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "LOST"), "bad"),
    "PREEMPTED": "warn",
    "CANCELLED": "off",
    "RUNNING": "running",
    "PENDING": "pending",
    "SUBMITTED": "submitted",
    "PLANNED": "planned",
    "BLOCKED": "blocked",
}
STATE_ORDER = {state: i for i, state in enumerate(STATE_CLASS)}

# an attempt's short facts, in the order shown: (key, label); then the optional ones present
ATTEMPT_FIELDS = (("job_id", "job"), ("backend", "backend"), ("node", "node"), ("gpus", "gpus"),
                  ("returncode", "exit code"), ("elapsed_s", "elapsed (s)"), ("submitted_at", "submitted"),
                  ("started_at", "started"), ("ended_at", "ended"))  # fmt: skip
OPTIONAL_FIELDS = ("max_rss_bytes", "cpu_s", "gpu_name", "gpu_driver", "elapsed", "max_rss", "scheduler_state",
                   "scheduler_exit_code", "accounting", "pending_reason", "interrupted_by", "fingerprint")  # fmt: skip
# what an attempt says of its submission (the full record is listed once, in the page's submissions)
SUBMISSION_SUMMARY = ("at", "user", "host", "git", "versions")
LONG = 240  # characters: a longer value is folded (<details>) where a submission is listed

_env: jinja2.Environment | None = None


def _environment() -> jinja2.Environment:
    global _env
    if _env is None:
        _env = jinja2.Environment(loader=jinja2.PackageLoader("gridsubmit", "templates"), autoescape=True,
                                  undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)  # fmt: skip
    return _env


def render_html(manifest: dict, stale: dict[str, list[str]] | None = None, *, colour_by: str | None = None,
                reference: str | None = None, ledger_book: dict | None = None) -> str:  # fmt: skip
    """The page for ``manifest``; ``stale``: COMPLETED cells whose results no longer hold
    (key -> reasons, as :meth:`gridsubmit.Run.stale` gives them). The metrics table and the
    plot show the cells that contribute (:func:`gridsubmit.report.completeness`). The page opens
    with the models side by side (gridsubmit.compare; ``reference``: differences from that model);
    ``colour_by`` colours the grid by a comparability factor; ``ledger_book``: the GPU-hour ledger
    (default: computed from ``manifest``, projecting the cells that have not ended)."""
    page = _page(manifest, stale or {})
    page.update(defend_sections(manifest, stale or {}, colour_by, reference, ledger_book))
    return _environment().get_template("report.html.j2").render(**page)


def write_html(manifest: dict, path: str | Path, stale: dict[str, list[str]] | None = None, **kw) -> Path:
    """Write :func:`render_html`'s page to ``path`` (UTF-8); return the path."""
    path = Path(path)
    text = render_html(manifest, stale, **kw)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the HTML report: {exc.strerror or exc}") from None
    return path


# --- what the template shows -----------------------------------------------------------------


def _page(manifest: dict, stale: dict[str, list[str]]) -> dict:
    # one view of staleness on the whole page: what the last submit found and what changed since
    manifest = {**manifest, "jobs": [{**c, "stale": stale.get(c["key"], [])} for c in manifest["jobs"]]}
    contributing, incomplete, flagged = report.completeness(manifest, stale)
    shown = report.only(manifest, contributing)
    root = Path(str(manifest.get("artifact_root") or "."))
    jobs = manifest.get("jobs") or []
    ids = _anchors(jobs)
    anchors = {}  # cell key -> the id of its (first) section
    for cell, anchor in zip(jobs, ids):
        anchors.setdefault(cell.get("key"), anchor)
    cluster = manifest.get("cluster") or {}
    context = manifest.get("context") or {}
    counts = mf.counts(manifest)
    counts = dict(sorted(counts.items(), key=lambda kv: STATE_ORDER.get(kv[0], len(STATE_ORDER))))
    versions = manifest.get("versions") or {}
    header = [("run id", manifest.get("run_id")),
              ("study", (manifest.get("study") or {}).get("name")),
              ("backend", " · ".join(str(x) for x in (cluster.get("backend"), cluster.get("name")) if x) or None),
              ("artifact root", manifest.get("artifact_root")),
              ("working directory", context.get("workdir")),
              ("submitted by", "@".join(str(x) for x in (context.get("user"), context.get("host")) if x) or None),
              ("created", _when(manifest.get("created_at"))),
              ("updated", _when(manifest.get("updated_at"))),
              ("versions", _text(versions) if versions else None)]  # fmt: skip
    return {
        "title": f"gridsubmit run {manifest.get('run_id', '')}".strip(),
        "header": [(label, _text(value)) for label, value in header if value not in (None, "")],
        "counts": [{"state": s, "n": n, "cls": _cls(s)} for s, n in counts.items()],
        "n_cells": len(jobs),
        "grid": _grid(jobs, anchors),
        "n_contributing": len(contributing),
        "notes": [str(n) for n in (manifest.get("freshness") or {}).get("notes", [])],
        "incomplete": [{"key": key, "reason": reason, "anchor": anchors.get(key)} for key, reason in incomplete],
        "flagged": [{"key": key, "reason": reason, "anchor": anchors.get(key)} for key, reason in flagged],
        "metrics": {**_metrics(shown, anchors), "none": report.why_no_metrics(incomplete)},
        "plot": _plot(shown, [cell["dose"] for cell in jobs]),  # a dose without a result is marked, not bridged
        "submissions": _submissions(manifest),
        "cells": [_cell(manifest, cell, anchor, root) for cell, anchor in zip(jobs, ids)],
        "generated": _when(time.time()),
    }


def _anchors(jobs: list[dict]) -> list[str]:
    """For each cell, an id unique in the page and usable in a URL fragment (``cell-dose_1000-dense-train``)."""
    out: list[str] = []
    taken: set[str] = set()
    for cell in jobs:
        base = "cell-" + re.sub(r"[^A-Za-z0-9_.]+", "-", str(cell.get("key"))).strip("-")
        anchor, n = base, 1
        while anchor in taken:
            n += 1
            anchor = f"{base}-{n}"
        out.append(anchor)
        taken.add(anchor)
    return out


def _grid(jobs: list[dict], anchors: dict) -> dict:
    """Dose rows × (view, split) columns, axes in the order the cells run."""
    doses = list(dict.fromkeys(c.get("dose") for c in jobs))
    views = list(dict.fromkeys(c.get("view") for c in jobs))
    splits = list(dict.fromkeys(c.get("split") for c in jobs))
    at = {(c.get("dose"), c.get("view"), c.get("split")): c for c in jobs}
    rows = []
    for dose in doses:
        entries = []
        for view in views:
            for split in splits:
                cell = at.get((dose, view, split))
                if cell is None:
                    entries.append(None)
                    continue
                n = len(cell.get("attempts") or [])
                entries.append({"key": cell.get("key"), "state": cell.get("state"), "cls": _cls(cell.get("state")),
                                "anchor": anchors[cell.get("key")], "stale": bool(cell.get("stale")),
                                "reused": bool(reused_from(cell)),
                                "attempts": f"{n} attempt{'s' if n != 1 else ''}" if n else "no attempt"})  # fmt: skip
        rows.append({"dose": dose, "entries": entries})
    return {"views": views, "splits": splits, "rows": rows}


def _metrics(manifest: dict, anchors: dict) -> dict:
    rows = report.metric_rows(manifest)
    metrics, lines = report.metric_grid(rows)
    errors = [{"key": c.get("key"), "anchor": anchors.get(c.get("key")), "error": c["metrics_error"]}
              for c in manifest.get("jobs") or [] if c.get("metrics_error")]  # fmt: skip
    # each value as report's table shows it: amplitude/phase pairs split in two lines, scalars as one
    table = [{"axes": list(key), "values": [report.shown(by[m]).split("/") if m in by else [""] for m in metrics]}
             for key, by in lines.items()]  # fmt: skip
    return {"columns": metrics, "rows": table, "errors": errors}


def _plot(manifest: dict, doses: list[int]) -> dict:
    """{"uri": the PNG as a data URI, "none": None} or {"uri": None, "none": why there is no plot};
    ``doses``: every dose of the grid."""
    try:
        import matplotlib
    except ImportError:
        return {"uri": None, "none": "no plot: matplotlib not installed"}
    buffer = io.BytesIO()
    try:
        with matplotlib.rc_context({"savefig.format": "png"}):
            report.plot(manifest, buffer, doses)  # type: ignore[arg-type]  # savefig takes a file object too
    except UsageError as exc:
        return {"uri": None, "none": f"no plot: {exc}"}
    except Exception as exc:  # a page without its plot beats no page
        return {"uri": None, "none": f"no plot: {type(exc).__name__}: {exc}"}
    return {"uri": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), "none": None}


def _cell(manifest: dict, cell: dict, anchor: str, root: Path) -> dict:
    state = str(cell.get("state") or "?")
    attempts = cell.get("attempts") or []
    last = _last(cell)
    paths = cell.get("inputs") or {}
    identities = last.get("inputs") if isinstance(last.get("inputs"), dict) else {}  # {name: {path, size, mtime, sha256}}
    pointers = cell.get("pointers") or {}
    inputs = []
    for name in dict.fromkeys([*paths, *identities]):
        path = paths.get(name)
        ident = identities.get(name) if isinstance(identities.get(name), dict) else {}
        pointer = pointers.get(name) if isinstance(pointers.get(name), dict) else {}
        inputs.append({
            "name": name,
            "path": "(absent, optional)" if path is None and name in paths else _text(path),
            "seen": _text(ident["path"]) if ident.get("path") not in (None, path) else "",
            "size": _size(ident.get("size")),
            "bytes": f"{ident['size']:,} bytes" if _is_int(ident.get("size")) else "",
            "mtime": _when(ident.get("mtime")) or "",
            "sha256": _text(ident["sha256"]) if ident.get("sha256") else "",
            "via": f"{pointer.get('file')} → {pointer.get('field')}" if pointer.get("file") else "",
        })
    argv = cell.get("argv") or []
    failed = state != JobState.COMPLETED and bool(last)
    identity_columns = [c for c in ("size", "mtime", "sha256") if any(i[c] for i in inputs)]
    return {
        "key": cell.get("key"),
        "anchor": anchor,
        "state": state,
        "cls": _cls(state),
        "command": shlex.join(str(a) for a in argv) if argv else "",
        "workdir": _text((manifest.get("context") or {}).get("workdir")),
        "output_dir": _text(cell.get("output_dir")),
        "inputs": inputs,
        "identity_columns": identity_columns,
        "missing": [str(m) for m in cell.get("missing") or []],
        "stale": [str(s) for s in cell.get("stale") or []] if isinstance(cell.get("stale"), list) else [],
        "reused": reused_note(cell) if attempts else "",
        "metrics_error": _text(cell.get("metrics_error")) if cell.get("metrics_error") else "",
        "cancel": "cancel requested" if cell.get("cancel_requested") else "",
        # a failed cell's last logs are shown once, beside its stderr tail
        "attempts": [_attempt(manifest, a, root, logs=not (failed and i == len(attempts) - 1)) for i, a in enumerate(attempts)],
        "stderr_tail": (last.get("stderr_tail") or "") if failed else "",
        "logs": [(what, str(root / str(last[what]))) for what in ("stdout", "stderr") if last.get(what)] if failed else [],
    }


def _attempt(manifest: dict, attempt: dict, root: Path, logs: bool = True) -> dict:
    facts = [(label, "none visible" if key == "gpus" and attempt[key] == "" else _fact(key, attempt[key]))
             for key, label in ATTEMPT_FIELDS if attempt.get(key) is not None and (attempt[key] != "" or key == "gpus")]  # fmt: skip
    facts += [(key, _fact(key, attempt[key])) for key in OPTIONAL_FIELDS if attempt.get(key) not in (None, "", [], {})]
    if report.pack_text(attempt):  # its scheduler figures are the whole job's, not this cell's
        facts.append(("pack", report.pack_text(attempt)))
    if isinstance(attempt.get("reused"), dict):  # not run: copied from another run
        origin = attempt["reused"]
        facts.append(("reused", f"from {origin.get('root')} ({origin.get('cell')} attempt {origin.get('attempt')})"))
    lines = [("error", _text(attempt["error"]))] if attempt.get("error") else []
    if logs:
        lines += [(what, str(root / str(attempt[what]))) for what in ("stdout", "stderr") if attempt.get(what)]
    submission = None
    n = attempt.get("submission")
    if n is not None:
        record = _submission(manifest, n)
        summary = []
        for key in SUBMISSION_SUMMARY if record else ():
            if key in record:
                summary.append((key, _git(record[key]) if key == "git" else _fact(key, record[key])))
        submission = {"n": _text(n), "anchor": f"submission-{n}" if record else None, "summary": summary}
    return {"n": attempt.get("attempt", "?"), "state": attempt.get("state") or "?", "cls": _cls(attempt.get("state")),
            "facts": facts, "lines": lines, "submission": submission}  # fmt: skip


def _submission(manifest: dict, n) -> dict | None:
    """``manifest["submissions"][n - 1]``, or None when there is no such record."""
    submissions = manifest.get("submissions")
    if _is_int(n) and isinstance(submissions, list) and 0 < n <= len(submissions) and isinstance(submissions[n - 1], dict):
        return submissions[n - 1]
    return None


def _submissions(manifest: dict) -> list[dict]:
    """Every submission record, each key shown generically (``git`` as commit and dirtiness)."""
    out = []
    for n, record in enumerate(manifest.get("submissions") or [], 1):
        if not isinstance(record, dict):
            continue
        facts = []
        for key, value in record.items():
            text = _git(value) if key == "git" else _fact(str(key), value)
            facts.append({"label": str(key), "text": text, "long": len(text) > LONG,
                          "short": f"{len(value)} items" if isinstance(value, (list, dict)) else text[:LONG] + " …"})  # fmt: skip
        out.append({"n": n, "anchor": f"submission-{n}", "facts": facts})
    return out


def _git(value) -> str:
    if isinstance(value, dict) and "commit" in value:
        rest = {k: v for k, v in value.items() if k not in ("commit", "dirty")}
        text = f"{value['commit']}" + (" (dirty)" if value.get("dirty") else " (clean)" if value.get("dirty") is False else "")
        return text + (f"; {_text(rest)}" if rest else "")
    return "none (not in a git repository, or git missing)" if value is None else _text(value)


# --- formatting ------------------------------------------------------------------------------


def _last(cell: dict) -> dict:
    attempts = cell.get("attempts") or []
    return attempts[-1] if attempts and isinstance(attempts[-1], dict) else {}


def _cls(state) -> str:
    return STATE_CLASS.get(str(state), "other")


def _when(value) -> str | None:
    """Epoch seconds as local time (``2026-03-01 14:03:07 CET``); anything else as text."""
    if isinstance(value, bool) or value is None:
        return None if value is None else str(value)
    if isinstance(value, (int, float)):
        try:
            return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(value)).strip()
        except (OverflowError, OSError, ValueError):
            return str(value)
    return str(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _size(value) -> str:
    if not _is_int(value):
        return "" if value is None else str(value)
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} B"


def _fact(key: str, value) -> str:
    if key.endswith("_at") or key in ("at", "mtime"):
        return _when(value) or "—"
    if key == "max_rss_bytes" and _is_int(value):
        return _size(value)
    if key in ("elapsed_s", "cpu_s") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.3g}" if value < 10 else f"{value:.1f}"
    return _text(value)


def _text(value) -> str:
    """Any JSON value as one line: mappings as ``k: v, …`` (nested ones too), lists joined."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}: ({_text(v)})" if isinstance(v, dict) and v else f"{k}: {_fact(str(k), v)}"
                         for k, v in value.items()) or "—"  # fmt: skip
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value) or "—"
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)
