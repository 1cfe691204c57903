"""The same grids on the SLURM test cluster three ways, run alternately, side by side:

  floor        raw `sbatch --array` (chunked at MaxArraySize) of a shell script running the
               payload, and a plain 1 s `sacct` loop until every task is terminal
  submitit     submitit's SlurmExecutor batch() per chunk, a function running the payload
               through subprocess, then job.result() for each job
  gridsubmit   `python -m gridsubmit submit` with a profile {backend: slurm, partition,
               gpus_per_job, time: "0:10:00"} (+ cells_per_job: K for --cells-per-job K > 1)

Rows: 200x sleep1 cpu, 200x true cpu, 40x sleep1 1gpu (gpu partition, 1 GPU per task),
1000x true cpu (run once; the others --repeats times, medians). Per row and tool: wall
seconds and the ratio to the floor; the node CPU of one array task (sacct TotalCPU summed
over its steps, median over tasks, ms); scheduler calls (sbatch, sacct, squeue: wrapper
scripts first on PATH) and sacct calls per minute. Figures only, no pass/fail.

    sudo scripts/slurm-test-cluster up [--max-array-size 1001]
    python benchmarks/slurm_compare.py [--rows '200x true cpu' ...] [--repeats 3] [--cells-per-job 1 10]
    python benchmarks/slurm_compare.py --quick          # smoke test: 20-cell rows, 1 repeat
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import submitit
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (RAISE_HINT, TERMINAL, UNSUPPORTED, Counter, cells_per_job_supported, cluster_up,  # noqa: E402
                      foreign_jobs, manifest_jobs, max_array_size, median, settled_tasks, wait4, write_study)  # fmt: skip

RUN_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Row:
    name: str
    cells: int
    command: tuple[str, ...]
    partition: str
    gpus: int
    once: bool = False


ROWS = (
    Row("200x sleep1 cpu", 200, ("sleep", "1"), "cpu", 0),
    Row("200x true cpu", 200, ("true",), "cpu", 0),
    Row("40x sleep1 1gpu", 40, ("sleep", "1"), "gpu", 1),  # the test cluster's 4 fake GPUs: 4 tasks at once
    Row("1000x true cpu", 1000, ("true",), "cpu", 0, once=True),
)


@dataclass
class Outcome:
    """One run of one tool on one grid."""

    wall: float | None = None
    calls: dict[str, int] = field(default_factory=dict)
    task_cpu_ms: float | None = None  # median over the run's array tasks
    tasks: int = 0  # array tasks the run had
    submitter_cpu: float | None = None  # gridsubmit only: the submit process and what it ran (wait4)
    busiest: int = 0  # most sacct + squeue calls in any 60 s window of the run
    busy: int = 0  # other jobs in the queue when it started
    error: str | None = None

    @property
    def sacct_per_min(self) -> float | None:
        return None if not self.wall else self.calls.get("sacct", 0) * 60 / self.wall


# --- the three ways ------------------------------------------------------------------------------


def run_floor(work: Path, row: Row, cells: int, chunk: int, counter: Counter) -> tuple[Outcome, list[str], int]:
    script = work / "task.sh"
    script.write_text("#!/bin/bash\n" + shlex.join(row.command) + "\n")
    extra = ["--gres=gpu:1"] if row.gpus else []
    out = Outcome()
    ids: list[str] = []
    with counter.active():
        t = time.monotonic()
        for start in range(0, cells, chunk):
            n = min(chunk, cells - start)
            text = subprocess.run(["sbatch", "-p", row.partition, "--parsable", "-J", "floor-bench", "--time=10",
                                   f"--array=0-{n - 1}", "-o", "/dev/null", "-e", "/dev/null", *extra, str(script)],
                                  capture_output=True, text=True, check=True).stdout  # fmt: skip
            ids.append(text.strip().split(";")[0])
        deadline = t + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            time.sleep(1)
            text = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(ids)],
                                  capture_output=True, text=True).stdout  # fmt: skip
            rows = [line.split("|") for line in text.splitlines() if "|" in line]
            done = [r for r in rows if "[" not in r[0] and r[1].split()[0] in TERMINAL]
            if len(done) >= cells:
                out.wall = time.monotonic() - t
                break
        else:
            out.error = f"not done after {RUN_TIMEOUT_S:.0f} s"
    return out, ids, cells


def payload(argv: list[str]) -> int:
    """What each submitit job runs (pickled by value: this module is __main__)."""
    import subprocess

    return subprocess.run(argv).returncode


def run_submitit(work: Path, row: Row, cells: int, chunk: int, counter: Counter) -> tuple[Outcome, list[str], int]:
    executor = submitit.SlurmExecutor(folder=work / "submitit")
    params: dict = {"partition": row.partition, "time": 10, "job_name": "submitit-bench", "use_srun": False}
    if row.gpus:
        params["gres"] = f"gpu:{row.gpus}"
    executor.update_parameters(**params)
    out = Outcome()
    jobs = []
    with counter.active():
        t = time.monotonic()
        try:
            for start in range(0, cells, chunk):  # submitit does not split arrays at MaxArraySize itself
                with executor.batch():
                    jobs += [executor.submit(payload, list(row.command)) for _ in range(min(chunk, cells - start))]
            codes = [job.result() for job in jobs]
            out.wall = time.monotonic() - t
            if any(codes):
                out.error = f"{sum(1 for c in codes if c)} task(s) exited non-zero"
        except Exception as exc:  # a failed job: record it, go on with the other runs
            out.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    ids = sorted({job.job_id.split("_")[0] for job in jobs})
    return out, ids, len(jobs)


def run_gridsubmit(work: Path, row: Row, cells: int, k: int, counter: Counter) -> tuple[Outcome, list[str], int]:
    study = write_study(work, cells, list(row.command))
    profile = {"backend": "slurm", "partition": row.partition, "gpus_per_job": row.gpus, "time": "0:10:00"}
    if k > 1:
        profile["cells_per_job"] = k
    (work / "slurm.yaml").write_text(yaml.safe_dump(profile))
    root = work / "run"
    out = Outcome()
    log = work / "gridsubmit.log"
    with open(log, "wb") as fh:
        t = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "gridsubmit", "submit", "--study", str(study), "--cluster",
                                 str(work / "slurm.yaml"), "--artifact-root", str(root), "--quiet"],
                                cwd=work, env={**os.environ, "PATH": counter.path}, stdout=fh, stderr=subprocess.STDOUT)  # fmt: skip
        ended = wait4(proc.pid, t + RUN_TIMEOUT_S)
        out.wall = time.monotonic() - t
    if ended is None:
        proc.kill()
        _, _, usage = os.wait4(proc.pid, 0)
        code = None
    else:
        status, usage = ended
        code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    out.submitter_cpu = usage.ru_utime + usage.ru_stime
    text = log.read_text(errors="replace")
    if code is None:
        out.error, out.wall = f"killed after {RUN_TIMEOUT_S:.0f} s", None
    elif code == 2 and "cells_per_job" in text:
        out.error, out.wall = UNSUPPORTED, None
    elif code != 0:
        last = [line for line in text.splitlines() if line.strip()][-1:] or [""]
        out.error = f"exit {code}: {last[0][:120]}"
    ids, tasks = manifest_jobs(root)
    return out, ids, len(tasks)


def measured(tool: str, work: Path, row: Row, cells: int, chunk: int, k: int = 1) -> Outcome:
    work.mkdir(parents=True)
    counter = Counter(work / "count")
    busy = foreign_jobs()
    try:
        if tool == "floor":
            out, ids, tasks = run_floor(work, row, cells, chunk, counter)
        elif tool == "submitit":
            out, ids, tasks = run_submitit(work, row, cells, chunk, counter)
        else:
            out, ids, tasks = run_gridsubmit(work, row, cells, k, counter)
    except Exception as exc:  # one broken run must not lose the others' figures
        return Outcome(error=f"{type(exc).__name__}: {exc}", busy=busy)
    out.busy = busy
    out.calls = counter.counts()
    out.busiest = counter.busiest()
    out.tasks = tasks
    if ids and out.error != UNSUPPORTED:
        per_task = settled_tasks(ids, tasks)
        values = [t["cpu_s"] * 1000 for t in per_task.values() if t["state"] in TERMINAL]
        out.task_cpu_ms = median(values)
    return out


# --- printing ------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".1f", width: int = 0) -> str:
    return f"{'-' if value is None else format(value, spec):>{width}}"


def summary(runs: list[Outcome]) -> Outcome:
    """Medians over the repeats that worked; the first error if none did."""
    ok = [r for r in runs if r.error is None and r.wall is not None]
    if not ok:
        return runs[0] if runs else Outcome(error="not run")
    calls = {name: int(round(median([r.calls.get(name, 0) for r in ok]))) for name in ("sbatch", "sacct", "squeue")}
    return Outcome(wall=median([r.wall for r in ok]), calls=calls, task_cpu_ms=median([r.task_cpu_ms for r in ok]),
                   tasks=ok[0].tasks, submitter_cpu=median([r.submitter_cpu for r in ok]), busy=max(r.busy for r in runs),
                   busiest=max(r.busiest for r in ok),
                   error=None if len(ok) == len(runs) else f"{len(runs) - len(ok)} of {len(runs)} runs failed")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", metavar="ROW", choices=[r.name for r in ROWS],
                    help="rows to run (default: all): " + ", ".join(repr(r.name) for r in ROWS))  # fmt: skip
    ap.add_argument("--repeats", type=int, default=3, help="runs per tool and row (the 1000-cell row runs once)")
    ap.add_argument("--cells-per-job", type=int, nargs="+", default=[1], metavar="K",
                    help="one gridsubmit column per K (K > 1 adds cells_per_job: K to the profile)")  # fmt: skip
    ap.add_argument("--cells", type=int, help="every row with this many cells (a multiple of 4) instead of its own")
    ap.add_argument("--quick", action="store_true", help="smoke test: 20-cell rows, 1 repeat")
    ap.add_argument("--tools", nargs="+", default=["floor", "submitit", "gridsubmit"], choices=["floor", "submitit", "gridsubmit"])
    args = ap.parse_args()
    if args.quick:
        args.cells, args.repeats = args.cells or 20, 1
    if not cluster_up():
        sys.exit("slurm_compare: no SLURM controller answers; start the test cluster: sudo scripts/slurm-test-cluster up")
    rows = [r for r in ROWS if not args.rows or r.name in args.rows]
    sizes = {r.name: max(4, (args.cells or r.cells) // 4 * 4) for r in rows}
    ks = list(dict.fromkeys(max(1, k) for k in args.cells_per_job))
    supported = cells_per_job_supported() if any(k > 1 for k in ks) else True
    chunk = max_array_size() or 1001
    largest = max(sizes.values())
    work = Path(tempfile.mkdtemp(prefix="gridsubmit-slurm-compare-"))

    print(f"MaxArraySize {chunk}; largest grid {largest} cells", end="")
    if chunk < largest:
        print(f" -> arrays are chunked ({math.ceil(largest / chunk)} sbatch calls for it). "
              f"To run them unchunked: {RAISE_HINT} (a plain `scripts/slurm-test-cluster up` restores 10)")  # fmt: skip
    else:
        print()
    if not supported:
        print(f"{UNSUPPORTED}: its columns (K > 1) are left out")
    print(f"work folder: {work}\n")

    tools: list[tuple[str, int]] = [(t, 1) for t in args.tools if t != "gridsubmit"]
    if "gridsubmit" in args.tools:
        tools += [("gridsubmit", k) for k in ks]
    results: dict[tuple[str, str, int], list[Outcome]] = {}
    for row in rows:
        cells = sizes[row.name]
        repeats = 1 if row.once else max(1, args.repeats)
        for rep in range(repeats):  # alternate: each repeat runs every tool once, in turn
            for tool, k in tools:
                label = tool if k == 1 else f"{tool} K={k}"
                if tool == "gridsubmit" and k > 1 and not supported:
                    results.setdefault((row.name, tool, k), []).append(Outcome(error=UNSUPPORTED))
                    continue
                folder = work / row.name.replace(" ", "-") / f"{tool}-k{k}-{rep + 1}"
                out = measured(tool, folder, row, cells, chunk, k)
                results.setdefault((row.name, tool, k), []).append(out)
                said = f"{out.wall:.1f} s" if out.wall is not None else out.error
                print(f"  [{row.name.replace(str(row.cells), str(cells), 1)}] {label} run {rep + 1}/{repeats}: {said}"
                      + (f" ({out.error})" if out.error and out.wall is not None else ""), flush=True)  # fmt: skip
    print()
    report(rows, sizes, tools, {key: summary(runs) for key, runs in results.items()}, args.repeats)
    print(f"\nwork folder: {work}")


def report(rows: list[Row], sizes: dict, tools: list[tuple[str, int]], res: dict, repeats: int) -> None:
    labels = {(t, k): t if k == 1 else f"{t} K={k}" for t, k in tools}
    others = [(t, k) for t, k in tools if t != "floor"]
    name_w = max(len(r.name) for r in rows) + 14

    def row_name(row: Row) -> str:  # a scaled row (--cells, --quick) keeps its own name beside
        n = sizes[row.name]
        return row.name if n == row.cells else f"{row.name.replace(str(row.cells), str(n), 1)} [{row.cells}x row]"

    heads = {t: f"{labels[t]} s (x floor)" for t in others}
    widths = {t: max(len(heads[t]) + 3, 16) for t in others}
    print(f"wall seconds (median of {repeats}; the 1000-cell row once), and x floor")
    print(f"{'row':<{name_w}}" + (f"{'floor s':>9}" if ("floor", 1) in tools else "")
          + "".join(f"{heads[t]:>{widths[t]}}" for t in others))  # fmt: skip
    for row in rows:
        floor = res.get((row.name, "floor", 1))
        base = floor.wall if floor else None
        line = f"{row_name(row):<{name_w}}" + (f"{fmt(base, '.1f', 9)}" if ("floor", 1) in tools else "")
        for tool, k in others:
            o = res[(row.name, tool, k)]
            if o.wall is None:
                cell = "not supported" if o.error == UNSUPPORTED else (o.error or "-")[: widths[(tool, k)] - 3]
            else:
                cell = f"{o.wall:.1f} ({o.wall / base:.2f})" if base else f"{o.wall:.1f}"
            line += f"{cell:>{widths[(tool, k)]}}"
        print(line)

    print("\nnode CPU per array task, median ms (sacct TotalCPU summed over the task's steps)")
    print(f"{'row':<{name_w}}" + "".join(f"{labels[t]:>18}" for t in tools) + "   cells per array task")
    for row in rows:
        line = f"{row_name(row):<{name_w}}"
        per_task = []
        for tool, k in tools:
            o = res[(row.name, tool, k)]
            line += f"{fmt(o.task_cpu_ms, '.0f', 18)}"
            if o.tasks:
                per_task.append(f"{labels[(tool, k)]} {sizes[row.name] / o.tasks:g}")
        print(line + "   " + ", ".join(per_task))

    print("\nscheduler calls per run (median), sacct calls per minute of wall, the most sacct + squeue calls in "
          "any 60 s of a run (the budget: 12), and the submitter's CPU")
    print(f"{'row':<{name_w}}{'tool':<18}{'sbatch':>7}{'sacct':>7}{'squeue':>7}{'sacct/min':>10}{'status/min':>11}{'max in 60 s':>12}"
          f"{'submitter CPU s':>16}{'other jobs':>11}")  # fmt: skip
    for row in rows:
        for tool, k in tools:
            o = res[(row.name, tool, k)]
            if o.wall is None:
                print(f"{row_name(row):<{name_w}}{labels[(tool, k)]:<18}  {o.error or '-'}")
                continue
            status = (o.calls.get("sacct", 0) + o.calls.get("squeue", 0)) * 60 / o.wall
            print(f"{row_name(row):<{name_w}}{labels[(tool, k)]:<18}{o.calls.get('sbatch', 0):>7}{o.calls.get('sacct', 0):>7}"
                  f"{o.calls.get('squeue', 0):>7}{fmt(o.sacct_per_min, '.1f', 10)}{status:>11.1f}{o.busiest:>12}"
                  f"{fmt(o.submitter_cpu, '.2f', 16)}{o.busy:>11}")  # fmt: skip
    for row in rows:  # a profile loader that takes the key before the backend honours it
        for tool, k in tools:
            o = res[(row.name, tool, k)]
            if k > 1 and o.tasks and sizes[row.name] / o.tasks < min(k, sizes[row.name]) - 1e-9:
                print(f"note: {row_name(row)} / {labels[(tool, k)]}: {o.tasks} array tasks for {sizes[row.name]} cells "
                      f"({sizes[row.name] / o.tasks:g} per task): cells_per_job: {k} was accepted but not applied")  # fmt: skip
    failed = [(key, o.error) for key, o in res.items() if o.error and o.wall is not None]
    by_name = {r.name: r for r in rows}
    for (name, tool, k), error in failed:
        print(f"note: {row_name(by_name[name])} / {labels[(tool, k)]}: {error}")
    print("\nsubmitter CPU: the `gridsubmit submit` process and the sbatch/sacct/squeue it ran (wait4); "
          "'other jobs': jobs of others in the queue when a run started (the cluster is shared)")


if __name__ == "__main__":
    main()
