"""pytest fixtures for running a grid on the local executor inside a test (entry point ``pytest11``).

    def test_comparison_grid(tmp_path, gridsubmit_cluster):
        manifest = execute_comparison_jobs(jobs=jobs, artifact_root=tmp_path / "out", cluster=gridsubmit_cluster)
        assert manifest["n_failed"] == 0

Fixtures:
- ``gridsubmit_profile``: a factory ``(max_parallel=2, gpus=(), time="10:00", **keys) -> ClusterProfile``
  for the local backend, polling fast, handing out no GPUs unless asked.
- ``gridsubmit_cluster``: ``gridsubmit_profile()``: two slots, no GPUs.
- ``gridsubmit_executor``: a GridExecutor on ``gridsubmit_cluster`` writing to ``tmp_path/"gridsubmit-run"``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import pytest


@pytest.fixture
def gridsubmit_profile() -> Callable[..., Any]:
    from .cluster import parse_profile

    def make(max_parallel: int = 2, gpus: Sequence[int] = (), time: str = "10:00", **keys: Any):
        data = {"backend": "local", "name": "pytest local", "time": time, "max_parallel": max_parallel,
                "gpus": list(gpus), "poll_interval": {"min": 0.02, "max": 0.05}, **keys}  # fmt: skip
        return parse_profile(data, "gridsubmit pytest profile")

    return make


@pytest.fixture
def gridsubmit_cluster(gridsubmit_profile):
    return gridsubmit_profile()


@pytest.fixture
def gridsubmit_executor(tmp_path, gridsubmit_cluster):
    from .api import GridExecutor

    return GridExecutor(tmp_path / "gridsubmit-run", gridsubmit_cluster)
