"""The GPUs a local run may hand out, found once per command (the I/O edge of the profile).

``cluster.py`` stays pure: a local profile that does not set ``gpus_per_job`` carries -1
there, and :func:`resolve` turns it into one GPU per job when GPUs are visible, else none.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import replace

from .cluster import ClusterProfile


def resolve(profile: ClusterProfile) -> ClusterProfile:
    """``profile`` with its local default of GPUs per job decided from the visible GPUs."""
    if profile.resources.gpus_per_job >= 0:
        return profile
    per_job = 1 if visible_gpus(profile) else 0
    return replace(profile, resources=replace(profile.resources, gpus_per_job=per_job))


def visible_gpus(profile: ClusterProfile) -> tuple[str, ...]:
    """GPU ids the local backend may hand out: the profile's list, else CUDA_VISIBLE_DEVICES,
    else what nvidia-smi lists, else none."""
    if profile.gpus is not None:
        return tuple(str(g) for g in profile.gpus)
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:  # ids or UUIDs, handed on as written
        return tuple(part.strip() for part in env.split(",") if part.strip())
    return _nvidia_smi_gpus(shutil.which("nvidia-smi"))


@functools.lru_cache(maxsize=4)
def _nvidia_smi_gpus(smi: str | None) -> tuple[str, ...]:
    """The GPUs nvidia-smi lists, asked once per command (a profile is read several times)."""
    if smi is None:
        return ()
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(str(i) for i in range(sum(1 for line in out.splitlines() if line.startswith("GPU "))))
