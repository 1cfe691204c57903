"""Study YAML -> validated Study -> Grid of ComparisonJob (pure apart from reading the tree)."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .errors import ConfigError, expect, unknown_keys
from .jobs import ComparisonJob, JobKey, check_placeholders, render, render_argv
from .yamlio import load_mapping

KEYS = {"name", "roots", "doses", "doses_from", "views", "splits", "inputs", "output_dir", "options", "command"}
_DOSE_DIR = re.compile(r"^dose_(\d+)$")


def default_study_dict() -> dict:
    return yaml.safe_load(resources.files("gridsubmit").joinpath("data/default_study.yaml").read_text())


@dataclass(frozen=True)
class Filters:
    doses: tuple[int, ...] = ()
    views: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"dose": list(self.doses), "view": list(self.views), "split": list(self.splits)}

    def matches(self, key: JobKey) -> bool:
        return (
            (not self.doses or key.dose in self.doses)
            and (not self.views or key.view in self.views)
            and (not self.splits or key.split in self.splits)
        )


@dataclass(frozen=True)
class Study:
    source: str  # file the study came from, or "built-in"
    name: str
    roots: Mapping[str, Path | None]
    doses: Sequence[int] | str
    doses_from: str
    views: Sequence[str]
    splits: Sequence[str]
    inputs: Mapping[str, Mapping[str, str]]  # name -> {view or "*": template}
    output_dir: str
    options: Mapping[str, Any]
    command: Sequence[Any]

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "name": self.name,
            "roots": {k: str(v) if v else None for k, v in self.roots.items()},
            "doses": list(self.doses) if not isinstance(self.doses, str) else self.doses,
            "views": list(self.views),
            "splits": list(self.splits),
            "inputs": {k: dict(v) for k, v in self.inputs.items()},
            "output_dir": self.output_dir,
            "options": dict(self.options),
            "command": list(self.command),
        }


@dataclass
class Grid:
    study: Study
    filters: Filters
    jobs: list[ComparisonJob] = field(default_factory=list)

    @property
    def runnable(self) -> list[ComparisonJob]:
        return [job for job in self.jobs if not job.blocked]

    @property
    def blocked(self) -> list[ComparisonJob]:
        return [job for job in self.jobs if job.blocked]


def load_study(path: str | Path | None, root_overrides: Mapping[str, str | Path] | None = None) -> Study:
    """Read a study file (None: the built-in fly64 layout), lay it over the defaults, validate."""
    merged = default_study_dict()
    base = Path.cwd()
    source = "built-in study"
    if path is not None:
        data = load_mapping(path)
        unknown_keys(data, KEYS, path)
        merged.update(data)
        base = Path(path).resolve().parent
        source = str(path)
    roots = dict(merged.get("roots") or {})
    for name, value in (root_overrides or {}).items():
        if value is not None:
            roots[name] = str(value)
    merged["roots"] = roots
    return _validate(merged, source, base)


def _validate(d: dict, src: str, base: Path) -> Study:
    name = expect(d["name"], str, src, "name")
    roots: dict[str, Path | None] = {}
    for rname, value in expect(d["roots"], dict, src, "roots").items():
        if value is None:
            roots[rname] = None
            continue
        path = Path(expect(value, str, src, f"roots.{rname}")).expanduser()
        roots[rname] = path if path.is_absolute() else (base / path)
    doses = d["doses"]
    if isinstance(doses, str):
        if doses != "discover":
            raise ConfigError(src, "doses", f"expected a list of integers or 'discover', got {doses!r}")
    else:
        expect(doses, list, src, "doses")
        for i, dose in enumerate(doses):
            expect(dose, int, src, f"doses[{i}]")
            if dose <= 0:
                raise ConfigError(src, f"doses[{i}]", f"expected a positive integer, got {dose}")
    doses_from = expect(d["doses_from"], str, src, "doses_from")
    axes = {}
    for axis in ("views", "splits"):
        values = expect(d[axis], list, src, axis)
        if not values:
            raise ConfigError(src, axis, "expected at least one value")
        for i, value in enumerate(values):
            if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
                raise ConfigError(src, f"{axis}[{i}]", f"expected a name of letters, digits, '_', '-' or '.', got {value!r}")
        axes[axis] = values
    options = expect(d["options"] or {}, dict, src, "options")
    for key, value in options.items():
        expect(value, (bool, int, float, str), src, f"options.{key}")
    if "ms_ssim_sigma" in options:
        expect(options["ms_ssim_sigma"], (int, float), src, "options.ms_ssim_sigma")
        if options["ms_ssim_sigma"] <= 0:
            raise ConfigError(src, "options.ms_ssim_sigma", f"expected a positive number, got {options['ms_ssim_sigma']}")

    base_names = {"dose", "view", "split", "python", "artifact_root"} | {f"{r}_root" for r in roots} | set(options)
    inputs: dict[str, dict[str, str]] = {}
    for iname, spec in expect(d["inputs"] or {}, dict, src, "inputs").items():
        by_view = {"*": spec} if isinstance(spec, str) else expect(spec, dict, src, f"inputs.{iname}")
        for view, template in by_view.items():
            key = f"inputs.{iname}" + ("" if isinstance(spec, str) else f".{view}")
            _template(template, base_names, src, key)
        inputs[iname] = dict(by_view)
    output_dir = _template(d["output_dir"], base_names | set(inputs), src, "output_dir")
    names = base_names | set(inputs) | {"output_dir"}
    command = expect(d["command"], list, src, "command")
    if not command:
        raise ConfigError(src, "command", "expected a non-empty argv list")
    for i, item in enumerate(command):
        key = f"command[{i}]"
        if isinstance(item, dict):
            unknown_keys(item, {"flag", "when"}, src, f"{key}.")
            if set(item) != {"flag", "when"}:
                raise ConfigError(src, key, "a conditional item needs both 'flag' and 'when'")
            _template(item["flag"], names, src, f"{key}.flag")
            if not isinstance(options.get(item["when"]), bool):
                raise ConfigError(src, f"{key}.when", f"expected the name of a true/false option, got {item['when']!r}")
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            command[i] = str(item)
        else:
            _template(item, names, src, key)
    for view in axes["views"]:
        for iname, by_view in inputs.items():
            if view not in by_view and "*" not in by_view:
                raise ConfigError(src, f"inputs.{iname}", f"no template for view {view!r} and no '*' default")
    return Study(src, name, roots, doses, doses_from, axes["views"], axes["splits"], inputs, output_dir, options, command)


def _template(value: Any, known: set[str], src: str, key: str) -> str:
    expect(value, str, src, key)
    problem = check_placeholders(value, known)
    if problem:
        raise ConfigError(src, key, problem)
    return value


def discover_doses(study: Study) -> list[int]:
    root = _root(study, study.doses_from, "doses_from")
    found = sorted(int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := _DOSE_DIR.match(p.name)))
    if not found:
        raise ConfigError(study.source, "doses", f"'discover' found no dose_<N> folder under {root}")
    return found


def _root(study: Study, name: str, key: str) -> Path:
    if name not in study.roots:
        raise ConfigError(study.source, key, f"no root named {name!r}; roots are: {', '.join(study.roots)}")
    path = study.roots[name]
    if path is None:
        flag = "--" + name.replace("_", "-") + "-root"
        raise ConfigError(study.source, f"roots.{name}", f"not set; give it in the study file or with {flag}")
    if not path.is_dir():
        raise ConfigError(study.source, f"roots.{name}", f"folder does not exist: {path}")
    return path


def plan(study: Study, artifact_root: str | Path, filters: Filters = Filters(), python: str | None = None) -> Grid:
    """Every cell of the grid in run order, with BLOCKED cells listing their missing inputs."""
    roots = {name: _root(study, name, f"roots.{name}") for name in study.roots}
    doses = discover_doses(study) if isinstance(study.doses, str) else sorted(study.doses)
    for flag, wanted, present in (("--dose", filters.doses, doses), ("--view", filters.views, study.views),
                                  ("--split", filters.splits, study.splits)):  # fmt: skip
        stray = [w for w in wanted if w not in present]
        if stray:
            raise ConfigError(study.source, flag.lstrip("-") + "s", f"{flag} {', '.join(map(str, stray))} matches nothing; "
                              f"the study has: {', '.join(map(str, present))}")  # fmt: skip
    artifact_root = Path(artifact_root).resolve()
    keys = [JobKey(dose, view, split) for dose in doses for view in study.views for split in study.splits]
    keys = sorted((k for k in keys if filters.matches(k)), key=JobKey.sort_key)
    grid = Grid(study, filters)
    for key in keys:
        values: dict[str, Any] = {"dose": key.dose, "view": key.view, "split": key.split,
                                  "python": python or sys.executable, "artifact_root": artifact_root}  # fmt: skip
        values.update({f"{name}_root": path for name, path in roots.items()})
        values.update(study.options)
        inputs = {}
        for iname, by_view in study.inputs.items():
            inputs[iname] = Path(render(by_view.get(key.view, by_view.get("*")), values))
        values.update(inputs)
        output_dir = Path(render(study.output_dir, values))
        values["output_dir"] = output_dir
        missing = tuple(str(p) for p in inputs.values() if not p.exists())
        argv = render_argv(study.command, values)
        grid.jobs.append(ComparisonJob(key, inputs, output_dir, dict(study.options), argv, missing))
    return grid
