"""The study's answer at a glance: one metric, the models side by side, per dose and view (pure).

``report --compare psnr:phase`` makes one table: a row per dose × view (× split, when the run
has several), a column per model, the best model of each row marked (higher is better for
psnr, ssim, ms_ssim and frc50; lower for mae and mse; unmarked for a metric of no known
direction), and with ``--reference MODEL`` each other model's difference from it. Every cell
of the grid has its row: a cell that does not contribute metrics (not run, failed, stale, ...)
shows as missing, and so does a model a contributing cell has no value for.
"""

from __future__ import annotations

import csv
from pathlib import Path

from . import report
from .errors import UsageError

HIGHER = {"psnr", "ssim", "ms_ssim", "frc50"}
LOWER = {"mae", "mse"}
PARTS = ("amplitude", "phase")
HTML_TABLES = [(m, p) for m in ("psnr", "ssim", "ms_ssim") for p in PARTS]  # what the HTML page opens with
MISSING = "missing"


def parse_spec(text: str, manifest: dict | None = None) -> tuple[str, str | None]:
    """``METRIC[:amplitude|phase]`` -> (metric, part); the part is None when not given (the
    amplitude, or the value of a single-value metric). With ``manifest``, a metric its cells
    have no values of (when they have some), or a part of a single-value metric, is a UsageError
    that lists the metrics the run has."""
    metric, _, part = text.partition(":")
    metric = _name(metric)
    part = part.strip().lower() or None
    if not metric or part not in (*PARTS, None):
        raise UsageError(f"--compare {text!r}: expected METRIC[:amplitude|phase], e.g. psnr:phase")
    rows = report.metric_rows(manifest) if manifest is not None else []
    if rows and metric not in {_name(r["metric"]) for r in rows}:
        raise UsageError(f"--compare {text!r}: this run has no metric {metric!r}; its metrics: "
                         + ", ".join(report.metric_grid(rows)[0]))  # fmt: skip
    if rows and part and _single(rows, metric):
        raise UsageError(f"--compare {text!r}: {metric} is a single value, not an amplitude/phase pair: "
                         f"give --compare {metric}")  # fmt: skip
    return metric, part


def _name(metric: str) -> str:
    return metric.strip().lower().replace("-", "_")


def _single(rows: list[dict], metric: str) -> bool:
    """The metric has values and no amplitude or phase (registration offsets, computation time)."""
    mine = [r for r in rows if _name(r["metric"]) == metric]
    return bool(mine) and all(r["amplitude"] is None and r["phase"] is None for r in mine)


def table(manifest: dict, contributing: list[str], metric: str, part: str | None = None,
          reference: str | None = None) -> dict:  # fmt: skip
    """``{"metric", "part", "better", "models", "reference", "split_column", "rows": [{"dose", "view",
    "split", "key", "values": {model: number | None}, "best": [models], "delta": {model: number | None},
    "missing": why | None}]}``. ``contributing``: the cells whose metrics count (report.completeness).
    ``part``: amplitude (the default) or phase; "value" (the default) for a single-value metric."""
    ok = set(contributing)
    rows, models = [], []
    splits = list(dict.fromkeys(c["split"] for c in manifest["jobs"]))
    if part is None:
        part = "value" if _single(report.metric_rows(manifest), metric) else "amplitude"
    for cell in manifest["jobs"]:
        values: dict[str, float | None] = {}
        if cell["key"] in ok:
            for r in report.metric_rows({"jobs": [cell]}):
                if _name(r["metric"]) != metric:
                    continue
                if part == "value" or (r["amplitude"] is None and r["phase"] is None):  # older wide CSVs: amplitude
                    v = r["value"] if part in ("value", "amplitude") else None
                else:
                    v = r[part]
                values[r["model"]] = v
                if r["model"] not in models:
                    models.append(r["model"])
        rows.append({"dose": cell["dose"], "view": cell["view"], "split": cell["split"], "key": cell["key"],
                     "values": values, "missing": None if cell["key"] in ok else _why(cell)})  # fmt: skip
    if reference is not None and reference not in models and models:
        raise UsageError(f"--reference {reference!r}: no such model in the {metric} values; models: {', '.join(models)}")
    better = "higher" if metric in HIGHER else "lower" if metric in LOWER else None
    for row in rows:
        row["values"] = {m: row["values"].get(m) for m in models}
        present = {m: v for m, v in row["values"].items() if v is not None}
        row["best"] = []
        if better and present:
            target = (max if better == "higher" else min)(present.values())
            row["best"] = [m for m, v in present.items() if v == target]
        ref = row["values"].get(reference) if reference else None
        row["delta"] = {m: (None if v is None or ref is None else v - ref) for m, v in row["values"].items()
                        if reference and m != reference}  # fmt: skip
    return {"metric": metric, "part": part, "better": better, "models": models, "reference": reference,
            "split_column": len(splits) > 1, "rows": rows}  # fmt: skip


def _why(cell: dict) -> str:
    return "not run" if not cell["attempts"] else cell["state"].lower() if cell["state"] != "COMPLETED" else "not counted"


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.4g}"


def _signed(v: float | None) -> str:
    return "" if v is None else f"{v:+.4g}"


def text(t: dict) -> str:
    """The table as text: the best of each row marked with *, missing cells as ``missing``."""
    axes = ["dose", "view", *(["split"] if t["split_column"] else [])]
    ref = t["reference"]
    deltas = [m for m in t["models"] if ref and m != ref]
    header = [*axes, *(t["models"] or ["values"]), *(f"{m}-{ref}" for m in deltas)]
    rows = []
    for r in t["rows"]:
        lead = [str(r["dose"]), r["view"], *([r["split"]] if t["split_column"] else [])]
        if r["missing"] or not t["models"]:
            why = f"{MISSING} ({r['missing']})" if r["missing"] else MISSING
            rows.append([*lead, why, *[""] * (len(header) - len(lead) - 1)])
            continue
        cells = [(_num(v) + ("*" if m in r["best"] else "")) if v is not None else MISSING for m, v in r["values"].items()]
        rows.append([*lead, *cells, *(_signed(r["delta"].get(m)) or MISSING for m in deltas)])
    direction = {"higher": "higher is better", "lower": "lower is better", None: "no known better direction"}[t["better"]]
    title = (t["metric"] if t["part"] == "value" else f"{t['metric']} ({t['part']})") + f": {direction}" + ("; * marks the best of each row" if t["better"] else "")
    if ref:
        title += f"; differences from {ref}"
    if not t["models"]:
        title += f"; no cell has {t['metric']} values"
    return title + "\n" + report.table(header, rows)


def write_csv(tables: list[dict], path: Path) -> int:
    """One row per table row: dose, view, split, metric, part, a column per model, best, and the
    differences from the reference (``<model>-<reference>``); a missing value is empty."""
    models = list(dict.fromkeys(m for t in tables for m in t["models"]))
    refs = list(dict.fromkeys((m, t["reference"]) for t in tables for m in t["models"] if t["reference"] and m != t["reference"]))
    fields = ["dose", "view", "split", "metric", "part", *models, "best", "missing", *(f"{m}-{r}" for m, r in refs)]
    n = 0
    try:
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fields)
            writer.writeheader()
            for t in tables:
                for r in t["rows"]:
                    row = {"dose": r["dose"], "view": r["view"], "split": r["split"], "metric": t["metric"], "part": t["part"],
                           "best": " ".join(r["best"]), "missing": r["missing"] or ""}  # fmt: skip
                    row.update({m: "" if r["values"].get(m) is None else r["values"][m] for m in models})
                    row.update({f"{m}-{ref}": "" if r["delta"].get(m) is None else r["delta"][m] for m, ref in refs
                                if ref == t["reference"]})  # fmt: skip
                    writer.writerow(row)
                    n += 1
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the CSV: {exc.strerror or exc}") from None
    return n
