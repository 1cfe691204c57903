"""One cell of the condition grid and how its command line is rendered (argv, never a shell string)."""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

VIEW_ORDER = ("dense", "sparse")
SPLIT_ORDER = ("train", "test")


@dataclass(frozen=True, order=True)
class JobKey:
    """(dose, view, split); sorts dose ascending, dense before sparse, train before test."""

    dose: int
    view: str
    split: str

    def sort_key(self) -> tuple:
        return (self.dose, _rank(self.view, VIEW_ORDER), self.view, _rank(self.split, SPLIT_ORDER), self.split)

    def __str__(self) -> str:
        return f"dose_{self.dose}/{self.view}/{self.split}"

    @classmethod
    def parse(cls, text: str) -> "JobKey":
        dose, view, split = text.split("/")
        return cls(int(dose.removeprefix("dose_")), view, split)


def _rank(value: str, order: Sequence[str]) -> int:
    return order.index(value) if value in order else len(order)


@dataclass(frozen=True)
class Cell:
    """Everything needed to run one cell of the grid: its inputs, its output folder and its argv.

    ``inputs`` maps each input name to its resolved path, or None for an optional input
    that is absent; ``sought`` where such an input was looked for (it may appear later, and
    then the cell's result is stale); ``pointers`` records, for inputs found through a JSON
    file, that file and the field read; ``missing`` says, one line per input, why a BLOCKED
    cell cannot run."""

    key: JobKey
    inputs: Mapping[str, Path | None]
    output_dir: Path
    options: Mapping[str, Any]
    argv: tuple[str, ...]
    missing: tuple[str, ...] = field(default=())
    pointers: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    expected_outputs: tuple[str, ...] = ()
    sought: Mapping[str, Path] = field(default_factory=dict)

    @property
    def blocked(self) -> bool:
        return bool(self.missing)


# --- command templates -------------------------------------------------------------------
# A template is a list whose items are either a string with {placeholders}, or a mapping
# {"flag": "--x", "value": "{y}", "when": "<name>"} included only when <name> is a true
# option or an optional input that is present ("value", when given, follows the flag).

_FORMATTER = string.Formatter()
PATH_ATTRIBUTES = ("parent", "name", "stem")


def placeholders(text: str) -> list[str]:
    """Field names used in a template string (``{pinn.parent}`` gives ``pinn.parent``)."""
    return [name for _, name, _, _ in _FORMATTER.parse(text) if name is not None]


def check_placeholders(text: str, known: set[str]) -> str | None:
    """An error message for the first unknown placeholder of ``text``, or None."""
    try:
        names = placeholders(text)
    except ValueError as exc:
        return f"malformed template {text!r}: {exc}"
    for name in names:
        base, _, attr = name.partition(".")
        if not name or base not in known or (attr and attr not in PATH_ATTRIBUTES):
            allowed = ", ".join(sorted(known))
            return f"unknown placeholder {{{name}}} in {text!r}; known: {allowed} (paths also take .parent/.name/.stem)"
    return None


def render(text: str, values: Mapping[str, Any]) -> str:
    return text.format_map(values)


def render_argv(template: Sequence[Any], values: Mapping[str, Any]) -> tuple[str, ...]:
    argv: list[str] = []
    for item in template:
        if isinstance(item, Mapping):
            if values.get(item["when"]) not in (None, False):
                argv.append(render(item["flag"], values))
                if "value" in item:
                    argv.append(render(item["value"], values))
        else:
            argv.append(render(str(item), values))
    return tuple(argv)
