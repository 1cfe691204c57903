"""24 cells of a 1-second command on 2 slots, three ways, in one process:

  gridsubmit   the local backend (submit --wait), cap of 2 concurrent jobs
  sequential   the seed's loop: subprocess.run for one cell after another
  submitit     LocalExecutor, all 24 submitted at once (no cap: every job starts at once)

Prints wall times and gridsubmit's ratio to the ideal 24 x 1 s / 2 = 12 s (target <= 1.15),
and the most commands gridsubmit ever had running at once (must be 2).

    python benchmarks/local_grid.py [--cells 24] [--slots 2] [--seconds 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import submitit

from gridsubmit.cli import main as gridsubmit
from gridsubmit.demo.generate import make_study


def max_overlap(intervals):
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    depth = best = 0
    for _, step in events:
        depth += step
        best = max(best, depth)
    return best


def sleeper(seconds: float) -> int:
    return subprocess.run(["sleep", str(seconds)]).returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=24)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    doses = tuple(1000 * (i + 1) for i in range(args.cells // 4))  # 4 cells per dose
    work = Path(tempfile.mkdtemp(prefix="gridsubmit-bench-"))
    study = make_study(work / "study", doses=doses, command=["sleep", str(args.seconds)])
    study.write_text(study.read_text() + "expected_outputs: []\n")  # sleep writes no metrics file
    profile = work / "local.yaml"
    profile.write_text(f"backend: local\ntime: '10:00'\nmax_parallel: {args.slots}\n")
    n = len(doses) * 4
    ideal = n * args.seconds / args.slots

    t = time.monotonic()
    code = gridsubmit(["submit", "--study", str(study), "--cluster", str(profile), "--artifact-root", str(work / "run"), "--quiet"])
    grid_wall = time.monotonic() - t
    assert code == 0, "gridsubmit run failed"
    runs = [json.loads(p.read_text()) for p in (work / "run" / "logs").rglob("result.json")]
    overlap = max_overlap([(r["started_at"], r["ended_at"]) for r in runs])

    t = time.monotonic()
    for _ in range(n):
        subprocess.run(["sleep", str(args.seconds)], check=True)
    seq_wall = time.monotonic() - t

    executor = submitit.LocalExecutor(folder=work / "submitit")
    executor.update_parameters(timeout_min=10)
    t = time.monotonic()
    jobs = [executor.submit(sleeper, args.seconds) for _ in range(n)]
    while not all(j.done() for j in jobs):
        time.sleep(0.01)
    sub_wall = time.monotonic() - t
    assert all(j.result() == 0 for j in jobs)

    print(f"{n} cells x {args.seconds:g} s command, {args.slots} slots; ideal with the cap: {ideal:.1f} s\n")
    print(f"{'runner':<34} {'wall s':>7} {'x ideal':>8} {'max concurrent':>15}")
    print(f"{'gridsubmit local backend':<34} {grid_wall:7.2f} {grid_wall / ideal:8.3f} {overlap:15d}")
    print(f"{'sequential subprocess.run loop':<34} {seq_wall:7.2f} {seq_wall / ideal:8.3f} {1:15d}")
    print(f"{'submitit LocalExecutor, no cap':<34} {sub_wall:7.2f} {sub_wall / ideal:8.3f} {n:>15}")
    verdict = "met" if grid_wall <= 1.15 * ideal and overlap <= args.slots else "NOT met"
    print(f"\ntarget gridsubmit <= 1.15 x ideal with at most {args.slots} running: {verdict} ({grid_wall / ideal:.3f} x, {overlap} at once)")
    print(f"work folder: {work}")
    sys.exit(0 if verdict == "met" else 1)


if __name__ == "__main__":
    main()
