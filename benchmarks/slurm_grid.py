"""200 trivial cells on the SLURM test cluster, side by side in one run:

  gridsubmit   submit --wait (arrays split at MaxArraySize, one sacct per poll cycle at most)
  floor        raw `sbatch --array` chunks of a shell `true` + a plain 1 s `sacct` loop
  submitit     SlurmExecutor batch() per chunk + job.results()

Every scheduler command is counted by wrapper scripts put first on PATH. Also measured: how
long after a job ends its failure shows in gridsubmit's manifest, for a command that exits 3
(settled by the task's result file) and for a job cancelled with scancel (settled by sacct).

    sudo scripts/slurm-test-cluster up
    python benchmarks/slurm_grid.py [--cells 200]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import submitit
import yaml

from gridsubmit.cli import main as gridsubmit

COMMANDS = ("sbatch", "sacct", "squeue", "scancel")


def install_counters(folder: Path) -> Path:
    """Wrapper scripts that log each call, then run the real command."""
    log = folder / "calls.log"
    bindir = folder / "bin"
    bindir.mkdir(parents=True)
    for name in COMMANDS:
        real = shutil.which(name)
        (bindir / name).write_text(f'#!/bin/sh\necho {name} >> "{log}"\nexec {real} "$@"\n')
        (bindir / name).chmod(0o755)
    os.environ["PATH"] = f"{bindir}:{os.environ['PATH']}"
    return log


def calls(log: Path) -> dict[str, int]:
    lines = log.read_text().split() if log.exists() else []
    out = {name: lines.count(name) for name in COMMANDS}
    log.write_text("")
    return out


def max_array_size() -> int:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M).group(1))


def write_study(folder: Path, cells: int, command: list, behaviours: dict | None = None) -> Path:
    doses = list(range(1, cells // 4 + 1))
    # null removes the built-in study's roots and inputs; a bare command writes no metrics file
    study = {"name": "bench", "roots": None, "doses": doses, "inputs": None, "expected_outputs": [], "command": command}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def run_gridsubmit(work: Path, cells: int) -> float:
    study = write_study(work, cells, ["true"])
    profile = work / "slurm.yaml"
    profile.write_text(yaml.safe_dump({"backend": "slurm", "partition": "cpu", "gpus_per_job": 0, "time": "0:10:00",
                                       "poll_interval": {"min": 1, "max": 5}}))
    t = time.monotonic()
    code = gridsubmit(["submit", "--study", str(study), "--cluster", str(profile), "--artifact-root", str(work / "run"), "--quiet"])
    wall = time.monotonic() - t
    assert code == 0, "gridsubmit grid failed"
    return wall


def run_floor(work: Path, cells: int, chunk: int, payload: str = "true") -> float:
    script = work / "task.sh"
    script.write_text(f"#!/bin/bash\n{payload}\n")
    t = time.monotonic()
    ids = []
    for start in range(0, cells, chunk):
        n = min(chunk, cells - start)
        out = subprocess.run(["sbatch", "-p", "cpu", "--parsable", "-J", "floor", f"--array=0-{n - 1}", "-o", "/dev/null",
                              str(script)], capture_output=True, text=True, check=True).stdout  # fmt: skip
        ids.append(out.strip().split(";")[0])
    while True:
        time.sleep(1)
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(ids)],
                             capture_output=True, text=True).stdout  # fmt: skip
        rows = [line.split("|") for line in out.splitlines()]
        done = [r for r in rows if "[" not in r[0] and r[1] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")]
        if len(done) == cells:
            return time.monotonic() - t


def trivial() -> int:
    return 0


def run_submitit(work: Path, cells: int, chunk: int) -> float:
    executor = submitit.SlurmExecutor(folder=work / "submitit")
    executor.update_parameters(partition="cpu", time=10, job_name="submitit-bench", use_srun=False)
    t = time.monotonic()
    jobs = []
    for start in range(0, cells, chunk):  # submitit does not split arrays at MaxArraySize itself
        with executor.batch():
            jobs += [executor.submit(trivial) for _ in range(min(chunk, cells - start))]
    assert all(job.result() == 0 for job in jobs)
    return time.monotonic() - t


def failure_latency(work: Path) -> dict[str, list[float]]:
    """Seconds from a job's end (exit 3) or its scancel to FAILED / CANCELLED in the manifest."""
    study = write_study(work, 24, [sys.executable, "-c", "import sys, time; time.sleep(float(sys.argv[1]) % 7); sys.exit(3)", "{dose}"])
    profile = work / "slurm.yaml"
    profile.write_text(yaml.safe_dump({"backend": "slurm", "partition": "cpu", "gpus_per_job": 0, "time": "0:10:00",
                                       "poll_interval": {"min": 1, "max": 5}}))
    root = work / "run"
    proc = subprocess.Popen([sys.executable, "-m", "gridsubmit", "submit", "--study", str(study), "--cluster", str(profile),
                             "--artifact-root", str(root), "--quiet"], stdout=subprocess.DEVNULL)  # fmt: skip
    seen: dict[str, float] = {}
    cancelled_at = None
    target = None
    latencies: dict[str, list[float]] = {"exit 3 (result file)": [], "scancel (sacct)": []}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None or not seen:
        try:
            manifest = json.loads((root / "comparison_manifest.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.02)
            continue
        now = time.time()
        for cell in manifest["jobs"]:
            if cell["state"] in ("FAILED", "CANCELLED") and cell["key"] not in seen:
                seen[cell["key"]] = now
        if target is None:  # cancel the longest-sleeping cell once it runs
            cell = next((c for c in manifest["jobs"] if c["dose"] == 6 and c["state"] == "RUNNING"), None)
            if cell:
                target = cell
                cancelled_at = time.time()
                subprocess.run(["scancel", cell["attempts"][-1]["job_id"]], check=True)
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.wait()
    manifest = json.loads((root / "comparison_manifest.json").read_text())
    for cell in manifest["jobs"]:
        attempt = cell["attempts"][-1]
        if cell["state"] == "FAILED" and attempt.get("ended_at"):
            latencies["exit 3 (result file)"].append(seen[cell["key"]] - attempt["ended_at"])
        elif cell["state"] == "CANCELLED" and cancelled_at:
            latencies["scancel (sacct)"].append(seen[cell["key"]] - cancelled_at)
    return latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=200)
    args = ap.parse_args()
    cells = args.cells - args.cells % 4
    work = Path(tempfile.mkdtemp(prefix="gridsubmit-slurm-bench-"))
    log = install_counters(work)
    chunk = max_array_size()
    n_chunks = -(-cells // chunk)

    rows = []
    (work / "floor").mkdir()
    wall = run_floor(work / "floor", cells, chunk)
    rows.append(("floor: raw sbatch --array + 1 s sacct", wall, calls(log)))
    # the same floor, each task paying what a submitit task pays before any work: a Python
    # start that imports submitit (separates the scheduler overhead from the per-task cost)
    wall = run_floor(work / "floor", cells, chunk, f"{sys.executable} -c 'import submitit'")
    rows.append(("  same, task = python -c 'import submitit'", wall, calls(log)))
    wall = run_submitit(work, cells, chunk)
    rows.append(("submitit batch() + results()", wall, calls(log)))
    (work / "grid").mkdir()
    wall = run_gridsubmit(work / "grid", cells)
    grid_calls = calls(log)
    rows.append(("gridsubmit submit --wait", wall, grid_calls))
    manifest = json.loads((work / "grid" / "run" / "comparison_manifest.json").read_text())
    arrays = len({c["attempts"][0]["array_job_id"] for c in manifest["jobs"]})
    runs = [c["attempts"][0] for c in manifest["jobs"]]
    span = max(r["ended_at"] for r in runs) - min(r["started_at"] for r in runs)

    floor = rows[0][1]
    print(f"{cells} trivial cells, MaxArraySize {chunk} -> {n_chunks} array chunks; 1 task = 1 cell\n")
    print(f"{'runner':<40} {'wall s':>7} {'x floor':>8} {'sbatch':>7} {'sacct':>6} {'squeue':>7}")
    for name, wall, c in rows:
        print(f"{name:<40} {wall:7.2f} {wall / floor:8.2f} {c['sbatch']:7d} {c['sacct']:6d} {c['squeue']:7d}")
    grid_wall, submitit_wall, python_floor = rows[3][1], rows[2][1], rows[1][1]
    print(f"\ngridsubmit / floor: {grid_wall / floor:.2f} (target 1.10: {'met' if grid_wall <= 1.10 * floor else 'NOT met'})")
    print(f"gridsubmit / floor with a Python task: {grid_wall / python_floor:.2f}")
    print(f"gridsubmit / submitit: {grid_wall / submitit_wall:.2f}  (both start one submitit Python per task)")
    print(f"gridsubmit sbatch calls {grid_calls['sbatch']} = array chunks {arrays}: {grid_calls['sbatch'] == arrays == n_chunks}")
    print(f"gridsubmit status queries: {grid_calls['sacct'] + grid_calls['squeue']} over {grid_wall:.1f} s "
          f"(at most one per poll cycle; cycles read result files every 0.25 s, sacct only when due)")
    print(f"first task start to last task end (scheduler + Python per task): {span:.1f} s")

    (work / "latency").mkdir()
    latency = failure_latency(work / "latency")
    calls(log)
    print("\nfailure visible in the manifest after the job's end:")
    for what, values in latency.items():
        if values:
            print(f"  {what:<24} median {statistics.median(values):.2f} s, max {max(values):.2f} s (n={len(values)})")
    print(f"\nwork folder: {work}")


if __name__ == "__main__":
    main()
