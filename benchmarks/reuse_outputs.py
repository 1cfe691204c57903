"""What content checks of output folders cost, before and after.

A COMPLETED attempt's ``outputs`` record is taken in the runner's loop (backends/base.py
``_observe``); it was a listing (``stat`` only) and now also reads every file for its sha256.
``submit --reuse-from`` listed the source before and after the copy; it now reads the source
before the copy and the copy after it. Two parts, each version in a child process (``--before
REV`` unpacked with ``git archive``, this checkout's ``src`` after):

1. ``outputs_record`` of one output folder, for three shapes (the demo's two small files; a
   reconstruction of ``--mb`` MB with a metrics file and three plots; 1,000 files of 100 KB),
   with the files in the page cache (just written) and evicted from it (``posix_fadvise``,
   as on a host that did not write them). Median of ``--repeat``.
2. ``execute_comparison_jobs`` of ``--cells`` cells whose command writes the reconstruction
   shape, then a second root reusing all of them from the first (the source's files evicted
   first): wall time of each, median of ``--repeat``, the versions taking turns.

    python benchmarks/reuse_outputs.py [--before fe5741f] [--mb 300] [--cells 4] [--repeat 5]
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
EVICT = r"""
import os
def evict(folder):
    for here, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(here, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
"""
RECORD = EVICT + r"""
import json, statistics, sys, time
from gridsubmit.provenance import outputs_record
folder, repeat, cold = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
times = []
for _ in range(repeat):
    if cold:
        evict(folder)
    t = time.perf_counter()
    record = outputs_record(folder)
    times.append(time.perf_counter() - t)
print(json.dumps({"s": statistics.median(times), "content": "sha256" in record}))
"""
GRID = EVICT + r"""
import json, sys, time
from pathlib import Path
from gridsubmit import Run, execute_comparison_jobs

tree, source, copy, writer, mb, cells = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6])

""" + STUDY_JOBS + r"""
jobs = jobs[:cells]
study = {"command": ["{python}", writer, "{output_dir}", mb], "expected_outputs": ["comparison_metrics.csv"]}
cluster = {"backend": "local", "name": "bench", "time": "10:00", "max_parallel": 2, "gpus": [],
           "poll_interval": {"min": 0.02, "max": 0.05}}
t = time.monotonic()
ran = execute_comparison_jobs(jobs, source, cluster=cluster, study=study)
run_s = time.monotonic() - t
os.sync()
evict(source)
t = time.monotonic()
again = execute_comparison_jobs(jobs, copy, cluster=cluster, study=study, reuse_from=[source])
reuse_s = time.monotonic() - t
reused = sum(1 for c in Run.open(copy).manifest["jobs"] if c["attempts"][-1].get("reused"))
print(json.dumps({"run": run_s, "reuse": reuse_s, "ok": ran["n_success"] + again["n_success"], "reused": reused}))
"""
WRITER = r"""
import os, sys
out, mb = sys.argv[1], int(sys.argv[2])
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "reconstruction.npz"), "wb") as fh:
    for _ in range(mb):
        fh.write(os.urandom(1 << 20))
for i in range(3):
    with open(os.path.join(out, f"plot_{i}.png"), "wb") as fh:
        fh.write(os.urandom(200_000))
with open(os.path.join(out, "comparison_metrics.csv"), "w") as fh:
    fh.write("model,mae,psnr\npinn,0.1,30.5\n")
"""


def child(src: Path, code: str, *args, cwd: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(src)}, cwd=cwd)  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(out.stdout + out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def shapes(work: Path, mb: int) -> dict[str, Path]:
    """The output folders of part 1, written once and shared by both versions."""
    folders = {"demo cell: 2 small files": work / "small", f"reconstruction: {mb} MB + 4 small": work / "recon",
               "1,000 files of 100 KB (100 MB)": work / "many"}  # fmt: skip
    for folder in folders.values():
        folder.mkdir()
    (folders["demo cell: 2 small files"] / "runs.log").write_text("1 2 None\n")
    (folders["demo cell: 2 small files"] / "comparison_metrics.csv").write_text("model,mae,psnr\npinn,0.1,30.5\n")
    subprocess.run([sys.executable, "-c", WRITER, str(work / "recon"), str(mb)], check=True)
    for i in range(1000):
        (folders["1,000 files of 100 KB (100 MB)"] / f"frame_{i:04d}.png").write_bytes(os.urandom(100_000))
    os.sync()
    return folders


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default="fe5741f")
    ap.add_argument("--mb", type=int, default=300, help="the reconstruction's size (MB)")
    ap.add_argument("--cells", type=int, default=4, help="cells in part 2 (at most 12)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gridsubmit-bench-") as tmp:
        work = Path(tmp)
        before = unpack(args.before, work / "before")
        versions = {"before": before, "after": byte_compiled(AFTER_SRC)}

        print(f"1. outputs_record of one output folder (what _observe records per COMPLETED attempt), median of "
              f"{args.repeat}\n")  # fmt: skip
        print(f"{'':40}{'cache':>8}{'before (' + args.before + ')':>20}{'after (this checkout)':>24}")
        for name, folder in shapes(work, args.mb).items():
            for cold in (False, True):
                got = {v: child(src, RECORD, folder, args.repeat, int(cold), cwd=work) for v, src in versions.items()}
                assert not got["before"]["content"] and got["after"]["content"]
                print(f"{name:40}{'evicted' if cold else 'warm':>8}{got['before']['s'] * 1000:>17.1f} ms"
                      f"{got['after']['s'] * 1000:>21.1f} ms")  # fmt: skip

        sys.path.insert(0, str(AFTER_SRC))
        from gridsubmit.demo.generate import make_study

        make_study(work / "tree")
        writer = work / "writer.py"
        writer.write_text(WRITER)
        print(f"\n2. {args.cells} cells writing {args.mb} MB each on 2 local slots, then a second root reusing them all "
              f"(the source's files evicted first)\n")  # fmt: skip
        got: dict[str, list[dict]] = {v: [] for v in versions}
        for i in range(args.repeat):  # alternately, so that a busy minute falls on both
            for v, src in versions.items():
                one = child(src, GRID, work / "tree", work / f"{v}-a", work / f"{v}-b", writer, args.mb, args.cells, cwd=work)
                assert one["ok"] == 2 * args.cells and one["reused"] == args.cells, one
                got[v].append(one)
                subprocess.run(["rm", "-rf", str(work / f"{v}-a"), str(work / f"{v}-b")], check=True)
        print(f"{'median of ' + str(args.repeat):40}{'before (' + args.before + ')':>20}{'after (this checkout)':>24}")
        for label, part in (("run (outputs recorded as cells end)", "run"), ("reuse of every cell", "reuse")):
            b, a = (statistics.median(r[part] for r in got[v]) for v in versions)
            print(f"{label:40}{b:>18.2f} s{a:>23.2f} s")
        print(f"\n(load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
