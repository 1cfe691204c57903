"""Helpers shared by the benchmarks (not a benchmark).

Scheduler calls are counted by wrapper scripts put first on PATH: each logs its name and the
time, then runs the real command. Studies are bare grids (no roots, no inputs, no expected
outputs) of 4 cells per dose, as in benchmarks/slurm_grid.py.
"""

from __future__ import annotations

import bisect
import compileall
import os
import re
import shutil
import statistics
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

COMMANDS = ("sbatch", "sacct", "squeue", "scancel", "scontrol")
RAISE_HINT = "sudo scripts/slurm-test-cluster up --max-array-size 1001"
UNSUPPORTED = "cells_per_job not supported by this gridsubmit"
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE")  # fmt: skip


class Counter:
    """Wrapper scripts in ``folder/bin`` that append ``name epoch-seconds`` to ``folder/calls.log``."""

    def __init__(self, folder: Path):
        self.log = folder / "calls.log"
        self.bin = folder / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        for name in COMMANDS:
            real = shutil.which(name)
            if real is None:
                continue
            wrapper = self.bin / name
            wrapper.write_text(f'#!/bin/sh\necho "{name} $(date +%s.%N)" >> "{self.log}"\nexec {real} "$@"\n')
            wrapper.chmod(0o755)

    @property
    def path(self) -> str:
        return f"{self.bin}:{os.environ['PATH']}"

    def calls(self) -> list[tuple[str, float]]:
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            name, _, when = line.partition(" ")
            try:
                out.append((name, float(when)))
            except ValueError:
                out.append((name, 0.0))
        return out

    def busiest(self, names=("sacct", "squeue"), window_s: float = 60.0) -> int:
        """The most calls of these commands in any ``window_s`` seconds (a status-call budget's own measure)."""
        times = sorted(when for name, when in self.calls() if name in names)
        return max((bisect.bisect_left(times, t + window_s) - i for i, t in enumerate(times)), default=0)

    def counts(self) -> dict[str, int]:
        names = [name for name, _ in self.calls()]
        return {name: names.count(name) for name in COMMANDS}

    @contextmanager
    def active(self) -> Iterator["Counter"]:
        """PATH goes through the wrappers for this process and its children, then back."""
        old = os.environ["PATH"]
        os.environ["PATH"] = f"{self.bin}:{old}"
        try:
            yield self
        finally:
            os.environ["PATH"] = old


def max_array_size() -> int | None:
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
    return int(m.group(1)) if m else None


def cluster_up() -> bool:
    try:
        return subprocess.run(["scontrol", "ping"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def foreign_jobs() -> int:
    """Jobs in the queue now (someone else's tests share the cluster): printed as context."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return -1
    return len(out.split())


def write_study(folder: Path, cells: int, command: list, name: str = "bench") -> Path:
    """``cells`` (a multiple of 4) cells: doses 1..cells/4 x dense/sparse x train/test."""
    study = {"name": name, "roots": None, "doses": list(range(1, cells // 4 + 1)), "inputs": None,
             "expected_outputs": [], "command": list(command)}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def cpu_seconds(text: str) -> float:
    """sacct's TotalCPU (``MM:SS.mmm``, ``HH:MM:SS``, ``D-HH:MM:SS``) in seconds."""
    text = text.strip()
    if not text:
        return 0.0
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
    seconds = 0.0
    for part in text.split(":"):
        seconds = seconds * 60 + float(part)
    return days * 86400 + seconds


def sacct_tasks(ids: list[str]) -> dict[str, dict]:
    """Per array task (``123_4``): its state, and its TotalCPU summed over its steps (the job
    row's own TotalCPU where no step is listed)."""
    if not ids:
        return {}
    out = subprocess.run(["sacct", "-n", "-P", "-o", "JobID,TotalCPU,Elapsed,State", "-j", ",".join(sorted(set(ids)))],
                         capture_output=True, text=True).stdout  # fmt: skip
    tasks: dict[str, dict] = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) < 4 or "[" in parts[0]:
            continue
        job_id, total, _elapsed, state = parts[:4]
        base, dot, _ = job_id.partition(".")
        task = tasks.setdefault(base, {"state": "", "job_cpu": 0.0, "step_cpu": 0.0, "steps": 0})
        if dot:
            task["step_cpu"] += cpu_seconds(total)
            task["steps"] += 1
        else:
            task["state"] = state.split()[0] if state else ""
            task["job_cpu"] = cpu_seconds(total)
    for task in tasks.values():
        task["cpu_s"] = task["step_cpu"] if task["steps"] else task["job_cpu"]
    return tasks


def settled_tasks(ids: list[str], expected: int, timeout: float = 60.0) -> dict[str, dict]:
    """sacct_tasks once every expected task is terminal with its batch step recorded (the
    accounting trails the jobs' ends by a few seconds), or what is there after ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        tasks = sacct_tasks(ids)
        done = [t for t in tasks.values() if t["state"] in TERMINAL and t["steps"]]
        if len(done) >= expected or time.monotonic() > deadline:
            return tasks
        time.sleep(1)


def manifest_jobs(root: Path) -> tuple[list[str], list[str]]:
    """The array job ids and the array task ids a gridsubmit run's manifest records."""
    import json

    arrays: set[str] = set()
    tasks: set[str] = set()
    try:
        manifest = json.loads((root / "comparison_manifest.json").read_text())
        for cell in manifest["jobs"]:
            for attempt in cell["attempts"]:
                job_id = attempt.get("job_id")
                if job_id:
                    tasks.add(str(job_id))
                    arrays.add(str(attempt.get("array_job_id") or str(job_id).split("_")[0]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return sorted(arrays), sorted(tasks)


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def wait4(pid: int, deadline: float):
    """(status, rusage) of the child once it exits (its own CPU and that of what it ran and
    reaped); None if it is still running at ``deadline`` (time.monotonic)."""
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return status, usage
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def cells_per_job_supported() -> bool:
    """Whether this gridsubmit takes the profile key ``cells_per_job``."""
    from gridsubmit.cluster import parse_profile
    from gridsubmit.errors import ConfigError

    try:
        parse_profile({"backend": "slurm", "partition": "cpu", "gpus_per_job": 0, "time": "0:10:00", "cells_per_job": 10},
                      "probe")  # fmt: skip
    except ConfigError as exc:
        return exc.key != "cells_per_job" and "cells_per_job" not in str(exc)
    return True


# The study's 12 ComparisonJobs over a tree of its layout (tests/study_layout.py), as code for a
# child interpreter (any gridsubmit version) to run: it needs `tree` bound, and binds `jobs`.
STUDY_JOBS = r"""
from dataclasses import dataclass

@dataclass
class ComparisonJob:
    dose: int; view: str; split: str
    phase_c_npz: Path; pinn_checkpoint: Path; baseline_checkpoint: Path; phase_f_manifest: Path
    ms_ssim_sigma: float = 1.0; skip_registration: bool = False; register_ptychi_only: bool = True

jobs = [ComparisonJob(d, v, s, tree / f"phase_c/dose_{d}" / (f"patched_{s}.npz" if v == "dense" else f"{v}/{v}_{s}.npz"),
                      tree / f"phase_e/dose_{d}/{v}/gs2/wts.h5.zip", tree / f"phase_e/dose_{d}/baseline/gs1/wts.h5.zip",
                      tree / f"phase_f/dose_{d}_{v}_{s}/manifest.json")
        for d in (1000, 10000, 100000) for v in ("dense", "sparse") for s in ("train", "test")]
"""


def unpack(rev: str, into: Path) -> Path:
    """The source tree of ``rev`` (this repository's git history), for PYTHONPATH."""
    into.mkdir(parents=True)
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "src"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return byte_compiled(into / "src")


def byte_compiled(src: Path) -> Path:
    """``src`` with its modules byte-compiled, as pip leaves an installed package: each child
    interpreter then loads them instead of compiling them at every start (as it would for ever
    where PYTHONDONTWRITEBYTECODE is set), which is what a user's installation costs."""
    compileall.compile_dir(str(src), quiet=1)
    return src
