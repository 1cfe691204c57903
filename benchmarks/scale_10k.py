"""The submitter's side of a 10,000-cell grid, figures beside their targets in one table.

Phase A (no cluster): doses 1..2500 x dense/sparse x train/test = 10,000 cells of `true` on
the local profile, never run. Each measurement runs in a fresh interpreter, for a clean peak
RSS (ru_maxrss):
  plan + first manifest   what `gridsubmit submit` does before its first job starts: load
                          the study, plan, preflight, record the manifest (GridExecutor.submit
                          without its background runner: nothing is started), read it back
  dry run                 plan + GridExecutor.dry_run
  manifest.save           one save of the 10,000-cell manifest as planned, and with one ended
                          (synthetic) SLURM attempt per cell as during a run: CPU s, MiB
  manifest.load           what `status`, `wait` and `Run` read

Phase B (--slurm, the test cluster): the same grid of `true` (or --command, e.g. 'sleep 0.5'
for a run of some minutes whose cells leave the machine's cores to the submitter) with
cells_per_job: 100 through `python -m gridsubmit submit` (a driver times Runner._cycle and
counts result-file reads per cycle): wall, the submitter's own CPU, sacct/squeue calls (per
minute of the run, and the most in any 60 s window: the budget's own measure), the median
poll cycle. A gridsubmit without cells_per_job: Phase B says so and is skipped
(--cells-per-job 1 runs it with one cell per array task).

    python benchmarks/scale_10k.py                      # Phase A
    sudo scripts/slurm-test-cluster up --max-array-size 1001
    python benchmarks/scale_10k.py --slurm [--cells 10000] [--cells-per-job 100] [--no-plan] [--command 'sleep 0.5']
    python benchmarks/scale_10k.py --slurm --cells 200  # Phase B as a smoke test

Targets: plan + first manifest <= 2 s and <= 200 MB RSS; median poll cycle <= 100 ms;
submitter CPU <= 5 % of one core; status calls <= 12 per minute. Figures only, no pass/fail exit.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (RAISE_HINT, UNSUPPORTED, Counter, cells_per_job_supported, cluster_up, foreign_jobs,  # noqa: E402
                      manifest_jobs, max_array_size, median, wait4, write_study)  # fmt: skip

MIB = 1024 * 1024
PLAN_S, PLAN_MB, CYCLE_MS, CPU_PCT, STATUS_PER_MIN = 2.0, 200.0, 100.0, 5.0, 12.0


# --- Phase A: one measurement per interpreter ----------------------------------------------------


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _no_start(*_a, **_k):
    raise RuntimeError("the benchmark starts no cell: GridExecutor.submit tried to start one")


def measure(name: str, work: Path) -> dict:
    """Runs in a child interpreter; returns figures as a dict (printed as JSON)."""
    t0, c0 = time.perf_counter(), _cpu()
    import gridsubmit.api as api
    from gridsubmit import manifest as mf

    out: dict = {"import_s": time.perf_counter() - t0}
    study_path, profile_path = work / "study.yaml", work / "local.yaml"
    root = work / f"run-{name}"
    if name in ("plan-manifest", "dry-run"):
        t = time.perf_counter()
        study = api.load_study(study_path)
        executor = api.GridExecutor(root, profile_path)
        grid = executor.plan(study)
        out["plan_s"] = time.perf_counter() - t
        t = time.perf_counter()
        problems = executor.check(grid)  # the CLI's preflight, before submitting
        out["check_s"] = time.perf_counter() - t
        out["cells"] = len(grid.jobs)
        if problems:
            out["problems"] = problems
        t = time.perf_counter()
        if name == "dry-run":
            text = executor.dry_run(grid)
            out["dry_run_s"] = time.perf_counter() - t
            out["dry_run_lines"] = text.count("\n") + 1
        else:
            # submit without waiting on the local backend records the manifest and leaves the
            # cells to a background runner: that runner, and any process, is not started here
            from gridsubmit import runner as runner_mod
            from gridsubmit.backends import local

            api.detach_waiter = runner_mod.detach_waiter = lambda *_a, **_k: None
            runner_mod.Runner.run = _no_start
            local.LocalBackend.submit = local.LocalBackend._start = _no_start
            executor.submit(grid, wait=False)
            out["submit_s"] = time.perf_counter() - t
            out["manifest_mib"] = (root / mf.MANIFEST).stat().st_size / MIB
        out["total_s"] = time.perf_counter() - t0
        out["total_cpu_s"] = _cpu() - c0
    elif name in ("save-planned", "save-ended", "load"):
        source = work / "run-plan-manifest"  # written by the plan-manifest measurement
        t = time.perf_counter()
        manifest = mf.load(source)
        out["load_s"] = time.perf_counter() - t
        out["cells"] = len(manifest["jobs"])
        if name != "load":
            if name == "save-ended":
                ended(manifest)
            target = work / f"run-{name}"
            target.mkdir(exist_ok=True)
            rss, c, t = _rss_mib(), _cpu(), time.perf_counter()
            mf.save(target, manifest)
            out.update(save_s=time.perf_counter() - t, save_cpu_s=_cpu() - c, save_rss_growth_mib=_rss_mib() - rss,
                       manifest_mib=(target / mf.MANIFEST).stat().st_size / MIB)  # fmt: skip
        out["total_s"] = time.perf_counter() - t0
    out["rss_mib"] = _rss_mib()
    return out


def ended(manifest: dict) -> None:
    """One ended SLURM attempt per cell, with the fields a real run records (synthetic)."""
    now = time.time()
    for i, cell in enumerate(manifest["jobs"]):
        rel = f"logs/{cell['key']}/attempt-1"
        array_id = 1000 + i // 1000
        cell["attempts"] = [{
            "attempt": 1, "backend": "slurm", "job_id": f"{array_id}_{i % 1000}", "state": "COMPLETED",
            "submitted_at": now, "dir": rel, "stdout": f"{rel}/stdout.log", "stderr": f"{rel}/stderr.log",
            "resources": cell.get("resources", {}), "job_name": f"gs-{manifest['run_id']}-0a1b2c", "array_task_id": i % 1000,
            "array_job_id": str(array_id), "script": f"{manifest['artifact_root']}/.gridsubmit/submitit/{array_id}_submission.sh",
            "scheduler_state": "COMPLETED", "scheduler_exit_code": "0:0", "node": "localhost", "started_at": now,
            "ended_at": now + 0.01, "elapsed_s": 0.01, "elapsed": "00:00:01", "max_rss": "1234K", "returncode": 0,
            "stdout_tail": "", "stderr_tail": "",
        }]  # fmt: skip
        cell["state"] = "COMPLETED"


def run_measure(name: str, work: Path) -> dict:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--measure", name, "--work", str(work)], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = wall  # interpreter start to exit, seen from outside
    return result


def phase_a(work: Path, cells: int) -> list[tuple]:
    work.mkdir(parents=True)
    write_study(work, cells, ["true"], name="scale")
    (work / "local.yaml").write_text(yaml.safe_dump({"backend": "local", "time": "10:00", "max_parallel": 2}))
    res = {name: run_measure(name, work) for name in ("plan-manifest", "dry-run", "save-planned", "save-ended", "load")}
    pm, dr, sp, se, ld = (res[n] for n in ("plan-manifest", "dry-run", "save-planned", "save-ended", "load"))
    n = pm.get("cells", cells)
    rows: list[tuple] = []

    def err(r: dict) -> str | None:
        return f"error: {r['error']}" if "error" in r else None

    if err(pm):
        rows.append((f"plan + first manifest ({n} cells)", err(pm), "", ""))
    else:
        rows += [
            (f"plan + first manifest, {n} cells (in-process)", f"{pm['total_s']:.2f} s", f"<= {PLAN_S:g} s", pm["total_s"] <= PLAN_S),
            ("  same, interpreter start to exit", f"{pm['process_s']:.2f} s", f"<= {PLAN_S:g} s", pm["process_s"] <= PLAN_S),
            ("  peak RSS", f"{pm['rss_mib']:.0f} MiB", f"<= {PLAN_MB:g} MB", pm["rss_mib"] * MIB <= PLAN_MB * 1e6),
            ("  of which: import gridsubmit", f"{pm['import_s']:.2f} s", "", ""),
            ("  of which: load study + plan", f"{pm['plan_s']:.2f} s", "", ""),
            ("  of which: preflight check", f"{pm['check_s']:.2f} s", "", ""),
            ("  of which: submit (prepare, record, save, read back)", f"{pm['submit_s']:.2f} s", "", ""),
            ("  CPU", f"{pm['total_cpu_s']:.2f} s", "", ""),
            ("  manifest on disk", f"{pm['manifest_mib']:.1f} MiB", "", ""),
        ]  # fmt: skip
    if err(dr):
        rows.append(("dry run", err(dr), "", ""))
    else:
        rows.append((f"dry run (plan + describe, {dr['dry_run_lines']} lines)", f"{dr['total_s']:.2f} s, {dr['rss_mib']:.0f} MiB", "", ""))
    for label, r in (("one manifest.save, cells as planned", sp), ("one manifest.save, one ended attempt per cell", se)):
        if err(r):
            rows.append((label, err(r), "", ""))
        else:
            rows.append((label, f"{r['save_cpu_s']:.2f} CPU s ({r['save_s']:.2f} s), {r['manifest_mib']:.1f} MiB file, "
                                f"+{r['save_rss_growth_mib']:.0f} MiB RSS", "", ""))  # fmt: skip
    if not err(ld):
        rows.append(("one manifest.load (status, wait, Run)", f"{ld['load_s']:.2f} s, {ld['rss_mib']:.0f} MiB peak", "", ""))
    return rows


# --- Phase B: the grid on the test cluster ---------------------------------------------------------

DRIVER = r'''
"""gridsubmit.cli.main with Runner._cycle timed and result-file reads counted per cycle."""
import json, os, resource, sys, time

out_path, argv = sys.argv[1], sys.argv[2:]
import gridsubmit.fileio as fileio
import gridsubmit.task as task

original = fileio.read_json
reads = {"result.json": 0, "other json": 0, "log tails": 0, "metrics reads": 0}


def read_json(path, *a, **kw):
    reads["result.json" if os.path.basename(str(path)) == task.RESULT else "other json"] += 1
    return original(path, *a, **kw)


fileio.read_json = read_json  # modules imported from here on bind the counting one
import gridsubmit.cli, gridsubmit.runner, gridsubmit.manifest, gridsubmit.backends.base as base
import gridsubmit.backends.slurm, gridsubmit.backends.local

for name, module in list(sys.modules.items()):  # and those imported before
    if name.startswith("gridsubmit") and getattr(module, "read_json", None) is original:
        module.read_json = read_json


def counted(module, attr, key):
    fn = getattr(module, attr, None)
    if fn is None:
        return

    def wrapper(*a, **kw):
        reads[key] += 1
        return fn(*a, **kw)

    setattr(module, attr, wrapper)


counted(base, "tail", "log tails")
counted(base, "read_metrics", "metrics reads")
cycles = []
Runner = gridsubmit.runner.Runner
cycle = getattr(Runner, "_cycle", None)
if cycle is not None:
    def timed(self, *a, **kw):
        before, handles = dict(reads), len(getattr(self, "handles", ()))
        start, t, c = time.time(), time.perf_counter(), time.process_time()
        try:
            return cycle(self, *a, **kw)
        finally:
            cycles.append({"s": time.perf_counter() - t, "cpu_s": time.process_time() - c, "start": start,
                           "end": time.time(), "handles": handles, **{k: reads[k] - before[k] for k in reads}})
    Runner._cycle = timed
code = None
try:
    code = gridsubmit.cli.main(argv)
finally:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out_path, "w") as fh:
        json.dump({"code": code, "patched_cycle": cycle is not None, "cycles": cycles, "reads": reads,
                   "self_cpu_s": me.ru_utime + me.ru_stime, "children_cpu_s": kids.ru_utime + kids.ru_stime,
                   "rss_mib": me.ru_maxrss / 1024}, fh)
sys.exit(code)
'''


def phase_b(work: Path, cells: int, k: int, timeout: float, command: list[str]) -> list[tuple] | str:
    if not cluster_up():
        return "no SLURM controller answers: start the test cluster (sudo scripts/slurm-test-cluster up)"
    if k > 1 and not cells_per_job_supported():
        return f"{UNSUPPORTED}: Phase B skipped (--cells-per-job 1 runs it with one cell per array task)"
    tasks = -(-cells // k)
    chunk = max_array_size()
    if chunk is not None and chunk < tasks:
        print(f"MaxArraySize {chunk} < {tasks} array tasks: the arrays are chunked ({-(-tasks // chunk)} sbatch). "
              f"To lift it: {RAISE_HINT}")  # fmt: skip
    folder = work / "slurm"
    study = write_study(folder, cells, command, name="scale")
    profile = {"backend": "slurm", "partition": "cpu", "gpus_per_job": 0, "time": "0:10:00"}
    if k > 1:
        profile["cells_per_job"] = k
    (folder / "slurm.yaml").write_text(yaml.safe_dump(profile))
    (folder / "driver.py").write_text(DRIVER)
    counter = Counter(folder / "count")
    stats = folder / "driver.json"
    busy = foreign_jobs()
    log = folder / "gridsubmit.log"
    with open(log, "wb") as fh:
        t = time.monotonic()
        proc = subprocess.Popen([sys.executable, str(folder / "driver.py"), str(stats), "submit", "--study", str(study),
                                 "--cluster", str(folder / "slurm.yaml"), "--artifact-root", str(folder / "run"), "--quiet"],
                                cwd=folder, env={**os.environ, "PATH": counter.path}, stdout=fh, stderr=subprocess.STDOUT)  # fmt: skip
        ended = wait4(proc.pid, t + timeout)
        if ended is None:
            return f"not finished after {timeout:.0f} s; the run goes on in {folder / 'run'} (gridsubmit cancel it)"
        status, usage = ended
        wall = time.monotonic() - t
    code = os.waitstatus_to_exitcode(status)
    if not stats.exists():
        return f"the driver wrote no figures (exit {code}); see {log}"
    d = json.loads(stats.read_text())
    text = log.read_text(errors="replace")
    if code == 2 and "cells_per_job" in text:
        return f"{UNSUPPORTED}: Phase B skipped"
    calls = counter.counts()
    tasks = len(manifest_jobs(folder / "run")[1])
    status_calls = calls["sacct"] + calls["squeue"]
    per_min = status_calls * 60 / wall
    window = counter.busiest()
    own_cpu = d["self_cpu_s"]
    cycles = d["cycles"]
    durations = sorted(c["s"] * 1000 for c in cycles)
    med = median(durations)
    asked = sorted(when for name, when in counter.calls() if name in ("sacct", "squeue"))
    querying = [c["s"] * 1000 for c in cycles if bisect.bisect_right(asked, c["end"]) > bisect.bisect_left(asked, c["start"])]
    rows: list[tuple] = [
        (f"grid: {cells} cells of `{' '.join(command)}`, cells_per_job {k if k > 1 else '(none: 1)'}",
         f"exit {code}, {wall:.1f} s wall", "", ""),
        ("median poll cycle (Runner._cycle)", f"{med:.1f} ms" if med is not None else "no cycles timed",
         f"<= {CYCLE_MS:g} ms", med is not None and med <= CYCLE_MS),
    ]  # fmt: skip
    if cycles:
        p90 = durations[min(len(durations) - 1, int(0.9 * len(durations)))]
        rows += [
            ("  cycles; first (submits); p90; max", f"{len(cycles)}; {cycles[0]['s'] * 1000:.0f}; {p90:.0f}; {durations[-1]:.0f} ms", "", ""),
            ("  median cycle that asked sacct/squeue (n)",
             f"{median(querying):.0f} ms ({len(querying)})" if querying else "none", "", ""),
            ("  median CPU per cycle", f"{median(c['cpu_s'] * 1000 for c in cycles):.1f} ms", "", ""),
            ("  result.json reads per cycle (median; max)",
             f"{median(c['result.json'] for c in cycles):g}; {max(c['result.json'] for c in cycles)}", "", ""),
            ("  attempts followed per cycle (median; max)",
             f"{median(c['handles'] for c in cycles):g}; {max(c['handles'] for c in cycles)}", "", ""),
            ("  all reads over the run: result.json, other json, log tails, metrics",
             ", ".join(str(d["reads"][key]) for key in ("result.json", "other json", "log tails", "metrics reads")), "", ""),
        ]  # fmt: skip
    rows += [
        ("submitter CPU, own (children excluded)", f"{own_cpu:.2f} s = {100 * own_cpu / wall:.2f} % of a core",
         f"<= {CPU_PCT:g} %", 100 * own_cpu / wall <= CPU_PCT),
        ("  of which inside poll cycles", f"{sum(c['cpu_s'] for c in cycles):.2f} s = "
         f"{100 * sum(c['cpu_s'] for c in cycles) / wall:.2f} % (the rest: start, imports, planning)", "", ""),
        ("  with the sbatch/sacct/squeue it ran", f"{usage.ru_utime + usage.ru_stime:.2f} s", "", ""),
        ("  peak RSS", f"{d['rss_mib']:.0f} MiB", "", ""),
        ("status calls (sacct + squeue) in the busiest 60 s", f"{window}", f"<= {STATUS_PER_MIN:g}", window <= STATUS_PER_MIN),
        ("  per minute of the run", f"{per_min:.1f} ({calls['sacct']} sacct, {calls['squeue']} squeue in {wall:.0f} s)",
         "", ""),
        ("  sacct per minute", f"{calls['sacct'] * 60 / wall:.1f}", "", ""),
        ("  sbatch calls; array tasks", f"{calls['sbatch']}; {tasks}", "", ""),
        ("  cells per array task", f"{cells / tasks:g}" if tasks else "-", f"{k}" if k > 1 else "",
         "" if k == 1 or not tasks else cells / tasks >= min(k, cells) - 1e-9),
        ("other jobs in the queue at the start", f"{busy}", "", ""),
    ]  # fmt: skip
    return rows


def table(title: str, rows: list[tuple]) -> None:
    print(f"\n{title}")
    w0 = max(len("measure"), *(len(r[0]) for r in rows))
    w1 = max(len("figure"), *(len(str(r[1])) for r in rows))
    print(f"{'measure':<{w0}}  {'figure':<{w1}}  {'target':<12}  ")
    for label, figure, target, ok in rows:
        verdict = "" if ok == "" else ("met" if ok else "NOT met")
        print(f"{label:<{w0}}  {str(figure):<{w1}}  {target:<12}  {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=10000, help="Phase B's cells (a multiple of 4; default 10000)")
    ap.add_argument("--plan-cells", type=int, default=10000, help="Phase A's cells (a multiple of 4; default 10000)")
    ap.add_argument("--slurm", action="store_true", help="also Phase B, on the SLURM test cluster")
    ap.add_argument("--no-plan", action="store_true", help="skip Phase A")
    ap.add_argument("--cells-per-job", type=int, default=100, help="Phase B's cells_per_job (1: the key is left out)")
    ap.add_argument("--command", default="true", help="Phase B's command for every cell (default: true)")
    ap.add_argument("--timeout", type=float, default=3600, help="Phase B gives up waiting after this many seconds")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:  # a child interpreter: one measurement, as JSON
        print(json.dumps(measure(args.measure, args.work)))
        return
    cells, plan_cells = (max(4, n // 4 * 4) for n in (args.cells, args.plan_cells))
    work = Path(tempfile.mkdtemp(prefix="gridsubmit-scale-"))
    print(f"work folder {work}")
    if not args.no_plan:
        table(f"Phase A: the submitter before any job runs, {plan_cells} cells (doses 1..{plan_cells // 4} x dense/sparse "
              "x train/test; local profile; one fresh interpreter per measurement)", phase_a(work / "plan", plan_cells))  # fmt: skip
    if args.slurm:
        print(f"\nPhase B: running {cells} cells of `{args.command}` (doses 1..{cells // 4} x dense/sparse x train/test) on the SLURM "
              "test cluster ...", flush=True)  # fmt: skip
        result = phase_b(work, cells, max(1, args.cells_per_job), args.timeout, shlex.split(args.command))
        if isinstance(result, str):
            print(f"Phase B: {result}")
        else:
            table("Phase B: the grid on the SLURM test cluster", result)
    print(f"\nwork folder: {work}")


if __name__ == "__main__":
    main()
