"""The GPU-hour ledger of a run: what each attempt held, how long it waited, what was wasted (pure).

Per attempt:

- ``gpus``: the GPUs it held. On SLURM, sacct's ``AllocTRES`` of its job (``gres/gpu=N``: what
  the scheduler allocated, not what was asked); where sacct has not answered yet (accounting
  pending), the GPUs the command saw (``gpus``, its CUDA_VISIBLE_DEVICES); locally, those
  (one slot's GPU ids); failing all, the request (``resources.gpus_per_job``). ``gpus_from``
  says which.
- ``held_s``: how long it held them: sacct's ``Elapsed`` of its job (a job of one cell: whole
  seconds, start-up included), or the command's own ``elapsed_s`` where that is longer; for a
  packed cell or without sacct's word, ``elapsed_s``.
- ``gpu_s``: ``held_s`` × ``gpus``.
- ``queue_wait_s``: submitted → started (the command's start).
- ``wasted``: the attempt did not complete, or it completed and a later attempt (a retry or a
  rerun) superseded it.

Totals per cell, per dose and for the run, and a projection for the cells still to run: for
each, the median GPU-seconds of the COMPLETED cells of its resource group (equal resources).
"""

from __future__ import annotations

import re
import statistics
from typing import Iterable

from .states import TERMINAL

_GPU_TRES = re.compile(r"(?:^|,)gres/gpu(?::[^=,]+)?=(\d+)")
_TOTAL = re.compile(r"(?:^|,)gres/gpu=(\d+)")
LABEL = "GPU-hours"


def tres_gpus(text: str | None) -> int | None:
    """GPUs in a TRES string (``cpu=1,gres/gpu=2,mem=4G``); typed counts are summed only when
    no untyped total is given. None when the string names no GPU at all."""
    if not text:
        return None
    total = _TOTAL.findall(text)
    if total:
        return int(total[0])
    typed = _GPU_TRES.findall(text)
    return sum(int(n) for n in typed) if typed else 0


def elapsed_seconds(text: str | None) -> float | None:
    """sacct's Elapsed (``[D-]HH:MM:SS``, or ``MM:SS``) in seconds."""
    if not text:
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)(?:\.\d+)?", text.strip())
    if not m:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
    return days * 86400 + hours * 3600 + minutes * 60 + seconds


def held_gpus(attempt: dict) -> tuple[int, str]:
    """(GPUs held, where that figure comes from)."""
    pack = attempt.get("pack") if isinstance(attempt.get("pack"), dict) else {}
    tres = tres_gpus(attempt.get("alloc_tres") or pack.get("alloc_tres"))
    if tres is not None:
        return tres, "AllocTRES"
    seen = attempt.get("gpus")
    if isinstance(seen, str):
        return len([g for g in seen.split(",") if g.strip()]), "visible"
    request = (attempt.get("resources") or {}).get("gpus_per_job")
    return (max(0, int(request)) if isinstance(request, int) else 0), "requested"


def attempt_figures(cell: dict, attempt: dict) -> dict:
    gpus, source = held_gpus(attempt)
    elapsed = elapsed_seconds(attempt.get("elapsed")) if not attempt.get("pack") else None
    held = attempt.get("elapsed_s")
    if elapsed is not None:  # whole seconds, and the job's start-up too; never less than the command's own time
        held = max(elapsed, held or 0.0)
    if held is None and attempt.get("started_at") is not None and attempt.get("ended_at") is not None:
        held = max(0.0, attempt["ended_at"] - attempt["started_at"])
    held = float(held or 0.0)
    wait = None
    if attempt.get("started_at") is not None and attempt.get("submitted_at") is not None:
        wait = max(0.0, attempt["started_at"] - attempt["submitted_at"])
    ended = attempt.get("state") in TERMINAL
    superseded = attempt.get("state") == "COMPLETED" and attempt is not cell["attempts"][-1]
    wasted = ended and (attempt.get("state") != "COMPLETED" or superseded)
    why = None
    if wasted:
        why = "superseded by a later attempt" if superseded else attempt.get("state", "").lower()
    return {"key": cell["key"], "dose": cell["dose"], "view": cell["view"], "split": cell["split"],
            "attempt": attempt.get("attempt"), "state": attempt.get("state"), "gpus": gpus, "gpus_from": source,
            "held_s": round(held, 3), "gpu_s": round(held * gpus, 3), "queue_wait_s": None if wait is None else round(wait, 3),
            "wasted": wasted, "why_wasted": why, "ended": ended}  # fmt: skip


def _total(rows: Iterable[dict]) -> dict:
    rows = list(rows)
    waits = [r["queue_wait_s"] for r in rows if r["queue_wait_s"] is not None]
    gpu_s = round(sum(r["gpu_s"] for r in rows), 3)
    wasted = round(sum(r["gpu_s"] for r in rows if r["wasted"]), 3)
    return {"attempts": len(rows), "gpu_s": gpu_s, "gpu_hours": gpu_s / 3600,
            "wasted_gpu_s": wasted, "wasted_gpu_hours": wasted / 3600,
            "queue_wait_s": round(sum(waits), 3), "queue_wait_median_s": statistics.median(waits) if waits else None}  # fmt: skip


def _group(cell: dict) -> tuple:
    return tuple(sorted((cell.get("resources") or {}).items()))


def ledger(manifest: dict, due: Iterable[str] = ()) -> dict:
    """The run's ledger: ``attempts`` (rows as above), ``cells`` and ``doses`` (totals), ``run``
    (totals) and ``projection`` for the cells still to run (not ended, or in ``due``: waiting for a
    retry): ``{"cells", "gpu_s", "gpu_hours", "unprojected"}``; unprojected cells have no completed
    cell of their resource group to go by."""
    rows, by_cell, by_dose = [], {}, {}
    for cell in manifest["jobs"]:
        mine = [attempt_figures(cell, a) for a in cell["attempts"]]
        rows += mine
        by_cell[cell["key"]] = _total(mine)
        by_dose.setdefault(cell["dose"], []).extend(mine)
    done: dict[tuple, list[float]] = {}
    for cell in manifest["jobs"]:
        if cell["state"] == "COMPLETED" and cell["attempts"]:
            done.setdefault(_group(cell), []).append(attempt_figures(cell, cell["attempts"][-1])["gpu_s"])
    due = set(due)
    to_run = [c for c in manifest["jobs"] if c["state"] not in TERMINAL or c["key"] in due]
    projected, unprojected = 0.0, []
    for cell in to_run:
        seen = done.get(_group(cell))
        if seen:
            projected += statistics.median(seen)
        else:
            unprojected.append(cell["key"])
    return {"label": LABEL, "attempts": rows, "cells": by_cell,
            "doses": {dose: _total(r) for dose, r in by_dose.items()}, "run": _total(rows),
            "projection": {"cells": len(to_run), "gpu_s": round(projected, 3), "gpu_hours": projected / 3600,
                           "unprojected": unprojected}}  # fmt: skip


def hours(value: float) -> str:
    """GPU-hours with three significant digits (short runs are fractions of an hour)."""
    return "0" if not value else f"{value:.3g}"


def footer(book: dict) -> str:
    """One line for `status`: used, wasted, queue wait, and the projection while cells remain."""
    run, proj = book["run"], book["projection"]
    text = f"{LABEL}: {hours(run['gpu_hours'])} used ({hours(run['wasted_gpu_hours'])} wasted) over {run['attempts']} attempt(s)"
    if run["queue_wait_median_s"] is not None:
        text += f"; queue wait median {run['queue_wait_median_s']:.1f} s"
    unprojected = len(proj["unprojected"])
    if proj["cells"] and unprojected == proj["cells"]:
        text += f"; {proj['cells']} cell(s) still to run, not projected yet (no completed cell of their resources to go by)"
    elif proj["cells"]:
        text += f"; projected {hours(proj['gpu_hours'])} more for {proj['cells']} cell(s) still to run"
        if unprojected:
            text += f" ({unprojected} of them without a completed cell of their resources to go by)"
    return text


def text(book: dict) -> str:
    """The ledger section of `report`: per dose, then the run and the projection."""
    lines = [f"{LABEL} (GPUs held x time held; wasted: not completed, or superseded by a later attempt)"]
    header = ["dose", "attempts", LABEL, "wasted", "queue wait median (s)"]
    rows = [[str(d), str(t["attempts"]), hours(t["gpu_hours"]), hours(t["wasted_gpu_hours"]),
             "" if t["queue_wait_median_s"] is None else f"{t['queue_wait_median_s']:.1f}"] for d, t in book["doses"].items()]  # fmt: skip
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    for r in [header, ["-" * w for w in widths], *rows]:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    lines.append("  " + footer(book))
    return "\n".join(lines)


CSV_FIELDS = ("scope", "key", "dose", "view", "split", "attempt", "state", "gpus", "gpus_from", "held_s", "gpu_s", "gpu_hours",
              "wasted", "why_wasted", "queue_wait_s")  # fmt: skip


def write_csv(book: dict, path) -> int:
    """One row per attempt, then per cell, per dose, the run and the projection (``scope``)."""
    import csv

    out = [{"scope": "attempt", **r, "gpu_hours": r["gpu_s"] / 3600} for r in book["attempts"]]
    out += [{"scope": "cell", "key": k, "attempt": t["attempts"], "gpu_s": t["gpu_s"], "gpu_hours": t["gpu_hours"],
             "wasted": t["wasted_gpu_s"], "queue_wait_s": t["queue_wait_s"]} for k, t in book["cells"].items()]  # fmt: skip
    out += [{"scope": "dose", "dose": d, "attempt": t["attempts"], "gpu_s": t["gpu_s"], "gpu_hours": t["gpu_hours"],
             "wasted": t["wasted_gpu_s"], "queue_wait_s": t["queue_wait_s"]} for d, t in book["doses"].items()]  # fmt: skip
    run = book["run"]
    out.append({"scope": "run", "attempt": run["attempts"], "gpu_s": run["gpu_s"], "gpu_hours": run["gpu_hours"],
                "wasted": run["wasted_gpu_s"], "queue_wait_s": run["queue_wait_s"]})  # fmt: skip
    proj = book["projection"]
    out.append({"scope": "projection", "key": f"{proj['cells']} cell(s) still to run", "gpu_s": proj["gpu_s"],
                "gpu_hours": proj["gpu_hours"]})  # fmt: skip
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: "" if r.get(k) is None else r.get(k) for k in CSV_FIELDS} for r in out)
    return len(out)
