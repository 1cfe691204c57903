"""Cluster profile YAML -> ClusterProfile, and the resources of each cell (pure).

One schema for every backend: keys that only make sense on SLURM are refused in a local
profile with a message saying so, rather than silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError, env_names, expect, unknown_keys
from .jobs import JobKey
from .states import JobState
from .yamlio import load_mapping

BACKENDS = ("local", "slurm")
GPU_REQUEST_FORMS = ("gres", "gpus-per-node", "gpus")


@dataclass(frozen=True)
class Resources:
    """What one job asks of the scheduler. Cells with equal Resources share a job array."""

    time_s: int
    gpus_per_job: int = 0
    partition: str | None = None
    gpu_type: str | None = None
    cpus_per_task: int | None = None
    mem_mb: int | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None

    def as_dict(self) -> dict:
        # by hand: dataclasses.asdict deep-copies, and a 10,000-cell plan calls this 20,000 times
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


RESOURCE_KEYS = {"time", "gpus_per_job", "partition", "gpu_type", "cpus_per_task", "mem", "account", "qos", "constraint"}
SLURM_ONLY = {"partition", "gpu_type", "cpus_per_task", "mem", "account", "qos", "constraint", "gpu_request",
              "array_parallelism", "max_array_size", "use_srun", "sbatch_extra", "warn_signal",
              "cells_per_job", "max_queued"}  # fmt: skip
LOCAL_ONLY = {"max_parallel", "gpus"}
TOP_KEYS = RESOURCE_KEYS | SLURM_ONLY | LOCAL_ONLY | {"backend", "name", "env", "capture_env", "setup", "python", "poll_interval", "retry",
                                                      "overrides", "notify", "notify_timeout"}  # fmt: skip
RETRYABLE = {JobState.LOST, JobState.NODE_FAIL, JobState.PREEMPTED, JobState.TIMEOUT, JobState.OUT_OF_MEMORY}


@dataclass(frozen=True)
class Override:
    match: Mapping[str, Any]  # dose: int | list | ">=2000"; view/split: str | list
    changes: Mapping[str, Any]  # resource fields, already parsed

    def applies(self, key: JobKey) -> bool:
        for axis, want in self.match.items():
            value = getattr(key, axis)
            if isinstance(want, str) and axis == "dose":
                op, bound = re.fullmatch(r"(>=|<=|>|<|==)\s*(\d+)", want).groups()
                ok = {">=": value >= int(bound), "<=": value <= int(bound), ">": value > int(bound),
                      "<": value < int(bound), "==": value == int(bound)}[op]  # fmt: skip
            elif isinstance(want, list):
                ok = value in want
            else:
                ok = value == want
            if not ok:
                return False
        return True


@dataclass(frozen=True)
class Retry:
    max_attempts: int = 3
    on: frozenset[JobState] = frozenset({JobState.LOST, JobState.NODE_FAIL, JobState.PREEMPTED})
    time_factor: float = 2.0  # TIMEOUT retried with this much more time
    memory_factor: float = 2.0  # OUT_OF_MEMORY retried with this much more memory


DEFAULT_MAX_QUEUED = 500  # well below the usual MaxSubmitJobs (1000 or more)


@dataclass(frozen=True)
class ClusterProfile:
    source: str
    backend: str
    name: str
    resources: Resources
    overrides: tuple[Override, ...] = ()
    retry: Retry = Retry()
    env: Mapping[str, str] = field(default_factory=dict)  # set in every cell, over the captured variables
    capture_env: tuple[str, ...] = ()  # variables of the submitting shell to carry to every attempt
    python: str | None = None
    poll_min_s: float = 0.02
    poll_max_s: float = 1.0
    # local
    max_parallel: int | None = None
    gpus: tuple[int, ...] | None = None
    # slurm
    gpu_request: str = "gres"
    array_parallelism: int | None = None
    max_array_size: int | None = None
    setup: tuple[str, ...] = ()
    use_srun: bool = False
    sbatch_extra: Mapping[str, str | bool] = field(default_factory=dict)  # true: a flag without value
    warn_signal: str | None = None  # SLURM --signal before the limit, forwarded to the command
    cells_per_job: int = 1  # cells run one after another in one job (array task)
    max_queued: int = DEFAULT_MAX_QUEUED  # jobs (array tasks) of the run in the queue at once
    notify: tuple[str, ...] = ()  # argv run (without a shell) once per event: end, first-failure, stuck
    notify_timeout_s: float = 30.0  # a notifier still running then is killed (and recorded so)
    raw: Mapping[str, Any] = field(default_factory=dict)  # as written, for the manifest

    def resources_for(self, key: JobKey, attempt_fates: tuple[JobState, ...] = ()) -> Resources:
        """The cell's resources: defaults, then matching overrides in order, then growth
        for retries after TIMEOUT / OUT_OF_MEMORY."""
        res = self.resources
        for override in self.overrides:
            if override.applies(key):
                res = replace(res, **override.changes)
        for fate in attempt_fates:
            if fate is JobState.TIMEOUT:
                res = replace(res, time_s=math.ceil(res.time_s * self.retry.time_factor))
            elif fate is JobState.OUT_OF_MEMORY and res.mem_mb:
                res = replace(res, mem_mb=math.ceil(res.mem_mb * self.retry.memory_factor))
        return res

    def as_dict(self) -> dict:
        # as written, env included: later attempts re-read the profile from the manifest
        # (a profile file is no place for secrets: capture_env carries them, redacted)
        return {"source": self.source, "backend": self.backend, "name": self.name, **dict(self.raw)}


# --- parsing -------------------------------------------------------------------------------

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time(value: Any, src: Any, key: str) -> int:
    """SLURM time forms (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) or a number of
    minutes, as seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise ConfigError(src, key, f"expected a positive time, got {value}")
        return math.ceil(value * 60)
    m = _TIME.match(str(value).strip()) if isinstance(value, str) else None
    if not m:
        raise ConfigError(src, key, f"expected minutes or a SLURM time such as '30', '1:30:00' or '2-00:00:00', got {value!r}")
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # MM:SS
        seconds = int(a) * 60 + int(b)
    else:  # MM
        seconds = int(a) * 60
    if seconds <= 0:
        raise ConfigError(src, key, f"expected a positive time, got {value!r}")
    return seconds


def parse_memory(value: Any, src: Any, key: str) -> int:
    """SLURM memory (``16G``, ``512M``, or an integer of MB) as MB."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)B?", str(value).strip().upper()) if isinstance(value, str) else None
    if not m or int(m.group(1)) <= 0:
        raise ConfigError(src, key, f"expected memory such as '16G' or '512M', got {value!r}")
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2)]
    return max(1, math.ceil(int(m.group(1)) * scale))


def _positive_int(value: Any, src: Any, key: str, minimum: int = 1) -> int:
    expect(value, int, src, key)
    if value < minimum:
        raise ConfigError(src, key, f"expected an integer >= {minimum}, got {value}")
    return value


def _path(value: Any, src: Any, key: str) -> str | None:
    """A path with ~ and $VARIABLES expanded (an unset variable is an error, not an empty string)."""
    if value is None:
        return None
    text = os.path.expanduser(expect(value, str, src, key))
    expanded = os.path.expandvars(text)
    if "$" in expanded:
        raise ConfigError(src, key, f"{value!r} names an environment variable that is not set")
    return expanded


def _opt_str(value: Any, src: Any, key: str) -> str | None:
    return None if value is None else expect(value, str, src, key)


def _resource_changes(d: Mapping[str, Any], src: Any, prefix: str) -> dict:
    """Parse the resource keys present in ``d`` into Resources field values."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        where = f"{prefix}{key}"
        if key == "time":
            out["time_s"] = parse_time(value, src, where)
        elif key == "gpus_per_job":
            out["gpus_per_job"] = _positive_int(value, src, where, minimum=0)
        elif key == "cpus_per_task":
            out["cpus_per_task"] = _positive_int(value, src, where)
        elif key == "mem":
            out["mem_mb"] = parse_memory(value, src, where)
        else:
            out[key] = _opt_str(value, src, where)
    return out


def load_profile(path: str | Path) -> ClusterProfile:
    return parse_profile(load_mapping(path), str(path))


def default_local_profile() -> ClusterProfile:
    return parse_profile({"backend": "local", "name": "local (built-in)", "time": "1:00:00"}, "built-in local profile")


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # every C0 control but tab, and DEL


def _refuse_control_characters(value: Any, src: str, key: str) -> None:
    """Values of a profile end up in a job script, one directive or line each: a newline
    would end a ``#SBATCH`` line early (sbatch stops reading directives there, silently
    dropping the rest) or add a line of its own."""
    if isinstance(value, dict):
        for k, v in value.items():
            name = repr(k) if isinstance(k, str) and _CONTROL.search(k) else str(k)
            where = f"{key}.{name}" if key else name
            _refuse_control_characters(k, src, where)
            _refuse_control_characters(v, src, where)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _refuse_control_characters(v, src, f"{key}[{i}]")
    elif isinstance(value, str) and _CONTROL.search(value):
        char = _CONTROL.search(value).group()
        hint = " (a YAML block scalar `|` keeps a trailing newline: use `|-`, or a plain value)" if value.endswith("\n") else ""
        raise ConfigError(src, key, f"contains the control character {char!r} in {value!r}; expected a value on one "
                          f"line{hint}")  # fmt: skip


def parse_profile(d: dict, src: str) -> ClusterProfile:
    _refuse_control_characters(d, src, "")
    unknown_keys(d, TOP_KEYS, src)
    backend = d.get("backend")
    if backend not in BACKENDS:
        raise ConfigError(src, "backend", f"expected one of {', '.join(BACKENDS)}, got {backend!r}")
    foreign = (SLURM_ONLY if backend == "local" else LOCAL_ONLY) & set(d)
    if foreign:
        other = "slurm" if backend == "local" else "local"
        raise ConfigError(src, sorted(foreign)[0], f"applies to backend '{other}' only, this profile is '{backend}'")
    if "time" not in d:
        raise ConfigError(src, "time", "missing: every profile sets a per-job time limit (e.g. time: '1:00:00')")
    changes = _resource_changes({k: v for k, v in d.items() if k in RESOURCE_KEYS}, src, "")
    changes.setdefault("gpus_per_job", 1 if backend == "slurm" else -1)  # -1: decided from the visible GPUs below
    resources = Resources(**changes)

    overrides = []
    for i, item in enumerate(expect(d.get("overrides") or [], list, src, "overrides")):
        where = f"overrides[{i}]"
        expect(item, dict, src, where)
        unknown_keys(item, {"match", "set"}, src, f"{where}.")
        match = expect(item.get("match"), dict, src, f"{where}.match")
        unknown_keys(match, {"dose", "view", "split"}, src, f"{where}.match.")
        for axis, want in match.items():
            mkey = f"{where}.match.{axis}"
            if axis == "dose" and isinstance(want, str):
                if not re.fullmatch(r"(>=|<=|>|<|==)\s*\d+", want):
                    raise ConfigError(src, mkey, f"expected a dose, a list, or a comparison like '>=2000', got {want!r}")
            elif isinstance(want, list):
                for w in want:
                    expect(w, int if axis == "dose" else str, src, mkey)
            else:
                expect(want, int if axis == "dose" else str, src, mkey)
        sets = expect(item.get("set"), dict, src, f"{where}.set")
        unknown_keys(sets, RESOURCE_KEYS if backend == "slurm" else {"time", "gpus_per_job"}, src, f"{where}.set.")
        overrides.append(Override(match, _resource_changes(sets, src, f"{where}.set.")))

    retry = Retry()
    if "retry" in d:
        r = expect(d["retry"], dict, src, "retry")
        unknown_keys(r, {"max_attempts", "states", "time_factor", "memory_factor"}, src, "retry.")
        on = retry.on
        if "states" in r:
            names = expect(r["states"], list, src, "retry.states")
            allowed = sorted(s.value for s in RETRYABLE)
            bad = [n for n in names if n not in allowed]
            if bad:
                raise ConfigError(src, "retry.states", f"cannot retry on {bad[0]!r}; expected states among: {', '.join(allowed)}")
            on = frozenset(JobState(n) for n in names) | {JobState.LOST}
        factors = {}
        for fkey in ("time_factor", "memory_factor"):
            if fkey in r:
                factors[fkey] = float(expect(r[fkey], (int, float), src, f"retry.{fkey}"))
                if factors[fkey] < 1:
                    raise ConfigError(src, f"retry.{fkey}", f"expected a factor >= 1, got {r[fkey]}")
        retry = Retry(_positive_int(r.get("max_attempts", retry.max_attempts), src, "retry.max_attempts"), on, **factors)

    poll = expect(d.get("poll_interval") or {}, dict, src, "poll_interval")
    unknown_keys(poll, {"min", "max"}, src, "poll_interval.")
    poll_min = float(expect(poll.get("min", 0.02 if backend == "local" else 5.0), (int, float), src, "poll_interval.min"))
    poll_max = float(expect(poll.get("max", 1.0 if backend == "local" else 30.0), (int, float), src, "poll_interval.max"))
    if not 0 < poll_min <= poll_max:
        raise ConfigError(src, "poll_interval", f"expected 0 < min <= max, got min={poll_min}, max={poll_max}")

    env = expect(d.get("env") or {}, dict, src, "env")
    for k, v in env.items():
        if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise ConfigError(src, f"env.{k}", "expected an environment variable name (letters, digits, '_')")
        expect(v, (str, int, float), src, f"env.{k}")
    capture = env_names(d.get("capture_env") or [], src, "capture_env")
    gpus = None
    if d.get("gpus") is not None:
        gpus = tuple(expect(g, int, src, "gpus") for g in expect(d["gpus"], list, src, "gpus"))
    gpu_request = d.get("gpu_request", "gres")
    if gpu_request not in GPU_REQUEST_FORMS:
        raise ConfigError(src, "gpu_request", f"expected one of {', '.join(GPU_REQUEST_FORMS)}, got {gpu_request!r}")
    setup = expect(d.get("setup") or [], list, src, "setup")
    for i, line in enumerate(setup):
        expect(line, str, src, f"setup[{i}]")
    if d.get("warn_signal") is not None and not re.fullmatch(r"(?:[RB]:)?\w+@\d+", str(d["warn_signal"])):
        raise ConfigError(src, "warn_signal", f"expected a SLURM --signal value such as 'USR2@90', got {d['warn_signal']!r}")
    notify = expect(d.get("notify") or [], list, src, "notify")
    if "notify" in d and not notify:
        raise ConfigError(src, "notify", "expected a command as a list of strings, e.g. ['mail', '-s', 'grid', 'me@example.org']")
    for i, item in enumerate(notify):
        if not isinstance(item, str) or not item:
            raise ConfigError(src, f"notify[{i}]", f"expected a non-empty string (the command is an argv, run without a "
                              f"shell), got {item!r}")  # fmt: skip
    notify_timeout = float(expect(d.get("notify_timeout", 30), (int, float), src, "notify_timeout"))
    if notify_timeout <= 0:
        raise ConfigError(src, "notify_timeout", f"expected a positive number of seconds, got {d['notify_timeout']!r}")
    extra = expect(d.get("sbatch_extra") or {}, dict, src, "sbatch_extra")
    for k, v in extra.items():
        expect(v, (str, int, bool), src, f"sbatch_extra.{k}")
    profile = ClusterProfile(
        source=src,
        backend=backend,
        name=expect(d.get("name", Path(src).stem), str, src, "name"),
        resources=resources,
        overrides=tuple(overrides),
        retry=retry,
        env={k: str(v) for k, v in env.items()},
        capture_env=tuple(capture),
        python=_path(d.get("python"), src, "python"),
        poll_min_s=poll_min,
        poll_max_s=poll_max,
        max_parallel=_positive_int(d["max_parallel"], src, "max_parallel") if d.get("max_parallel") is not None else None,
        gpus=gpus,
        gpu_request=gpu_request,
        array_parallelism=_positive_int(d["array_parallelism"], src, "array_parallelism") if d.get("array_parallelism") else None,
        max_array_size=_positive_int(d["max_array_size"], src, "max_array_size") if d.get("max_array_size") else None,
        setup=tuple(setup),
        use_srun=bool(expect(d.get("use_srun", False), bool, src, "use_srun")),
        sbatch_extra={str(k): v if isinstance(v, bool) else str(v) for k, v in extra.items() if v is not False},
        warn_signal=_opt_str(d.get("warn_signal"), src, "warn_signal"),
        cells_per_job=_positive_int(d.get("cells_per_job", 1), src, "cells_per_job"),
        max_queued=_positive_int(d.get("max_queued", DEFAULT_MAX_QUEUED), src, "max_queued"),
        notify=tuple(notify),
        notify_timeout_s=notify_timeout,
        raw=d,
    )
    return profile  # a local default gpus_per_job stays -1: gpus.resolve decides it from the GPUs it finds


