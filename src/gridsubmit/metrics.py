"""Read a cell's ``comparison_metrics.csv`` into normalised tidy rows (pure; never raises).

Two formats are understood:

* tidy, as ``scripts/compare_models.py`` writes it: ``model,metric,amplitude,phase,value``,
  one row per model x metric; tuple metrics fill amplitude and phase, scalars fill value;
* wide, an older form: ``model,<metric1>,<metric2>,...``, one row per model. Every column
  whose non-empty cells are all numbers becomes one tidy row per model with ``value`` set;
  other columns (notes, names) are ignored.

A file that parses but is neither (a 'metric' column without amplitude, phase or value
columns; amplitude, phase or value columns without a 'metric' column; a model on several rows
without one) is read as well as it can be, with a warning that says so.

Every row is ``{"model", "metric", "amplitude", "phase", "value"}``; a number is a float, and
an empty cell, NaN or infinity is None (the manifest is JSON, which has no portable NaN).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable

METRICS_FILE = "comparison_metrics.csv"  # what the study's comparison writes into each cell's output folder

TIDY_FIELDS = ("model", "metric", "amplitude", "phase", "value")
NUMBERS = ("amplitude", "phase", "value")
MAX_ROWS = 500
MAX_BYTES = 1024 * 1024  # far above 500 rows of metrics; a runaway file is cut, not read whole


class _Bad(Exception):
    """A problem with the file's contents; its message says what and where."""


def read_metrics(path: Path) -> tuple[list[dict] | None, str | None, str | None]:
    """(rows, problem, warning): (None, None, None) when the file does not exist, (None,
    "<path>: why", None) when it cannot be read or parsed, else (rows, None, warning) with at
    most MAX_ROWS rows; ``warning`` says when there are no rows or NaN/infinite values."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None, None, None
    except OSError as exc:
        return None, f"{path}: cannot read: {exc.strerror or exc}", None
    if len(data) > MAX_BYTES:  # drop the partial last line
        data = data[: data.rfind(b"\n", 0, MAX_BYTES) + 1]
    text = data.decode("utf-8-sig", errors="replace")
    try:
        records = [row for row in csv.reader(io.StringIO(text, newline="")) if any(cell.strip() for cell in row)]
        if not records:
            raise _Bad("empty file: no header")
        header = [name.strip().lower() for name in records[0]]
        if "model" not in header:
            raise _Bad(f"no 'model' column in the header ({','.join(records[0])[:120]})")
        body = records[1 : MAX_ROWS + 1]
        rows = _tidy(header, body) if "metric" in header else _wide(header, [name.strip() for name in records[0]], body)
        shape = _shape_problem(header, rows, body)
    except _Bad as exc:
        return None, f"{path}: {exc}", None
    except csv.Error as exc:
        return None, f"{path}: not a CSV file: {exc}", None
    rows = rows[:MAX_ROWS]
    odd = []
    for row in rows:
        for name in NUMBERS:
            if row[name] is not None and not math.isfinite(row[name]):
                odd.append(f"{row['model']} {row['metric']}" + ("" if name == "value" else f" {name}"))
                row[name] = None
    warnings = [shape] if shape else []
    if not rows:
        warnings.append("no rows")
    if odd:
        warnings.append(f"{len(odd)} value(s) NaN or infinite: {', '.join(odd[:4])}{', ...' if len(odd) > 4 else ''}")
    return rows, None, "; ".join(warnings) or None


def _shape_problem(header: list[str], rows: list[dict], body: list[list[str]]) -> str | None:
    """Why a file that parsed is neither the tidy nor the wide form, or None. Tidy: a 'metric'
    column and amplitude, phase or value columns. Wide: no 'metric' column, one row per model,
    a column per metric; the tidy amount columns (amplitude, phase, value) are not metric names
    and a model on several rows is a long table missing its 'metric' column."""
    if "metric" in header:
        if body and not any(name in header for name in NUMBERS):
            return (f"neither tidy nor wide: a 'metric' column but no amplitude, phase or value column "
                    f"(header {','.join(header)[:120]}): no values read")  # fmt: skip
        return None
    amounts = [name for name in NUMBERS if name in header]
    if amounts and rows:
        read = [name for name in amounts if any(r["metric"].strip().lower() == name for r in rows)]
        return (f"neither tidy nor wide: column{'s' * (len(amounts) > 1)} {', '.join(amounts)} without a 'metric' column"
                + (f", read as metrics named {', '.join(read)}" if read else ""))  # fmt: skip
    models = [r[header.index("model")].strip() for r in body if header.index("model") < len(r)]
    repeated = [m for m in dict.fromkeys(models) if models.count(m) > 1]
    if repeated:
        return (f"neither tidy nor wide: model {repeated[0]} on {models.count(repeated[0])} rows without a 'metric' "
                "column (the wide form has one row per model)")  # fmt: skip
    return None


def tidy_records(records: Iterable[dict]) -> list[dict]:
    """Normalise rows already in memory (e.g. a manifest written before the tidy format): tidy
    rows keep their five keys, a wide row gives one row per numeric field."""
    rows: list[dict] = []
    for record in records:
        if "metric" in record:
            rows.append({"model": str(record.get("model") or ""), "metric": str(record.get("metric") or ""),
                         **{k: _number(record.get(k)) for k in NUMBERS}})  # fmt: skip
            continue
        for key, value in record.items():
            if key != "model" and isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append(_row(str(record.get("model") or ""), key, None, None, _number(value)))
    return rows


def _tidy(header: list[str], body: list[list[str]]) -> list[dict]:
    col = {name: header.index(name) for name in TIDY_FIELDS if name in header}
    rows = []
    for line, record in enumerate(body, start=2):
        cell = lambda name: record[col[name]].strip() if name in col and col[name] < len(record) else ""  # noqa: E731
        model, metric = cell("model"), cell("metric")
        if not model or not metric:
            raise _Bad(f"line {line}: no {'model' if not model else 'metric'} name")
        numbers = {}
        for name in NUMBERS:
            try:
                numbers[name] = _parse(cell(name))
            except ValueError:
                raise _Bad(f"line {line}: {name} of {model} {metric} is not a number: {cell(name)[:40]!r}") from None
        rows.append(_row(model, metric, **numbers))
    return rows


def _wide(header: list[str], names: list[str], body: list[list[str]]) -> list[dict]:
    model_col = header.index("model")
    cells = lambda i: [r[i].strip() if i < len(r) else "" for r in body]  # noqa: E731
    numeric = []
    for i, name in enumerate(names):
        values = [v for v in cells(i) if v]
        if i != model_col and name and values and all(_is_number(v) for v in values):
            numeric.append(i)
    rows = []
    for line, record in enumerate(body, start=2):
        model = record[model_col].strip() if model_col < len(record) else ""
        if not model:
            raise _Bad(f"line {line}: no model name")
        for i in numeric:
            rows.append(_row(model, names[i], None, None, _parse(record[i].strip() if i < len(record) else "")))
    return rows


def _row(model: str, metric: str, amplitude: float | None, phase: float | None, value: float | None) -> dict:
    return {"model": model, "metric": metric, "amplitude": amplitude, "phase": phase, "value": value}


def _parse(text: str) -> float | None:
    """'' -> None; a number (NaN and infinities too, flagged by the caller) -> float; anything else -> ValueError."""
    return None if not text else float(text)


def _number(value: Any) -> float | None:
    if isinstance(value, str):
        try:
            value = _parse(value.strip())
        except ValueError:
            return None
        if value is None:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
