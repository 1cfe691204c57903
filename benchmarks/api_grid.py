"""execute_comparison_jobs of the study's 12 cells with a `true` command, before and after.

The study's own call site (its pytest runs the grid through gridsubmit's Python API on the
local backend): 12 ComparisonJob objects of the synthetic fly64 tree, a command that does
nothing (`true`), 2 slots. Each version runs in a child process (``--before REV`` unpacked
with ``git archive``, this checkout's ``src`` after) and is timed from the call, so the
interpreter's start is left out. Median of ``--repeat`` runs.

    python benchmarks/api_grid.py [--before a29ed50] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import STUDY_JOBS, byte_compiled, unpack

HERE = Path(__file__).resolve().parent
AFTER_SRC = HERE.parent / "src"
DRIVER = r"""
import json, sys, time
from pathlib import Path
from gridsubmit import execute_comparison_jobs

tree, root = Path(sys.argv[1]), Path(sys.argv[2])

""" + STUDY_JOBS + r"""
study = {"command": ["true"], "expected_outputs": []}
cluster = {"backend": "local", "name": "bench", "time": "10:00", "max_parallel": 2, "gpus": [],
           "poll_interval": {"min": 0.02, "max": 0.05}}
t = time.monotonic()
manifest = execute_comparison_jobs(jobs, root, cluster=cluster, study=study)
print(json.dumps({"wall": time.monotonic() - t, "success": manifest["n_success"]}))
"""


def run(src: Path, tree: Path, work: Path, n: int) -> list[float]:
    walls = []
    for i in range(n):
        env = {**os.environ, "PYTHONPATH": str(src)}
        out = subprocess.run([sys.executable, "-c", DRIVER, str(tree), str(work / f"run-{src.parent.name}-{i}")],
                             capture_output=True, text=True, env=env, cwd=work, check=True)  # fmt: skip
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["success"] == 12, out.stdout + out.stderr
        walls.append(result["wall"])
    return walls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default="a29ed50")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gridsubmit-bench-") as tmp:
        work = Path(tmp)
        before = unpack(args.before, work / "before")
        sys.path.insert(0, str(AFTER_SRC))
        from gridsubmit.demo.generate import make_study

        make_study(work / "tree")
        results = {"before": run(before, work / "tree", work, args.repeat),
                   "after": run(byte_compiled(AFTER_SRC), work / "tree", work, args.repeat)}  # fmt: skip
    print(f"execute_comparison_jobs, 12 cells of `true`, 2 slots, median of {args.repeat} (load average "
          f"{os.getloadavg()[0]:.2f})\n")
    print(f"{'':34}{'before (' + args.before + ')':>20}{'after (this checkout)':>24}")
    print(f"{'wall time, median':34}{statistics.median(results['before']):>19.2f} s{statistics.median(results['after']):>23.2f} s")
    print(f"{'  fastest / slowest':34}{min(results['before']):>8.2f} / {max(results['before']):.2f} s"
          f"{min(results['after']):>12.2f} / {max(results['after']):.2f} s")


if __name__ == "__main__":
    main()
