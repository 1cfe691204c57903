"""max_queued on the SLURM test cluster: a 400-cell grid with max_queued 50.

While gridsubmit runs, a thread samples `squeue -r` every 0.2 s and counts the run's array
tasks (pending and running); afterwards each cell's own side effect (one line appended per
run to runs.log in its output folder) is counted. Printed: the peak queue, the target, runs
per cell, wall time and scheduler calls.

    sudo scripts/slurm-test-cluster up
    python benchmarks/queue_cap.py [--cells 400] [--max-queued 50]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter as Tally
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import Counter, cluster_up, write_study  # noqa: E402


def queued(prefix: str) -> int:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%j"], capture_output=True, text=True).stdout
    return sum(1 for name in out.split() if name.startswith(prefix))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=400)
    parser.add_argument("--max-queued", type=int, default=50)
    args = parser.parse_args()
    if not cluster_up():
        print("the SLURM test cluster is not up: sudo scripts/slurm-test-cluster up")
        return 1
    work = Path(tempfile.mkdtemp(prefix="gridsubmit-queue-cap-"))
    counter = Counter(work)
    study = write_study(work, args.cells, ["sh", "-c", "mkdir -p \"$1\" && echo run >> \"$1/runs.log\"", "cell", "{output_dir}"])
    profile = work / "slurm.yaml"
    profile.write_text(yaml.safe_dump({"backend": "slurm", "partition": "cpu", "gpus_per_job": 0, "time": "0:10:00",
                                       "max_queued": args.max_queued}))  # fmt: skip
    root = work / "run"
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                run_id = json.loads((root / "comparison_manifest.json").read_text())["run_id"]
                samples.append(queued(f"gs-{run_id}-"))
            except (FileNotFoundError, ValueError, KeyError):
                pass
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "gridsubmit", "submit", "--study", str(study), "--cluster", str(profile),
                           "--artifact-root", str(root), "--quiet"], env={**os.environ, "PATH": counter.path},
                          capture_output=True, text=True)  # fmt: skip
    wall = time.monotonic() - t
    stop.set()
    sampler.join()
    manifest = json.loads((root / "comparison_manifest.json").read_text())
    runs = Tally()
    for cell in manifest["jobs"]:
        log = Path(cell["output_dir"]) / "runs.log"
        runs[len(log.read_text().splitlines()) if log.exists() else 0] += 1
    states = Tally(cell["state"] for cell in manifest["jobs"])
    calls = counter.counts()
    print(f"{args.cells} cells, max_queued {args.max_queued}, partition cpu; gridsubmit exit {proc.returncode}, {wall:.1f} s")
    print(f"{'measure':<44} {'figure':>10}   target")
    print(f"{'peak array tasks of the run in squeue':<44} {max(samples, default=0):>10}   <= {args.max_queued}")
    print(f"{'squeue samples taken':<44} {len(samples):>10}")
    print(f"{'cells whose command ran exactly once':<44} {runs.get(1, 0):>10}   {args.cells}")
    print(f"{'cells that ran more than once / never':<44} {sum(v for k, v in runs.items() if k > 1):>6} / {runs.get(0, 0):<3}   0 / 0")
    print(f"{'cell states':<44} {dict(states)}")
    print(f"{'scheduler calls (gridsubmit)':<44} {calls}")
    print(f"work folder: {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
