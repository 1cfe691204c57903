"""gridsubmit: run a condition grid of comparison jobs on SLURM GPU partitions or locally.

The public API (see docs/python-api.md); the CLI is a thin client of it. Names are imported
on first use: the node-side task (``gridsubmit.task``) must start without importing them.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing is not imported: a SLURM job starts with `python -m gridsubmit.task`

__version__ = "0.2.0"

_WHERE = {
    "GridExecutor": "api", "Run": "api", "execute_comparison_jobs": "api", "study_manifest": "api",
    "load_cluster": "api", "ClusterProfile": "cluster", "UsageError": "errors", "ConfigError": "errors",
    "Cell": "jobs", "JobKey": "jobs", "JobState": "states", "Filters": "study", "Grid": "study",
    "Study": "study", "load_study": "study",
}  # fmt: skip
__all__ = ["__version__", *_WHERE]

if TYPE_CHECKING:
    from .api import GridExecutor, Run, execute_comparison_jobs, load_cluster, study_manifest
    from .cluster import ClusterProfile
    from .errors import ConfigError, UsageError
    from .jobs import Cell, JobKey
    from .states import JobState
    from .study import Filters, Grid, Study, load_study


def __getattr__(name: str) -> object:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'gridsubmit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
