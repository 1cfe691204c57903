"""Knobs without a profile: --max-parallel, --time, --partition, --cells-per-job for one run.

They override the cluster profile for the run they are given to (``submit``, or ``wait``
from then on), and are recorded in the manifest's last submission (``submissions[-1].knobs``),
never in the profile the manifest keeps as written. They change how a cell is run, not what
it computes: they are not part of what an attempt ran from, so no cell is stale for them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

from .cluster import ClusterProfile, Override, parse_time
from .errors import ConfigError, UsageError

# knob -> (the command line flag, the backend it applies to; None: every backend)
FLAGS = {"max_parallel": ("--max-parallel", "local"), "time": ("--time", None),
         "partition": ("--partition", "slurm"), "cells_per_job": ("--cells-per-job", "slurm")}  # fmt: skip


@dataclass(frozen=True)
class Knobs:
    max_parallel: int | None = None  # local: cells at once
    time: str | None = None  # every cell's time limit (SLURM forms, or minutes)
    partition: str | None = None  # SLURM partition of every cell
    cells_per_job: int | None = None  # SLURM: cells run one after another in one job

    @classmethod
    def of(cls, value: "Knobs | Mapping[str, Any] | None") -> "Knobs":
        if value is None:
            return cls()
        if isinstance(value, Knobs):
            return value
        unknown = sorted(set(value) - set(FLAGS))
        if unknown:
            raise UsageError(f"unknown knob {unknown[0]!r}; knobs are: {', '.join(FLAGS)}")
        return cls(**{k: v for k, v in value.items() if v is not None})

    def as_dict(self) -> dict:
        """The knobs given (None ones left out), as recorded in the submission."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def __bool__(self) -> bool:
        return bool(self.as_dict())


def check(knobs: Knobs, backend: str) -> None:
    """Refuse a knob that does not apply to ``backend``, or a value that is not one (UsageError,
    naming the flag)."""
    for name, value in knobs.as_dict().items():
        flag, only = FLAGS[name]
        if only is not None and only != backend:
            raise UsageError(f"{flag} applies to the {only} backend only; this run's backend is {backend}")
        if name in ("max_parallel", "cells_per_job") and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise UsageError(f"{flag}: expected an integer >= 1, got {value!r}")
        if name == "partition" and (not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value)):
            raise UsageError(f"{flag}: expected a partition name, got {value!r}")
        if name == "time":
            try:
                parse_time(value, flag, "time")
            except ConfigError as exc:
                raise UsageError(f"{flag}: {exc.message}") from None


def apply(profile: ClusterProfile, knobs: Knobs) -> ClusterProfile:
    """``profile`` with the knobs laid over it: they win over its overrides too (a --time is
    every cell's time limit; retries after a TIMEOUT still grow it)."""
    if not knobs:
        return profile
    check(knobs, profile.backend)
    changes: dict[str, Any] = {}
    if knobs.time is not None:
        changes["time_s"] = parse_time(knobs.time, "--time", "time")
    if knobs.partition is not None:
        changes["partition"] = knobs.partition
    out = profile
    if changes:
        overrides = tuple(Override(o.match, {k: v for k, v in o.changes.items() if k not in changes}) for o in profile.overrides)
        out = replace(out, resources=replace(out.resources, **changes), overrides=overrides)
    if knobs.max_parallel is not None:
        out = replace(out, max_parallel=knobs.max_parallel)
    if knobs.cells_per_job is not None:
        out = replace(out, cells_per_job=knobs.cells_per_job)
    return out


def recorded(manifest: dict) -> Knobs:
    """The knobs of the manifest's last submission (none when it has no history)."""
    subs = manifest.get("submissions") or []
    return Knobs.of((subs[-1].get("knobs") if subs else None) or None)
