"""The parts of the HTML page that make a comparison defensible (read-only): the models side by
side (gridsubmit.compare), what the contributing cells ran on (gridsubmit.comparability), the
GPU-hour ledger (gridsubmit.ledger), and the grid's colours by a comparability factor. Kept apart
from report_html, which lays out the page; the template shows what these return.
"""

from __future__ import annotations

from . import report
from .errors import UsageError

PALETTE = ("#cfe3ff", "#ffe0b3", "#d7f5d0", "#f3d1f4", "#fff3b0", "#d0f0f5", "#f8d3d3", "#e2dcf7")


def defend_sections(manifest: dict, stale: dict, colour_by: str | None, reference: str | None, book: dict | None) -> dict:
    """The answer tables, comparability, GPU-hours and the grid's colours by a factor."""
    from . import compare, comparability, ledger

    manifest = {**manifest, "jobs": [{**c, "stale": stale.get(c["key"], [])} for c in manifest["jobs"]]}
    ok = report.completeness(manifest, stale)[0]
    tables = []
    for metric in dict.fromkeys(m for m, _ in compare.HTML_TABLES):  # one table per metric: amplitude | phase
        parts = []
        for part in compare.PARTS:
            try:
                t = compare.table(manifest, ok, metric, part, reference)
            except UsageError:  # a reference without this metric: the table without differences
                t = compare.table(manifest, ok, metric, part)
            if t["models"]:
                parts.append(_answer(t))
        if parts:
            tables.append(_pair(parts))
    judged = comparability.judge(manifest, ok)
    book = book or ledger.ledger(manifest)
    colours = {}
    if colour_by:
        values = list(dict.fromkeys(comparability.value(manifest, c, colour_by) for c in manifest["jobs"] if c["attempts"]))
        colours = {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(values)}
    run, proj = book["run"], book["projection"]
    return {
        "answer": tables,
        "reference": reference,
        "comparability": {"text": comparability.text(judged), "consistent": judged["consistent"], "n": judged["cells"],
                          "factors": [{"label": f["label"], "varies": f["varies"],
                                       "groups": [{"value": g["value"], "cells": g["cells"]} for g in f["groups"]]}
                                      for f in judged["factors"]]},  # fmt: skip
        "ledger": {"footer": ledger.footer(book), "label": ledger.LABEL,
                   "doses": [{"dose": d, "attempts": t["attempts"], "hours": ledger.hours(t["gpu_hours"]),
                              "wasted": ledger.hours(t["wasted_gpu_hours"]),
                              "wait": "" if t["queue_wait_median_s"] is None else f"{t['queue_wait_median_s']:.1f}"}
                             for d, t in book["doses"].items()],
                   "run": {"attempts": run["attempts"], "hours": ledger.hours(run["gpu_hours"]),
                           "wasted": ledger.hours(run["wasted_gpu_hours"])},
                   "projection": {"cells": proj["cells"], "hours": ledger.hours(proj["gpu_hours"]),
                                  "unprojected": len(proj["unprojected"])}},  # fmt: skip
        "colour_by": comparability.FACTORS.get(colour_by) if colour_by else None,
        "colour_of": {c["key"]: _swatch(comparability.value(manifest, c, colour_by), colours) for c in manifest["jobs"]
                      if colour_by and c["attempts"]},  # fmt: skip
        "colour_legend": [{"value": v, "colour": col} for v, col in colours.items()],
    }


def _pair(parts: list[dict]) -> dict:
    """The amplitude and phase tables of one metric side by side, row by row (the same cells)."""
    rows = []
    for i, row in enumerate(parts[0]["rows"]):
        rows.append({"axes": row["axes"], "missing": row["missing"],
                     "groups": [{"values": p["rows"][i]["values"], "deltas": p["rows"][i]["deltas"]} for p in parts]})  # fmt: skip
    return {"title": parts[0]["title"].split(",")[0], "better": parts[0]["better"], "axes": parts[0]["axes"],
            "parts": [{"part": p["title"].split(", ")[1], "models": p["models"], "deltas": p["deltas"],
                       "reference": p["reference"], "span": p["span"]} for p in parts],
            "span": sum(p["span"] for p in parts), "rows": rows}  # fmt: skip


def _swatch(value: str, colours: dict) -> dict:
    return {"colour": colours[value], "value": value if len(value) <= 28 else value[:27] + "…", "full": value}


def _answer(t: dict) -> dict:
    """One compare table as the template shows it."""
    deltas = [m for m in t["models"] if t["reference"] and m != t["reference"]]
    rows = []
    for r in t["rows"]:
        rows.append({"axes": [r["dose"], r["view"], *([r["split"]] if t["split_column"] else [])],
                     "missing": r["missing"],
                     "values": [{"text": "missing" if r["values"][m] is None else f"{r['values'][m]:.4g}",
                                 "best": m in r["best"], "missing": r["values"][m] is None} for m in t["models"]],
                     "deltas": [{"text": "" if r["delta"].get(m) is None else f"{r['delta'][m]:+.4g}",
                                 "sign": "" if r["delta"].get(m) is None else "pos" if r["delta"][m] > 0
                                 else "neg" if r["delta"][m] < 0 else ""} for m in deltas]})  # fmt: skip
    label = {"psnr": "PSNR", "ssim": "SSIM", "ms_ssim": "MS-SSIM"}.get(t["metric"], t["metric"])
    return {"title": f"{label}, {t['part']}", "better": t["better"], "models": t["models"], "deltas": deltas,
            "reference": t["reference"], "axes": ["dose", "view", *(["split"] if t["split_column"] else [])],
            "rows": rows, "span": len(t["models"]) + len(deltas)}  # fmt: skip
