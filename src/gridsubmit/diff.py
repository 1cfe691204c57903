"""Compare two runs cell by cell: what each cell ran from, and how its metrics moved.

Pure functions on two manifests as :attr:`gridsubmit.api.Run.manifest` returns them (nothing
on disk is read, apart from :func:`write_diff_csv` writing its file):

* :func:`diff_runs` pairs the cells of run A and run B by key and, for each cell in both,
  lists the differences in what its **last attempt** ran from (inputs, command, options,
  working directory, code version, tool versions) and the metric deltas (B - A);
* :func:`diff_text` renders that as a readable report, :func:`write_diff_csv` as one CSV row
  per cell x model x metric.

Two runs live in two artifact roots and often read their inputs from two copies of a study,
so paths are never compared as they are: an input is the same when its file name, size and
(when both runs recorded it) sha256 agree, wherever it lies; the command is compared with the
artifact root, the inputs and their folders replaced by placeholders. Timings
(``computation_time_s``) move from run to run by themselves: their deltas are reported, but do
not make a cell count as changed. See docs/diff.md.
"""

from __future__ import annotations

import csv
import difflib
import os
import re
import shlex
from pathlib import Path
from typing import Any, Iterable

from . import report
from .errors import UsageError
from .metrics import tidy_records
from .states import JobState

AMOUNTS = ("amplitude", "phase", "value")
TIMINGS = ("computation_time_s",)  # measured anew by every run: reported, never counted as a change
CSV_FIELDS = ("dose", "view", "split", "model", "metric",
              "a_amplitude", "b_amplitude", "d_amplitude", "a_phase", "b_phase", "d_phase",
              "a_value", "b_value", "d_value")  # fmt: skip
HASH_HINT = "content unknown: --hash-inputs records sha256"


# --- the diff ----------------------------------------------------------------------------------


def diff_runs(a: dict, b: dict, *, timings: Iterable[str] = TIMINGS) -> dict:
    """Run A against run B (JSON-ready): ``a``/``b`` (run_id, artifact_root), ``only_in_a``,
    ``only_in_b`` (cell keys), ``not_finished_a``/``not_finished_b`` (keys of the cells in both
    that have not ended in that run: not compared), ``cells`` (every other cell in both, in run
    A's order: key, dose, view, split, state_a, state_b, ``provenance`` differences, ``metrics``
    deltas, ``changed``), ``summary`` (counts), ``warnings`` (a run not finished, A and B the
    same run) and ``notes`` (what could not be compared). Deltas are B - A, null
    when either side has no value. A cell is ``changed`` when its provenance differs, any
    metric not in ``timings`` differs (a non-zero delta, or a value on one side only), or its
    state differs."""
    timings = frozenset(timings)
    side_a, side_b = _Side(a, "A"), _Side(b, "B")
    cells_a = {c["key"]: c for c in a.get("jobs") or []}
    cells_b = {c["key"]: c for c in b.get("jobs") or []}
    notes: list[str] = []
    cells = []
    going = {"a": _not_ended(a), "b": _not_ended(b)}  # cells that may still change: not compared
    for key, ca in cells_a.items():
        if key not in cells_b or key in going["a"] or key in going["b"]:
            continue
        cb = cells_b[key]
        prov = _provenance(side_a.ran_from(ca), side_b.ran_from(cb), notes)
        reused = _reused_pair(a, ca, b, cb)
        if reused:  # one is a copy of the other's result: what it ran from is its source's
            prov = []
        metrics = _metric_deltas(ca, cb, timings)
        state_a, state_b = ca.get("state"), cb.get("state")
        changed = bool(prov) or state_a != state_b or any(m["differs"] and not m["timing"] for m in metrics)
        cells.append({"key": key, "dose": ca.get("dose"), "view": ca.get("view"), "split": ca.get("split"),
                      "state_a": state_a, "state_b": state_b, "changed": changed,
                      "provenance": prov, "metrics": metrics, **({"reused": reused} if reused else {})})  # fmt: skip
    only_a = [k for k in cells_a if k not in cells_b]
    only_b = [k for k in cells_b if k not in cells_a]
    unfinished = {side: [k for k in going[side] if k in cells_a and k in cells_b] for side in going}
    n_changed = sum(c["changed"] for c in cells)
    warnings = []
    for side, manifest in (("a", a), ("b", b)):
        if going[side]:
            states = {}
            for cell in manifest.get("jobs") or []:
                if cell["key"] in going[side]:
                    states[cell.get("state")] = states.get(cell.get("state"), 0) + 1
            warnings.append(f"run {side.upper()} is not finished: {len(going[side])} of {_cells(manifest.get('jobs') or [])} "
                            f"have not ended ({', '.join(f'{s} {n}' for s, n in states.items())}); they are not compared")  # fmt: skip
    same = _same_run(a, b)
    if same:
        warnings.append(f"A and B are the same run ({same}): each cell is compared with itself, so nothing can differ, "
                        "not even the code it ran from; `gridsubmit status ROOT CELL` shows each attempt's submission")  # fmt: skip
    return {
        "a": side_a.header(),
        "b": side_b.header(),
        "only_in_a": only_a,
        "only_in_b": only_b,
        "not_finished_a": unfinished["a"],
        "not_finished_b": unfinished["b"],
        "cells": cells,
        "summary": {"cells": len(cells), "changed": n_changed, "identical": len(cells) - n_changed,
                    "only_in_a": len(only_a), "only_in_b": len(only_b),
                    "not_finished_a": len(unfinished["a"]), "not_finished_b": len(unfinished["b"])},  # fmt: skip
        "warnings": warnings,
        "notes": [] if same else side_a.notes() + side_b.notes() + list(dict.fromkeys(notes)),
    }


def _reused_pair(a: dict, ca: dict, b: dict, cb: dict) -> str | None:
    """"B reused A" (or "A reused B") when one cell's last attempt is a copy of the other's
    last attempt (``submit --reuse-from``), else None."""
    for (x, cx, nx), (y, cy, ny) in (((b, cb, "B"), (a, ca, "A")), ((a, ca, "A"), (b, cb, "B"))):
        last_x = (cx.get("attempts") or [{}])[-1]
        last_y = (cy.get("attempts") or [{}])[-1]
        origin = last_x.get("reused")
        if isinstance(origin, dict) and y.get("artifact_root") and origin.get("root") == y.get("artifact_root") \
                and origin.get("cell") == cy.get("key") and origin.get("attempt") == last_y.get("attempt"):
            return f"{nx} reused {ny}"
    return None


def _not_ended(manifest: dict) -> list[str]:
    """Keys of the cells that have not ended: queued, running, or not submitted yet."""
    return [c["key"] for c in manifest.get("jobs") or [] if not JobState(c.get("state")).terminal]


def _same_run(a: dict, b: dict) -> str | None:
    """How A and B are one run (the same artifact root, or a copy with the same run id), or None."""
    if a.get("artifact_root") and a.get("artifact_root") == b.get("artifact_root"):
        return f"run {a.get('run_id')}, artifact root {a['artifact_root']}"
    if a.get("run_id") and a.get("run_id") == b.get("run_id"):
        return f"run id {a['run_id']} in both {a.get('artifact_root')} and {b.get('artifact_root')}: one is a copy of the other"
    return None


class _Side:
    """One run: what each of its cells ran from, and how to take its own paths out of a command."""

    def __init__(self, manifest: dict, name: str):
        self.manifest, self.name = manifest, name
        self.root = manifest.get("artifact_root")
        self.submissions = manifest.get("submissions") or []
        self.unrecorded: list[str] = []  # cells whose last attempt holds no record of what it ran from
        self.no_submission: list[str] = []
        records = [self._record(cell) for cell in manifest.get("jobs") or []]
        folders = {os.path.dirname(i["path"]) for r in records for i in r["inputs"].values() if i and i.get("path")}
        try:
            common = os.path.commonpath(sorted(folders)) if folders else None
        except ValueError:  # relative and absolute paths mixed
            common = None
        self.inputs_root = common if common and common != os.sep else None

    def header(self) -> dict:
        return {"run_id": self.manifest.get("run_id"), "artifact_root": self.root}

    def _record(self, cell: dict) -> dict:
        attempts = cell.get("attempts") or []
        last = attempts[-1] if attempts else {}
        argv = last.get("argv") if last.get("argv") is not None else cell.get("argv") or []
        inputs = last.get("inputs")
        if not isinstance(inputs, dict):  # older attempts (or none yet): the planned input paths, without sizes
            inputs = cell.get("inputs") or {}
        inputs = {n: {"path": i} if isinstance(i, str) else i if isinstance(i, dict) else None for n, i in inputs.items()}
        sub, index = None, last.get("submission")
        if isinstance(index, int) and 1 <= index <= len(self.submissions):
            sub = self.submissions[index - 1]
        if isinstance(last.get("reused"), dict) and isinstance(last["reused"].get("origin"), dict):
            sub = last["reused"]["origin"]  # a copy of another run's result: that run's code made it
        return {"argv": list(argv), "command": last.get("command") or shlex.join(argv),
                "workdir": last.get("workdir") or (self.manifest.get("context") or {}).get("workdir"),
                "options": dict(last.get("options") if last.get("options") is not None else cell.get("options") or {}),
                "inputs": inputs, "submission": sub, "recorded": "inputs" in last and "argv" in last}  # fmt: skip

    def ran_from(self, cell: dict) -> dict:
        record = self._record(cell)
        if not record["recorded"]:
            self.unrecorded.append(cell["key"])
        if record["submission"] is None:
            self.no_submission.append(cell["key"])
        record.update(side=self, normalised=self.normalise(record))
        return record

    def normalise(self, record: dict) -> list[str]:
        """The argv with this run's artifact root, input paths, input folders and the folder
        holding all its inputs replaced by placeholders (longest first, whole path parts only)."""
        subs: dict[str, str] = {}
        if self.root:
            subs[str(self.root).rstrip(os.sep)] = "<artifact_root>"
        for name, ident in sorted(record["inputs"].items()):
            if ident and ident.get("path"):
                subs.setdefault(ident["path"], f"<{name}>")
                subs.setdefault(os.path.dirname(ident["path"]), f"<folder of {name}>")
        if self.inputs_root:
            subs.setdefault(self.inputs_root, "<inputs>")
        paths = sorted((p for p in subs if p and p != os.sep), key=len, reverse=True)
        if not paths:
            return list(record["argv"])
        pattern = re.compile(r"(?<![\w.\-/])(?:" + "|".join(map(re.escape, paths)) + r")(?![\w.\-])")
        return [pattern.sub(lambda m: subs[m.group(0)], str(item)) for item in record["argv"]]

    def notes(self) -> list[str]:
        out = []
        if self.unrecorded:
            out.append(f"run {self.name}: {_cells(self.unrecorded)} without a record of what their last attempt ran from "
                       "(never run, or run by an older gridsubmit): compared by their planned command and input "
                       "file names")  # fmt: skip
        if self.no_submission:
            out.append(f"run {self.name}: {_cells(self.no_submission)} without a submission record: code version "
                       "not compared; tool versions are the run's")  # fmt: skip
        return out


def _cells(keys: list[str]) -> str:
    return f"{len(keys)} cell{'s' if len(keys) != 1 else ''}"


def _entry(what: str, a: Any, b: Any, detail: str) -> dict:
    return {"what": what, "a": a, "b": b, "detail": detail}


def _provenance(ra: dict, rb: dict, notes: list[str]) -> list[dict]:
    """What differs between the records two last attempts ran from (see docs/diff.md)."""
    out = []
    names = list(dict.fromkeys([*ra["inputs"], *rb["inputs"]]))
    for name in names:
        entry = _input_diff(name, ra["inputs"].get(name), rb["inputs"].get(name))
        if entry:
            out.append(entry)
    oa, ob = ra["options"], rb["options"]
    options = []
    for name in dict.fromkeys([*oa, *ob]):
        if name not in ob or name not in oa:
            value = oa[name] if name in oa else ob[name]
            where = "A" if name in oa else "B"
            options.append(_entry(f"option {name}", oa.get(name), ob.get(name), f"set only in run {where}: {value!r}"))
        elif not _same(oa[name], ob[name]):
            options.append(_entry(f"option {name}", oa[name], ob[name], f"{oa[name]!r} -> {ob[name]!r}"))
    out += options
    # an option is passed on the command line: when one differs, so does the command, and
    # that difference is the option's
    if not options and ra["normalised"] != rb["normalised"]:
        out.append(_entry("command", ra["command"], rb["command"], _token_changes(ra["normalised"], rb["normalised"])))
    if ra["workdir"] and rb["workdir"] and ra["workdir"] != rb["workdir"]:
        out.append(_entry("workdir", ra["workdir"], rb["workdir"], f"{ra['workdir']} -> {rb['workdir']}"))
    sa, sb = ra["submission"], rb["submission"]
    if sa is not None and sb is not None and "git" in sa and "git" in sb:
        ga, gb = sa["git"], sb["git"]
        if _code_differs(ga, gb):
            out.append(_entry("code version", _git(ga), _git(gb), f"{_code(ga)} -> {_code(gb)}"))
        elif ga and gb and ga.get("dirty") and gb.get("dirty"):
            notes.append(f"both runs ran from commit {ga['commit'][:12]} with uncommitted changes: the code may differ "
                         "between them although the commit is the same")  # fmt: skip
    va = (sa or {}).get("versions") or ra["side"].manifest.get("versions") or {}
    vb = (sb or {}).get("versions") or rb["side"].manifest.get("versions") or {}
    for name in dict.fromkeys([*va, *vb]):
        if name in va and name in vb and va[name] != vb[name]:
            out.append(_entry(f"version {name}", va[name], vb[name], f"{va[name]} -> {vb[name]}"))
    return out


def _input_diff(name: str, x: dict | None, y: dict | None) -> dict | None:
    """An input is the same when its file name, size and (when both have it) sha256 agree;
    the folder it lies in does not count. Equal sizes without hashes and different mtimes are
    reported as such: the content may or may not differ."""
    what = f"input {name}"
    if x is None and y is None:
        return None
    if x is None or y is None:
        present = x or y
        return _entry(what, x, y, f"absent in run {'A' if x is None else 'B'}; run {'B' if x is None else 'A'} "
                                  f"read {os.path.basename(present.get('path') or '?')}")  # fmt: skip
    reasons = []
    fa, fb = os.path.basename(x.get("path") or ""), os.path.basename(y.get("path") or "")
    if fa != fb:
        reasons.append(f"file {fa} -> {fb}")
    sa, sb = x.get("size", "?"), y.get("size", "?")  # "?": not recorded; None: the file was not there
    if "?" not in (sa, sb) and sa != sb:
        reasons.append("size " + " -> ".join("missing" if s is None else f"{s} bytes" for s in (sa, sb)))
    ha, hb = x.get("sha256"), y.get("sha256")
    if ha and hb and ha != hb:
        reasons.append(f"sha256 {ha[:12]} -> {hb[:12]}")
    if reasons:
        return _entry(what, x, y, ", ".join(reasons))
    if ha and hb:
        return None  # same content, wherever and whenever it was written
    ma, mb = x.get("mtime"), y.get("mtime")
    if sa == sb and sa not in (None, "?") and ma is not None and mb is not None and ma != mb:
        return _entry(what, x, y, f"same size, modified at different times ({HASH_HINT})")
    return None


def _token_changes(a: list[str], b: list[str]) -> str:
    parts = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op != "equal":
            parts.append(f"{shlex.join(a[i1:i2]) or '(nothing)'} -> {shlex.join(b[j1:j2]) or '(nothing)'}")
    return "; ".join(parts) + " (paths of each run's own artifact root and inputs left out)"


def _same(x: Any, y: Any) -> bool:
    """Equal values; 1 and 1.0 are the same option value, True and 1 are not."""
    return x == y and isinstance(x, bool) == isinstance(y, bool)


def _code_differs(ga: dict | None, gb: dict | None) -> bool:
    """Another commit, or the same one with and without uncommitted changes (when both know)."""
    if ga is None or gb is None:
        return (ga is None) != (gb is None)
    if ga.get("commit") != gb.get("commit"):
        return True
    return ga.get("dirty") is not None and gb.get("dirty") is not None and ga["dirty"] != gb["dirty"]


def _git(git: dict | None) -> dict | None:
    return None if git is None else {"commit": git.get("commit"), "dirty": git.get("dirty")}


def _code(git: dict | None) -> str:
    if not git:
        return "not in a git repository"
    return f"{(git.get('commit') or '?')[:12]}{' (uncommitted changes)' if git.get('dirty') else ''}"


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _metric_deltas(ca: dict, cb: dict, timings: frozenset) -> list[dict]:
    """One entry per model x metric in either cell (run A's order, then B's new ones)."""
    rows_a, rows_b = _by_metric(ca), _by_metric(cb)
    out = []
    for key in dict.fromkeys([*rows_a, *rows_b]):
        ra, rb = rows_a.get(key, {}), rows_b.get(key, {})
        entry: dict[str, Any] = {"model": key[0], "metric": key[1]}
        differs = False
        for amount in AMOUNTS:
            x, y = _number(ra.get(amount)), _number(rb.get(amount))
            d = None if x is None or y is None else float(f"{y - x:.12g}")  # no float noise: 0.3-0.1 is 0.2
            entry.update({f"a_{amount}": x, f"b_{amount}": y, f"d_{amount}": d})
            differs |= (x is None) != (y is None) or bool(d)
        entry.update(differs=differs, timing=key[1] in timings)
        out.append(entry)
    return out


def _by_metric(cell: dict) -> dict[tuple[str, str], dict]:
    rows: dict[tuple[str, str], dict] = {}
    for row in tidy_records(cell.get("metrics") or []):
        rows.setdefault((row["model"], row["metric"]), row)
    return rows


# --- text and CSV -------------------------------------------------------------------------------


def diff_text(d: dict, all_cells: bool = False) -> str:
    """The diff as a report: the two runs, cells only in one, the differences every cell
    shares (said once), then each changed cell (every cell with ``all_cells``) with its own
    provenance differences and a table of the metrics that moved (timings only with
    ``all_cells``), and a one-line summary."""
    lines = [f"A: run {d['a'].get('run_id')}  {d['a'].get('artifact_root')}",
             f"B: run {d['b'].get('run_id')}  {d['b'].get('artifact_root')}"]  # fmt: skip
    lines += [f"warning: {warning}" for warning in d.get("warnings") or []]
    lines += [f"note: {note}" for note in d.get("notes") or []]
    for side in ("a", "b"):
        keys = d[f"only_in_{side}"]
        if keys:
            lines.append(f"only in run {side.upper()} ({len(keys)}): {', '.join(keys)}")
    said = lambda p: (p["what"], p["detail"])  # noqa: E731
    shared = set.intersection(*({said(p) for p in c["provenance"]} for c in d["cells"])) if len(d["cells"]) > 1 else set()
    if shared:
        lines += ["", f"in every cell of both runs ({len(d['cells'])}):"]
        lines += [f"  {p['what']}: {p['detail']}" for p in d["cells"][0]["provenance"] if said(p) in shared]
    timing_moved = pairs = short = False  # short: the last cell shown took one line (the next one joins it)
    for cell in d["cells"]:
        timing_moved |= any(m["differs"] and m["timing"] for m in cell["metrics"])
        if not (cell["changed"] or all_cells):
            continue
        state = cell["state_a"] if cell["state_a"] == cell["state_b"] else f"{cell['state_a']} -> {cell['state_b']}"
        head = f"{cell['key']}: {'changed' if cell['changed'] else 'unchanged'} ({state})"
        own = [f"  {p['what']}: {p['detail']}" for p in cell["provenance"] if said(p) not in shared]
        shown = [m for m in cell["metrics"] if m["differs"] and (all_cells or not m["timing"])]
        if not shown:
            head += "; metrics identical" if cell["metrics"] else "; no metrics in either run"
            lines += [""] * (not short) + [head, *own]
            short = not own
            continue
        short = False
        rows = [[m["model"], m["metric"] + (" (timing)" if m["timing"] else ""),
                 _pair(m, "a_", _fmt), _pair(m, "b_", _fmt), _pair(m, "d_", _delta)] for m in shown]  # fmt: skip
        pairs |= any("/" in row[2] or "/" in row[3] for row in rows)
        table = report.table(["model", "metric", "A", "B", "Δ (B - A)"], rows)
        lines += ["", head, *own, *("  " + line for line in table.splitlines())]
    s = d["summary"]
    lines += ["", "pairs are amplitude/phase"] if pairs else [""]
    summary = f"{s['changed']} of {s['cells']} cells differ; {s['identical']} identical"
    if s["only_in_a"] or s["only_in_b"]:
        summary += f" ({s['only_in_a']} only in A, {s['only_in_b']} only in B)"
    reused = [c for c in d["cells"] if c.get("reused")]
    if reused:
        summary += f"; {len(reused)} of them one run's copy of the other's result (submit --reuse-from)"
    for side in ("a", "b"):
        if s.get(f"not_finished_{side}"):
            summary += f"; {_cells(d[f'not_finished_{side}'])} not finished in {side.upper()}: not compared"
    lines.append(summary)
    if timing_moved and not all_cells:
        names = sorted({m["metric"] for c in d["cells"] for m in c["metrics"] if m["timing"] and m["differs"]})
        lines.append(f"timings ({', '.join(names)}) differ too: measured anew by every run, they are not counted "
                     "(--all shows them)")  # fmt: skip
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _delta(v: float | None) -> str:
    return "-" if v is None else "0" if v == 0 else f"{v:+.4g}"


def _pair(m: dict, prefix: str, fmt) -> str:
    if m["a_amplitude"] is None and m["a_phase"] is None and m["b_amplitude"] is None and m["b_phase"] is None:
        return fmt(m[f"{prefix}value"])
    return f"{fmt(m[f'{prefix}amplitude'])}/{fmt(m[f'{prefix}phase'])}"


def write_diff_csv(d: dict, path: str | Path) -> int:
    """One row per cell x model x metric of the compared cells (CSV_FIELDS; null as an
    empty field); returns the number of rows written."""
    rows = [{"dose": cell["dose"], "view": cell["view"], "split": cell["split"], **m}
            for cell in d["cells"] for m in cell["metrics"]]  # fmt: skip
    try:
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: "" if r.get(k) is None else r[k] for k in CSV_FIELDS} for r in rows)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the diff CSV: {exc.strerror or exc}") from None
    return len(rows)
