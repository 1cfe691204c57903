"""Tables, CSV and plots from a manifest (read-only)."""

from __future__ import annotations

import csv
from pathlib import Path

from .errors import UsageError

def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def status_table(manifest: dict) -> str:
    rows = []
    for cell in manifest["jobs"]:
        last = cell["attempts"][-1] if cell["attempts"] else {}
        elapsed = last.get("elapsed_s")
        note = "missing: " + ", ".join(cell["missing"]) if cell["missing"] else (last.get("error") or "")
        rows.append([cell["key"], cell["state"], len(cell["attempts"]) or "", last.get("job_id") or "",
                     "" if last.get("returncode") is None else last["returncode"],
                     "" if elapsed is None else f"{elapsed:.1f}", last.get("node") or "",
                     last.get("gpus") or "", note])  # fmt: skip
    return _table(["cell", "state", "tries", "job", "rc", "elapsed_s", "node", "gpus", "note"], rows)


def metric_rows(manifest: dict) -> list[dict]:
    rows = []
    for cell in manifest["jobs"]:
        for row in cell.get("metrics") or []:
            rows.append({"dose": cell["dose"], "view": cell["view"], "split": cell["split"], **row})
    return rows


def metrics_table(manifest: dict) -> str:
    rows = metric_rows(manifest)
    if not rows:
        return "(no metrics: no completed cell wrote comparison_metrics.csv)"
    keys = [k for k in rows[0] if k not in ("dose", "view", "split")]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return _table(["dose", "view", "split", *keys], [[r["dose"], r["view"], r["split"], *(fmt(r.get(k, "")) for k in keys)] for r in rows])


def write_csv(manifest: dict, path: Path) -> int:
    rows = metric_rows(manifest)
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fields or ["dose", "view", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def plot(manifest: dict, path: Path) -> None:
    """PSNR and SSIM against dose, one line per view and model (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'gridsubmit[plot]'") from None
    rows = [r for r in metric_rows(manifest) if r.get("split") == "test"] or metric_rows(manifest)
    if not rows:
        raise UsageError("nothing to plot: no completed cell has metrics")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("psnr", "ssim")):
        series: dict[tuple, list] = {}
        for r in rows:
            if isinstance(r.get(metric), float):
                series.setdefault((r["view"], r.get("model", "")), []).append((r["dose"], r[metric]))
        for (view, model), points in sorted(series.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{model} ({view})")
        ax.set_xscale("log")
        ax.set_xlabel("dose")
        ax.set_ylabel(metric.upper())
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{manifest['study'].get('name', 'study')}: metrics by dose")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
