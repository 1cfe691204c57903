"""Study YAML -> validated Study -> Grid of Cells (pure apart from reading the inputs).

A study file is merged into the built-in study (the fly64 layout) key by key: mappings
merge recursively, any other value replaces, and null removes the key (:func:`deep_merge`).
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
import sys
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .errors import ConfigError, env_names, expect, unknown_keys
from .fileio import file_digest
from .jobs import Cell, JobKey, check_placeholders, placeholders, render, render_argv
from .yamlio import load_mapping

KEYS = {"name", "roots", "doses", "doses_from", "views", "splits", "inputs", "output_dir", "options", "command",
        "workdir", "capture_env", "expected_outputs", "code_paths"}  # fmt: skip
INPUT_KEYS = {"path", "json", "field", "join", "optional"}
# Names every template knows besides roots, options and inputs; an input may not take one.
RESERVED = {"dose", "view", "split", "python", "artifact_root", "output_dir", "workdir"}
RESULT_FIELDS = {"state", "returncode", "log_path", "stderr_path", "error"}  # beside the inputs in execution_results
_DOSE_DIR = re.compile(r"^dose_(\d+)$")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def default_study_dict() -> dict:
    return yaml.safe_load(resources.files("gridsubmit").joinpath("data/default_study.yaml").read_text())


def deep_merge(base: Any, overlay: Any) -> Any:
    """``overlay`` laid over ``base``: mappings merge key by key, null removes a key, any
    other value replaces (lists included)."""
    if not isinstance(overlay, dict):
        return copy.deepcopy(overlay)
    out = copy.deepcopy(base) if isinstance(base, dict) else {}
    for key, value in overlay.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = deep_merge(out.get(key), value)
    return out


@dataclass(frozen=True)
class Filters:
    doses: tuple[int, ...] = ()
    views: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"dose": list(self.doses), "view": list(self.views), "split": list(self.splits)}

    def stray(self, doses: Sequence[int], views: Sequence[str], splits: Sequence[str], owner: str) -> str | None:
        """What in these filters matches none of ``owner``'s values ("--view Dense ..."), or None."""
        for flag, wanted, present in (("--dose", self.doses, doses), ("--view", self.views, views),
                                      ("--split", self.splits, splits)):  # fmt: skip
            stray = [w for w in wanted if w not in present]
            if stray:
                return f"{flag} {', '.join(map(str, stray))} matches {owner}; it has: {', '.join(map(str, present))}"
        return None

    def matches(self, key: JobKey) -> bool:
        return (
            (not self.doses or key.dose in self.doses)
            and (not self.views or key.view in self.views)
            and (not self.splits or key.split in self.splits)
        )


@dataclass(frozen=True)
class InputSpec:
    """How one input is found: a path template, or a field of a JSON file (the pointer)
    joined with a name. Templates are per view ("*": any other view)."""

    path: Mapping[str, str] | None = None
    json: Mapping[str, str] | None = None
    field: str | None = None
    join: str | None = None
    optional: bool = False

    def as_dict(self) -> dict:
        out: dict[str, Any] = {"path": dict(self.path)} if self.path else {"json": dict(self.json or {}), "field": self.field}
        if self.join:
            out["join"] = self.join
        return {**out, "optional": self.optional}


@dataclass(frozen=True)
class Study:
    source: str  # file the study came from, or "built-in study"
    name: str
    roots: Mapping[str, Path | None]
    doses: Sequence[int] | str
    doses_from: str
    views: Sequence[str]
    splits: Sequence[str]
    inputs: Mapping[str, InputSpec]  # in order: an input may refer to those before it
    output_dir: str
    options: Mapping[str, Any]
    command: Sequence[Any]
    workdir: Path | None = None  # None: the directory gridsubmit is run from
    capture_env: tuple[str, ...] = ()
    expected_outputs: tuple[str, ...] = ()
    digest: str | None = None  # sha256 of the study file, when read from one (edits are noticed later)
    given_roots: Mapping[str, str] = field(default_factory=dict)  # roots given beside the file (--phase-c-root)
    code_paths: tuple[str, ...] = ()  # globs relative to the working directory: code the results depend on

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "name": self.name,
            "roots": {k: str(v) if v else None for k, v in self.roots.items()},
            "doses": list(self.doses) if not isinstance(self.doses, str) else self.doses,
            "views": list(self.views),
            "splits": list(self.splits),
            "inputs": {k: v.as_dict() for k, v in self.inputs.items()},
            "output_dir": self.output_dir,
            "options": dict(self.options),
            "command": list(self.command),
            "workdir": str(self.workdir) if self.workdir else None,
            "capture_env": list(self.capture_env),
            "expected_outputs": list(self.expected_outputs),
            "code_paths": list(self.code_paths),
        }


@dataclass
class Grid:
    study: Study
    filters: Filters
    workdir: Path
    jobs: list[Cell] = field(default_factory=list)
    given: bool = False  # the cells came from the caller (the API's jobs), not from the study's axes

    @property
    def runnable(self) -> list[Cell]:
        return [job for job in self.jobs if not job.blocked]

    @property
    def blocked(self) -> list[Cell]:
        return [job for job in self.jobs if job.blocked]


def load_study(path: str | Path | Mapping | None = None, roots: Mapping[str, str | Path | None] | None = None) -> Study:
    """Read a study (a YAML file, a mapping, or None for the built-in fly64 layout), merge
    it into the built-in study, validate. ``roots`` set roots by name (phase_c=...)."""
    merged = default_study_dict()
    own_options: set[str] = set()
    base = Path.cwd()
    source = "built-in study"
    if path is not None:
        data = dict(path) if isinstance(path, Mapping) else load_mapping(path)
        source = "study mapping" if isinstance(path, Mapping) else str(path)
        unknown_keys(data, KEYS, source)
        own_options = set(data.get("options") or {}) if isinstance(data.get("options"), dict) else set()
        merged = deep_merge(merged, data)
        if not isinstance(path, Mapping):
            base = Path(path).resolve().parent
    root_values = dict(expect(merged.get("roots") or {}, dict, source, "roots"))
    for name, value in (roots or {}).items():
        if value is not None:  # given on the command line: relative to the current directory
            root_values[name] = os.path.abspath(os.path.expanduser(value))
    merged["roots"] = root_values
    study = _validate(merged, source, base)
    _check_options_used(study, own_options)
    if path is None or isinstance(path, Mapping):
        return study
    given = {name: root_values[name] for name, value in (roots or {}).items() if value is not None}
    return replace(study, digest=file_digest(path), given_roots=given)


def _required(d: dict, key: str, src: str) -> Any:
    if key not in d:
        raise ConfigError(src, key, "missing (a null removed it from the built-in study)")
    return d[key]


def _validate(d: dict, src: str, base: Path) -> Study:
    name = expect(_required(d, "name", src), str, src, "name")
    roots: dict[str, Path | None] = {}
    for rname, value in d["roots"].items():
        if not isinstance(rname, str) or not _NAME.fullmatch(rname):
            raise ConfigError(src, f"roots.{rname}", "expected a root name of letters, digits and '_'")
        if value is None:
            roots[rname] = None
            continue
        path = Path(expect(value, str, src, f"roots.{rname}")).expanduser()
        roots[rname] = Path(os.path.normpath(path if path.is_absolute() else base / path))
    doses = _required(d, "doses", src)
    if isinstance(doses, str):
        if doses != "discover":
            raise ConfigError(src, "doses", f"expected a list of integers or 'discover', got {doses!r}")
    else:
        expect(doses, list, src, "doses")
        for i, dose in enumerate(doses):
            expect(dose, int, src, f"doses[{i}]")
            if dose <= 0:
                raise ConfigError(src, f"doses[{i}]", f"expected a positive integer, got {dose}")
        _no_repeats(doses, src, "doses")
    doses_from = expect(d.get("doses_from", "phase_c"), str, src, "doses_from")
    axes = {}
    for axis in ("views", "splits"):
        values = expect(_required(d, axis, src), list, src, axis)
        if not values:
            raise ConfigError(src, axis, "expected at least one value")
        for i, value in enumerate(values):
            if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", value) or value in (".", ".."):
                raise ConfigError(src, f"{axis}[{i}]", f"expected a name of letters, digits, '_', '-' or '.' that can "
                                  f"name one folder (not '.' or '..'), got {value!r}")
        _no_repeats(values, src, axis)
        axes[axis] = values
    options = expect(d.get("options") or {}, dict, src, "options")
    for key, value in options.items():
        expect(value, (bool, int, float, str), src, f"options.{key}")
    if "ms_ssim_sigma" in options:
        expect(options["ms_ssim_sigma"], (int, float), src, "options.ms_ssim_sigma")
        if options["ms_ssim_sigma"] <= 0:
            raise ConfigError(src, "options.ms_ssim_sigma", f"expected a positive number, got {options['ms_ssim_sigma']}")

    names = RESERVED - {"output_dir"} | {f"{r}_root" for r in roots} | set(options)
    inputs: dict[str, InputSpec] = {}
    for iname, spec in expect(d.get("inputs") or {}, dict, src, "inputs").items():
        taken = names | RESERVED | RESULT_FIELDS
        if not isinstance(iname, str) or not _NAME.fullmatch(iname) or iname in taken:
            raise ConfigError(src, f"inputs.{iname}", "expected an input name of letters, digits and '_' that is not "
                              f"already taken ({', '.join(sorted(taken))})")  # fmt: skip
        inputs[iname] = _input_spec(spec, names, axes["views"], src, f"inputs.{iname}")
        names = names | {iname}
    output_dir = _template(_required(d, "output_dir", src), names, src, "output_dir")
    names = names | {"output_dir"}
    command = list(expect(_required(d, "command", src), list, src, "command"))
    if not command:
        raise ConfigError(src, "command", "expected a non-empty argv list")
    optional = {n for n, spec in inputs.items() if spec.optional}
    for i, item in enumerate(command):
        key = f"command[{i}]"
        if isinstance(item, dict):
            unknown_keys(item, {"flag", "value", "when"}, src, f"{key}.")
            if not {"flag", "when"} <= set(item):
                raise ConfigError(src, key, "a conditional item needs 'flag' and 'when' (and may have 'value')")
            when = item["when"]
            if not (isinstance(options.get(when), bool) or when in inputs):
                raise ConfigError(src, f"{key}.when", f"expected the name of a true/false option or of an input, got {when!r}")
            for part in ("flag", "value"):
                if part in item:
                    _template(item[part], names, src, f"{key}.{part}")
                    _optional_guarded(item[part], optional - {when}, src, f"{key}.{part}")
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            command[i] = str(item)
        else:
            _template(item, names, src, key)
            _optional_guarded(item, optional, src, key)
    workdir = None
    if d.get("workdir") is not None:
        workdir = Path(expect(d["workdir"], str, src, "workdir")).expanduser()
        workdir = Path(os.path.normpath(workdir if workdir.is_absolute() else base / workdir))
    capture = tuple(env_names(d.get("capture_env") or [], src, "capture_env"))
    expected = expect(d.get("expected_outputs") or [], list, src, "expected_outputs")
    for i, rel in enumerate(expected):
        if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ConfigError(src, f"expected_outputs[{i}]", f"expected a file name relative to the output folder, got {rel!r}")
    code_paths = expect(d.get("code_paths") or [], list, src, "code_paths")
    for i, glob in enumerate(code_paths):
        if not isinstance(glob, str) or not glob.strip() or Path(glob).is_absolute() or ".." in Path(glob).parts:
            raise ConfigError(src, f"code_paths[{i}]", f"expected a glob relative to the working directory (e.g. "
                              f"'ptycho/**/*.py'), got {glob!r}")  # fmt: skip
    return Study(src, name, roots, doses, doses_from, axes["views"], axes["splits"], inputs, output_dir, options,
                 command, workdir, capture, tuple(expected), code_paths=tuple(code_paths))  # fmt: skip


def _check_options_used(study: Study, names: set[str]) -> None:
    """An option the study file sets that nothing reads is a mistake (``ms_ssim_sigam``):
    every cell would run without it, and look right."""
    used: set[str] = set()
    templates = [study.output_dir]
    for spec in study.inputs.values():
        templates += [*(spec.path or {}).values(), *(spec.json or {}).values()]
    for item in study.command:
        if isinstance(item, dict):
            used.add(item["when"])
            templates += [item[part] for part in ("flag", "value") if part in item]
        else:
            templates.append(item)
    for template in templates:
        used |= {name.partition(".")[0] for name in placeholders(template)}
    for name in sorted(names - used):
        known = sorted(set(study.options) & used)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(study.source, f"options.{name}", f"no command item or template uses this option{hint}; "
                          f"the options the command uses: {', '.join(known) or 'none'}")  # fmt: skip


def _no_repeats(values: list, src: str, key: str) -> None:
    seen = set()
    for i, value in enumerate(values):
        if value in seen:
            raise ConfigError(src, f"{key}[{i}]", f"{value!r} is listed twice")
        seen.add(value)


def _input_spec(spec: Any, known: set[str], views: list[str], src: str, key: str) -> InputSpec:
    """An input as a template, a view -> template mapping, or a mapping with path/json."""
    if isinstance(spec, str):
        return InputSpec(path=_by_view(spec, known, views, src, key))
    expect(spec, dict, src, key)
    if not {"path", "json"} & set(spec):
        return InputSpec(path=_by_view(spec, known, views, src, key))
    mixed = sorted(set(spec) - INPUT_KEYS)
    if mixed:
        raise ConfigError(src, f"{key}.{mixed[0]}", f"unknown key beside 'path'/'json'; expected one of: "
                          f"{', '.join(sorted(INPUT_KEYS))} (per-view templates go under 'path' or 'json')")  # fmt: skip
    if "path" in spec and "json" in spec:
        raise ConfigError(src, key, "give either 'path' or 'json', not both (a study file is merged into the built-in "
                          "study: to turn a 'json' input into a 'path' one, also set json: null, field: null)")  # fmt: skip
    optional = expect(spec.get("optional", False), bool, src, f"{key}.optional")
    join = spec.get("join")
    if join is not None:
        expect(join, str, src, f"{key}.join")
    if "path" in spec:
        for extra in ("field", "join"):
            if extra in spec:
                raise ConfigError(src, f"{key}.{extra}", "applies to 'json' inputs only")
        return InputSpec(path=_by_view(spec["path"], known, views, src, f"{key}.path"), optional=optional)
    fld = spec.get("field")
    if not isinstance(fld, str) or not fld or any(not part for part in fld.split(".")):
        raise ConfigError(src, f"{key}.field", f"expected the JSON field that holds the path (e.g. output_dir), got {fld!r}")
    return InputSpec(json=_by_view(spec["json"], known, views, src, f"{key}.json"), field=fld, join=join, optional=optional)


def _by_view(spec: Any, known: set[str], views: list[str], src: str, key: str) -> dict[str, str]:
    if isinstance(spec, str):
        return {"*": _template(spec, known, src, key)}
    expect(spec, dict, src, key)
    out = {view: _template(t, known, src, f"{key}.{view}") for view, t in spec.items()}
    for view in views:
        if view not in out and "*" not in out:
            raise ConfigError(src, key, f"no template for view {view!r} and no '*' default")
    return out


def _template(value: Any, known: set[str], src: str, key: str) -> str:
    expect(value, str, src, key)
    problem = check_placeholders(value, known)
    if problem:
        raise ConfigError(src, key, problem)
    return value


def _optional_guarded(text: str, optional: set[str], src: str, key: str) -> None:
    used = {name.partition(".")[0] for name in placeholders(text)} & optional
    if used:
        name = sorted(used)[0]
        raise ConfigError(src, key, f"input {name!r} is optional and may be absent: use it in a conditional item "
                          f"such as {{flag: --x, value: '{{{name}}}', when: {name}}}")  # fmt: skip


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


def _check_roots(study: Study) -> dict[str, Path]:
    problems = []
    for name in study.roots:
        try:
            _root(study, name, f"roots.{name}")
        except ConfigError as exc:
            problems.append(exc)
    if len(problems) == 1:
        raise problems[0]
    if problems:  # every missing root at once, not one per try
        raise ConfigError(study.source, "roots", "\n  " + "\n  ".join(f"{p.key}: {p.message}" for p in problems))
    return {name: path for name, path in study.roots.items() if path is not None}


def plan(study: Study, artifact_root: str | Path, filters: Filters = Filters(), python: str | None = None,
         workdir: str | Path | None = None, given: Sequence[tuple[JobKey, Mapping[str, Any]]] | None = None) -> Grid:  # fmt: skip
    """Every cell of the grid in run order, with BLOCKED cells saying why.

    ``given``: the cells themselves, each with values for some inputs and options (the
    Python API's jobs); roots are then needed only by the templates still rendered."""
    workdir = Path(workdir or study.workdir or Path.cwd()).expanduser().resolve()
    if not workdir.is_dir():
        raise ConfigError(study.source, "workdir", f"the working directory {workdir} does not exist")
    artifact_root = Path(artifact_root).resolve()
    if given is None:
        roots = _check_roots(study)
        doses = discover_doses(study) if isinstance(study.doses, str) else sorted(study.doses)
        stray = filters.stray(doses, study.views, study.splits, "nothing in the study")
        if stray:
            raise ConfigError(study.source, stray.split()[0].lstrip("-") + "s", stray)
        keys = [JobKey(dose, view, split) for dose in doses for view in study.views for split in study.splits]
        cells: list[tuple[JobKey, Mapping[str, Any]]] = [(k, {}) for k in sorted(keys, key=JobKey.sort_key) if filters.matches(k)]
    else:
        roots = {name: path for name, path in study.roots.items() if path is not None}
        cells = sorted(given, key=lambda c: c[0].sort_key())
    grid = Grid(study, filters, workdir, given=given is not None)
    for key, preset in cells:
        grid.jobs.append(_cell(study, key, preset, roots, artifact_root, workdir, python or sys.executable))
    outputs: dict[Path, JobKey] = {}
    for job in grid.jobs:
        if job.output_dir in outputs:
            raise ConfigError(study.source, "output_dir", f"cells {outputs[job.output_dir]} and {job.key} would both "
                              f"write to {job.output_dir}; the template must name dose, view and split")  # fmt: skip
        outputs[job.output_dir] = job.key
    return grid


def _cell(study: Study, key: JobKey, preset: Mapping[str, Any], roots: Mapping[str, Path], artifact_root: Path,
          workdir: Path, python: str) -> Cell:  # fmt: skip
    values: dict[str, Any] = {"dose": key.dose, "view": key.view, "split": key.split, "python": python,
                              "artifact_root": artifact_root, "workdir": workdir}  # fmt: skip
    values.update({f"{name}_root": path for name, path in roots.items()})
    options = {**study.options, **{k: v for k, v in preset.items() if k in study.options}}
    values.update(options)
    inputs: dict[str, Path | None] = {}
    pointers: dict[str, dict[str, str]] = {}
    sought: dict[str, Path] = {}  # absent optional inputs: where they were looked for
    missing: list[str] = []
    for iname, spec in study.inputs.items():
        deps = [dep for dep in _deps(spec, key.view) if dep in study.inputs] if iname not in preset else []
        if any(dep not in inputs for dep in deps):
            continue  # found through an input that is already missing: that one is the reason
        absent = [dep for dep in deps if inputs[dep] is None]
        if absent:  # found through an optional input that is absent
            if not spec.optional:
                missing.append(f"{iname}: found through {absent[0]}, which is absent")
            inputs[iname] = values[iname] = None
            continue
        if iname in preset:
            path, problem, absent_at = _given(iname, preset[iname], spec, workdir)
        else:
            path, problem, absent_at, pointer = _resolve(study, iname, spec, key.view, values, workdir)
            if pointer:
                pointers[iname] = pointer
        if absent_at is not None:
            sought[iname] = absent_at
        if problem:
            missing.append(problem)
        elif path is not None or spec.optional:
            inputs[iname] = path
        values[iname] = path
    for iname in study.inputs:
        inputs.setdefault(iname, values.get(iname))  # a missing one keeps the path it was looked for at
    output_dir = Path(_render(study, study.output_dir, values, "output_dir"))
    values["output_dir"] = output_dir if output_dir.is_absolute() else workdir / output_dir
    renderable = all(values.get(n) is not None for n, s in study.inputs.items() if not s.optional)
    argv = render_argv(study.command, values) if renderable else ()
    return Cell(key, inputs, values["output_dir"], options, argv, tuple(missing), pointers, study.expected_outputs,
                sought)


def _deps(spec: InputSpec, view: str) -> list[str]:
    template = _pick(spec.path or spec.json or {}, view)
    return [name.partition(".")[0] for name in placeholders(template)]


def _pick(by_view: Mapping[str, str], view: str) -> str:
    return by_view.get(view, by_view.get("*", ""))


def _render(study: Study, template: str, values: Mapping[str, Any], key: str) -> str:
    try:
        return render(template, values)
    except KeyError as exc:  # a root the API caller did not set
        root = exc.args[0].removesuffix("_root")
        raise ConfigError(study.source, key, f"needs root {root!r}, which is not set (give it, or give this input per job)") from None


def _absolute(value: Any, workdir: Path) -> Path:
    path = Path(value)
    return path if path.is_absolute() else workdir / path


def _exists(name: str, path: Path, spec: InputSpec, why: str) -> tuple[Path | None, str | None, Path | None]:
    """(path, None, None) when it exists; else, for an optional input, (None, None, path: where
    it was looked for), and for any other (path, why the cell is blocked, None)."""
    if path.exists():
        return path, None, None
    return (None, None, path) if spec.optional else (path, f"{name}: {path} {why}", None)


def _given(name: str, value: Any, spec: InputSpec, workdir: Path) -> tuple[Path | None, str | None, Path | None]:
    """An input given per job: as :func:`_exists`."""
    if value is None:
        return None, None if spec.optional else f"{name}: not given", None
    return _exists(name, _absolute(value, workdir), spec, "does not exist")


def _resolve(study: Study, name: str, spec: InputSpec, view: str, values: Mapping[str, Any],
             workdir: Path) -> tuple[Path | None, str | None, Path | None, dict | None]:  # fmt: skip
    """As :func:`_exists`, and the pointer read (or None)."""
    if spec.path is not None:
        path = _absolute(_render(study, _pick(spec.path, view), values, f"inputs.{name}"), workdir)
        return (*_exists(name, path, spec, "does not exist"), None)
    pointer = _absolute(_render(study, _pick(spec.json or {}, view), values, f"inputs.{name}.json"), workdir)
    record = {"file": str(pointer), "field": spec.field or ""}
    target, problem = read_pointer(pointer, spec.field or "", spec.join)
    if problem:
        return None, f"{name}: {problem}", None, record
    record["target"] = str(target)
    return (*_exists(name, target, spec, f"does not exist (named by field '{spec.field}' of {pointer})"), record)


def read_pointer(pointer: Path, field_path: str, join: str | None) -> tuple[Path, str | None]:
    """The path a JSON file names in ``field_path`` (dotted), joined with ``join``;
    relative values are taken from the JSON file's folder."""
    try:
        data: Any = json.loads(pointer.read_text())
    except FileNotFoundError:
        return Path(), f"pointer file {pointer} does not exist"
    except (OSError, UnicodeDecodeError) as exc:
        return Path(), f"cannot read pointer file {pointer}: {getattr(exc, 'strerror', None) or exc}"
    except json.JSONDecodeError as exc:
        return Path(), f"pointer file {pointer} is not valid JSON ({exc.msg} at line {exc.lineno})"
    for part in field_path.split("."):
        if not isinstance(data, dict) or part not in data:
            return Path(), f"pointer file {pointer} has no field '{field_path}'"
        data = data[part]
    if not isinstance(data, str) or not data:
        return Path(), f"field '{field_path}' of {pointer} is not a path (got {data!r})"
    target = Path(data).expanduser()
    target = target if target.is_absolute() else pointer.parent / target
    return (target / join if join else target), None
