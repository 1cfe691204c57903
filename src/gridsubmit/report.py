"""Tables, CSV and plots from a manifest (read-only).

Each cell's ``metrics`` are the tidy rows of :mod:`gridsubmit.metrics` (model, metric,
amplitude, phase, value); a cell whose CSV could not be parsed has ``metrics_error`` instead.
"""

from __future__ import annotations

import csv
import math
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .states import JobState
from .errors import UsageError
from .manifest import JOB_FIGURES
from .pending import explain
from .provenance import local_time
from .metrics import tidy_records
from .reuse import reused_note

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CSV_FIELDS = ("dose", "view", "split", "model", "metric", "amplitude", "phase", "value")
PREFERRED = ("mae", "mse", "psnr", "ssim", "ms_ssim", "frc50")
SCALARS = ("registration_offset_dy", "registration_offset_dx", "computation_time_s")
PLOTTED = (("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("ms_ssim", "MS-SSIM"))
STALE = "stale: "  # how completeness says why a stale cell does not contribute


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def status_table(manifest: dict, stale: dict[str, list[str]] | None = None) -> str:
    rows = []
    for cell in manifest["jobs"]:
        last = cell["attempts"][-1] if cell["attempts"] else {}
        elapsed = last.get("elapsed_s")
        note = "; ".join(cell["missing"]) if cell["missing"] else (last.get("error") or "")
        if not note and cell["state"] == JobState.COMPLETED and (cell.get("metrics_error") or cell.get("metrics_warning")):
            note = _metrics_note(cell)
        if stale and cell["key"] in stale:
            note = "stale: " + "; ".join(stale[cell["key"]])
        elif not note and last.get("reused"):
            note = reused_note(cell)
        if cell.get("cancel_requested") and cell["state"] in (JobState.SUBMITTED, JobState.PENDING, JobState.RUNNING):
            note = "cancelling: asked to stop, not ended yet"
        elif cell["state"] == JobState.PENDING and last.get("pending_reason"):
            note = ("held or stuck: " if last.get("stuck") else "waiting: ") + explain(last["pending_reason"], last.get("gpu_cap"))
        rows.append([cell["key"], cell["state"], len(cell["attempts"]) or "", last.get("job_id") or "",
                     "" if last.get("returncode") is None else last["returncode"],
                     "" if elapsed is None else f"{elapsed:.1f}", last.get("node") or "",
                     last.get("gpus") or "", note])  # fmt: skip
    return table(["cell", "state", "tries", "job", "rc", "elapsed_s", "node", "gpus", "note"], rows)


def cell_text(cell: dict, root: Path, stale: list[str] = (), submissions: list[dict] = ()) -> str:
    """One cell in full: inputs, command line (quoted, to paste), output folder, attempts
    with what each ran from (working directory, input sizes and times, code version)."""
    lines = [f"{cell['key']}: {cell['state']}" + (" (stale)" if stale else ""),
             f"  command:    {shlex.join(cell['argv']) if cell['argv'] else '(none)'}",
             f"  output_dir: {cell['output_dir']}"]  # fmt: skip
    lines += [f"  input {name}: {_input_shown(cell, name, path)}" for name, path in cell["inputs"].items()]
    lines += [f"  blocked: {why}" for why in cell["missing"]]
    lines += [f"  stale: {why}" for why in stale]
    if cell.get("metrics_error") or cell.get("metrics_warning"):
        lines.append(f"  {_metrics_note(cell)}")
    for a in cell["attempts"]:
        facts = ", ".join(f"{k}={a[k]}" for k in ("job_id", "returncode", "elapsed_s", "cpu_s", "max_rss_bytes", "elapsed",
                                                   "max_rss", "accounting", "node", "gpus", "gpu_name", "gpu_driver") if a.get(k) is not None)  # fmt: skip
        lines.append(f"  attempt {a['attempt']}: {a['state']}  {facts}")
        if pack_text(a):
            lines.append(f"    pack: {pack_text(a)}")
        if a.get("reused"):
            lines.append(f"    reused: not run; outputs copied from {a['reused'].get('root')} ({a['reused'].get('cell')} "
                         f"attempt {a['reused'].get('attempt')})")
        if a.get("cleaned_at"):
            lines.append(f"    folder removed by `gridsubmit clean` at {local_time(a['cleaned_at'])}")
        if a.get("error"):
            lines.append(f"    why: {a['error']}")
        if a.get("command") and a["command"] != shlex.join(cell["argv"]):
            lines.append(f"    ran: {a['command']}")
        if a.get("workdir"):
            lines.append(f"    in: {a['workdir']}  fingerprint {a.get('fingerprint')}")
        for name, ident in (a.get("inputs") or {}).items():
            if ident:
                lines.append(f"    input {name}: {ident.get('size')} bytes, modified {local_time(ident.get('mtime'))}"
                             + (f", sha256 {ident['sha256']}" if ident.get("sha256") else ""))  # fmt: skip
        sub = submissions[a["submission"] - 1] if a.get("submission") and a["submission"] <= len(submissions) else None
        if sub:
            git = sub.get("git") or {}
            code = f"git {git['commit'][:12]}{' (dirty)' if git.get('dirty') else ''}" if git else "not in a git repository"
            lines.append(f"    submitted by {sub.get('user')}@{sub.get('host')} at {local_time(sub.get('at'))}: {code}; "
                         + ", ".join(f"{k} {v}" for k, v in (sub.get("versions") or {}).items()))  # fmt: skip
        lines.append(f"    logs: {root / a['stdout']}  {root / a['stderr']}")
    return "\n".join(lines)


def pack_text(attempt: dict) -> str:
    """A packed attempt's job, whose scheduler figures are the whole pack's, not the cell's
    (the cell's own are ``elapsed_s``, ``cpu_s`` and ``max_rss_bytes``); "" for a job of one cell."""
    pack = attempt.get("pack")
    if not isinstance(pack, dict) or not pack:
        return ""
    size, position = pack.get("size"), pack.get("position")
    turn = f", this cell #{position + 1}" if isinstance(position, int) else ""
    text = f"job {attempt.get('job_id') or '(not submitted)'} ran {size if size is not None else '?'} cells in turn{turn}"
    figures = ", ".join(f"{k}={pack[k]}" for k in JOB_FIGURES if pack.get(k) is not None)
    return text + (f"; the whole job's {figures}" if figures else "")


def _metrics_note(cell: dict) -> str:
    """What is wrong with a cell's metrics file: it could not be read, or what its reading warned."""
    if cell.get("metrics_error"):
        return f"metrics not read: {cell['metrics_error']}"
    return f"metrics flagged: {cell['metrics_warning']}"


def _input_shown(cell: dict, name: str, path: str | None) -> str:
    """An input's path; an absent one is optional unless the cell is blocked for it."""
    if path is not None:
        return str(path)
    return "absent" if any(why.startswith(f"{name}:") for why in cell["missing"]) else "absent (optional)"


def completeness(manifest: dict, stale: dict[str, list[str]]) -> tuple[list[str], list[tuple[str, str]], list[tuple[str, str]]]:
    """Which cells the metrics stand on: (keys of contributing cells, [(key, why not)] for
    the others, [(key, warning)] for contributing cells whose metrics file was read with a
    warning: NaN values, neither the tidy nor the wide form).
    A cell contributes when it COMPLETED, is not ``stale``, still has its expected outputs
    and its metrics file was read with rows in it."""
    ok, missing, flagged = [], [], []
    for cell in manifest["jobs"]:
        last = cell["attempts"][-1] if cell["attempts"] else {}
        gone = [name for name in cell.get("expected_outputs", []) if not (Path(cell["output_dir"]) / name).is_file()]
        if cell["state"] == JobState.BLOCKED:
            why = "blocked: " + "; ".join(cell["missing"])
        elif cell["state"] != JobState.COMPLETED:
            why = cell["state"] + (f": {last['error']}" if last.get("error") else "")
        elif cell["key"] in stale:
            why = STALE + "; ".join(stale[cell["key"]])
        elif gone:
            why = f"{', '.join(gone)} no longer in {cell['output_dir']}"
        elif cell.get("metrics_error"):
            why = f"metrics not read: {cell['metrics_error']}"
        elif not cell.get("metrics"):
            why = "no metrics" + (f": {cell['metrics_warning']}" if cell.get("metrics_warning") else " file")
        else:
            ok.append(cell["key"])
            if cell.get("metrics_warning"):
                flagged.append((cell["key"], cell["metrics_warning"]))
            continue
        missing.append((cell["key"], why))
    return ok, missing, flagged


def completeness_text(manifest: dict, stale: dict[str, list[str]]) -> str:
    ok, missing, flagged = completeness(manifest, stale)
    lines = [f"{len(ok)} of {len(manifest['jobs'])} cells contribute metrics"]
    lines += [f"  not included: {key}: {why}" for key, why in missing]
    lines += [f"  flagged: {key}: {why}" for key, why in flagged]
    reused = [(cell["key"], reused_note(cell)) for cell in manifest["jobs"] if cell["key"] in ok and reused_note(cell)]
    if reused:
        lines.append(f"{len(reused)} of them reused from other runs (not run here):")
        lines += [f"  {key}: {note}" for key, note in reused]
    return "\n".join(lines)


def only(manifest: dict, keys: list[str]) -> dict:
    """The manifest with only these cells (what the metrics table, CSV and plot show)."""
    wanted = set(keys)
    return {**manifest, "jobs": [cell for cell in manifest["jobs"] if cell["key"] in wanted]}


def metric_rows(manifest: dict) -> list[dict]:
    """One row per cell x model x metric: dose, view, split, model, metric, amplitude, phase, value."""
    rows = []
    for cell in manifest["jobs"]:
        # tidy_records also turns the wide rows of manifests written before the tidy format into tidy ones
        for row in tidy_records(cell.get("metrics") or []):
            rows.append({"dose": cell["dose"], "view": cell["view"], "split": cell["split"], **row})
    return rows


def metrics_table(manifest: dict, excluded: Iterable[tuple[str, str]] = ()) -> str:
    """One line per cell x model, a column per metric (amplitude/phase pairs), then the
    cells whose metrics file could not be parsed. ``excluded``: the cells left out and why
    (:func:`completeness`), to say why there are no metrics when none are left."""
    rows = metric_rows(manifest)
    errors = [f"{c['key']}: metrics not read: {c['metrics_error']}" for c in manifest["jobs"] if c.get("metrics_error")]
    if not rows:
        head = "(no metrics could be read)" if errors else f"(no metrics: {why_no_metrics(excluded)})"
        return "\n".join([head, *errors])
    metrics, lines = metric_grid(rows)
    text = table(["dose", "view", "split", "model", *metrics],
                 [[*key, *(shown(by[m]) if m in by else "" for m in metrics)] for key, by in lines.items()])  # fmt: skip
    return "\n".join(["pairs are amplitude/phase", text] + ([""] + errors if errors else []))


def why_no_metrics(excluded: Iterable[tuple[str, str]] = ()) -> str:
    """Why no cell contributes metrics, from the cells left out and why (:func:`completeness`)."""
    excluded = list(excluded)
    stale = sum(1 for _, why in excluded if why.startswith(STALE))
    if stale:
        others = len(excluded) - stale
        return (f"{'the ' * (not others)}{stale} completed cell(s) are stale and excluded"
                + (f", and {others} other cell(s) do not contribute" if others else "")
                + "; `submit --rerun-stale` runs them again")  # fmt: skip
    if excluded:
        return f"none of the {len(excluded)} cell(s) contributes"
    return "no completed cell wrote comparison_metrics.csv"


def metric_grid(rows: list[dict]) -> tuple[list[str], dict[tuple, dict[str, dict]]]:
    """The metrics table's layout for :func:`metric_rows`: its metric columns in order (preferred
    tuple metrics, other tuple metrics, then scalars, the study's own in its order, each as first
    seen) and its lines, (dose, view, split, model) -> metric -> row, in manifest order."""
    present = list(dict.fromkeys(r["metric"] for r in rows))
    scalar = {r["metric"] for r in rows if r["amplitude"] is None and r["phase"] is None} - {
        r["metric"] for r in rows if r["amplitude"] is not None or r["phase"] is not None}  # fmt: skip
    order = lambda m: (m in scalar, SCALARS.index(m) if m in SCALARS else -1)  # noqa: E731
    others = sorted((m for m in present if m not in PREFERRED), key=order)
    metrics = [m for m in PREFERRED if m in present] + others
    lines: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        lines.setdefault((r["dose"], r["view"], r["split"], r["model"]), {})[r["metric"]] = r
    return metrics, lines


def shown(row: dict) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    if row["amplitude"] is None and row["phase"] is None:
        return fmt(row["value"])
    return f"{fmt(row['amplitude'])}/{fmt(row['phase'])}"


def write_csv(manifest: dict, path: Path) -> int:
    """Write metric_rows as CSV (None as an empty cell); return the number of rows."""
    rows = metric_rows(manifest)
    try:
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, CSV_FIELDS)
            writer.writeheader()
            writer.writerows({k: "" if r[k] is None else r[k] for k in CSV_FIELDS} for r in rows)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the CSV: {exc.strerror or exc}") from None
    return len(rows)


RUN_FIELDS = ("run", "study", "created")


def write_runs_csv(runs: list[tuple[str, dict]], path: Path) -> int:
    """Several runs in one tidy CSV: :func:`write_csv`'s columns after ``run`` (its label),
    ``study`` (its study's name) and ``created`` (when the run was created, local time);
    returns the number of rows."""
    fields = (*RUN_FIELDS, *CSV_FIELDS)
    n = 0
    try:
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fields)
            writer.writeheader()
            for label, manifest in runs:
                head = {"run": label, "study": manifest["study"].get("name"), "created": local_time(manifest.get("created_at"))}
                for r in metric_rows(manifest):
                    writer.writerow({**head, **{k: "" if r[k] is None else r[k] for k in CSV_FIELDS}})
                    n += 1
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the CSV: {exc.strerror or exc}") from None
    return n


def plot(manifest: dict | None, path: Path, doses: Iterable[int] | None = None,
         runs: list[tuple[str, dict]] | None = None) -> Figure:
    """PSNR, SSIM and MS-SSIM (those present) against dose, amplitude and phase side by side,
    one line per model and view (test split when there is one); saved to ``path`` and returned.
    A metric with only a value (older wide CSVs) is drawn in the amplitude column.

    ``doses``: every dose of the grid (default: those of the manifest's cells). A line is
    broken at a dose it has no result for, and that dose is marked with an 'x' in the line's
    colour at the bottom of the panel ("no result" in the legend), never bridged.

    ``runs``: several runs in one plot, as (label, manifest) pairs (``manifest`` is then
    ignored): one line style per run, the marker per view, the colour per model."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.transforms import blended_transform_factory
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'gridsubmit[plot]'") from None
    labels = [label for label, _ in runs] if runs else [""]
    manifests = [m for _, m in runs] if runs else [manifest]
    rows = [{**r, "run": i} for i, m in enumerate(manifests) for r in metric_rows(m)]
    if not rows:
        raise UsageError("nothing to plot: no cell contributes metrics")
    # (metric, column) -> series label -> [(dose, y)]
    points: dict[tuple[str, str], dict[tuple, list]] = {}
    for r in rows:
        metric = r["metric"].lower().replace("-", "_")
        amplitude = r["amplitude"] if r["amplitude"] is not None else r["value"]
        for column, y in (("amplitude", amplitude), ("phase", r["phase"])):
            if metric in dict(PLOTTED) and y is not None:
                series = (r["model"], r["view"], r["split"], r["run"])
                points.setdefault((metric, column), {}).setdefault(series, []).append((r["dose"], y))
    if not points:
        raise UsageError("nothing to plot: no cell has PSNR, SSIM or MS-SSIM values")
    test_only = any(series[2] == "test" for lines in points.values() for series in lines)
    several = len(manifests) > 1
    shown = [(m, label) for m, label in PLOTTED if (m, "amplitude") in points or (m, "phase") in points]
    models = sorted({r["model"] for r in rows})
    views = sorted({r["view"] for r in rows})
    grid_doses = sorted({*(cell["dose"] for m in manifests for cell in m["jobs"]), *(doses or ())})
    gaps = False
    fig = Figure(figsize=(11, 3 * len(shown) + 0.8), layout="constrained")
    axes = fig.subplots(len(shown), 2, squeeze=False)
    for (metric, label), pair in zip(shown, axes):
        for ax, column in zip(pair, ("amplitude", "phase")):
            for (model, view, split, run), xy in sorted(points.get((metric, column), {}).items()):
                if test_only and split != "test":
                    continue
                ys = dict(sorted(xy))
                xs = sorted({*ys, *grid_doses})
                color = f"C{models.index(model) % 10}"
                style = run if several else views.index(view)  # one line style per run, else per view
                name = f"{model} ({view})" if test_only else f"{model} ({view}, {split})"
                # a later run's markers are hollow and larger: where two runs agree, both stay visible
                hollow = {"markerfacecolor": "none", "markersize": 6 + 3 * run, "markeredgewidth": 1.5} if several and run else {}
                ax.plot(xs, [ys.get(x, math.nan) for x in xs], color=color,  # NaN: the line breaks there
                        linestyle=("-", "--", ":", "-.")[style % 4], marker="os^Dv"[views.index(view) % 5],
                        label=f"{name} · {labels[run]}" if several else name, **hollow)  # fmt: skip
                absent = [x for x in xs if x not in ys]
                if absent:  # at the foot of the panel, whatever the values' range
                    gaps = True
                    ax.plot(absent, [0.0] * len(absent), transform=blended_transform_factory(ax.transData, ax.transAxes),
                            linestyle="none", marker="x", markersize=8, markeredgewidth=2, color=color,
                            clip_on=False, label="_no result")  # fmt: skip
            if not ax.lines:
                ax.text(0.5, 0.5, f"no {column} values", ha="center", va="center", transform=ax.transAxes, color="gray")
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ax.set_xscale("log")
                ax.set_xlim(grid_doses[0] / 1.5, grid_doses[-1] * 1.5)  # a dose without any result stays in view
            ax.set_title(f"{label}, {column}", fontsize=10)
            ax.set_xlabel("dose")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3, which="both")
    legend: dict[str, object] = {}  # label -> handle, over all panels (a series may be missing from some)
    for ax in axes.flat:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(text, handle)
    if gaps:
        legend["no result at this dose"] = Line2D([], [], linestyle="none", marker="x", markersize=8, markeredgewidth=2,
                                                  color="gray")  # fmt: skip
    # beside the panels; bbox_inches="tight" makes room for it on any matplotlib >= 3.5
    fig.legend(list(legend.values()), list(legend), loc="upper left", bbox_to_anchor=(1.0, 0.97), fontsize=8,
               handlelength=4.5 if several else 2.0)  # long enough to show each run's dashes around its marker
    split_note = "test split" if test_only else "all splits"
    if several:
        fig.suptitle(f"metrics by dose ({split_note}), line style per run: "
                     + ", ".join(f"{label} {('solid', 'dashed', 'dotted', 'dash-dot')[i % 4]}{', hollow markers' if i else ''}"
                                 for i, label in enumerate(labels)))  # fmt: skip
    else:
        fig.suptitle(f"{manifests[0]['study'].get('name', 'study')}: metrics by dose ({split_note})")
    try:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the plot: {exc.strerror or exc}") from None
    return fig
