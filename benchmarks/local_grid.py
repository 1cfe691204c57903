"""The local backend, before and after a change, side by side in one run.

Each figure is measured for two versions of gridsubmit: this checkout's ``src`` ("after")
and the commit given by ``--before`` (default a29ed50, the last one that started cells
through submitit's LocalExecutor), unpacked with ``git archive`` into a temporary folder
and run with ``PYTHONPATH`` pointing at its ``src``. Both sources are byte-compiled first, as
pip leaves an installed package (where PYTHONDONTWRITEBYTECODE is set, every interpreter would
otherwise compile gridsubmit's modules at each start: about 9 ms per node task here). Every run is a child process
(``gridsubmit submit`` through ``gridsubmit.cli.main``, timed from the call, so the
interpreter's own start and imports are left out of the wall times).

  CPU per cell     the whole process tree's CPU (runner, task wrappers, submitit's controllers
                   where there are any, the commands), from getrusage(RUSAGE_CHILDREN) with this
                   process as the subreaper of everything the run starts: (CPU of 24 x `true`
                   - CPU of 12 x `true`) / 12, so the runner's own start cancels out. Target <= 60 ms.
  12 x true        wall time of 12 cells of `true` on 2 slots. Target <= 1 s.
  24 x 1 s         wall time of 24 cells of `sleep 1` on 2 slots, and its ratio to the ideal
                   24 x 1 s / 2 = 12 s (target <= 1.15), with the most commands seen at once.
  waiting cells    5 cells of `sleep 20`, max_parallel 1 (one runs, four wait): over a 10 s
                   window, the CPU (/proc utime + stime) of the processes that belong to the
                   cells that wait, and how many there are. Target 0. The runner's own CPU over
                   the window is printed beside it.

    python benchmarks/local_grid.py [--before REV] [--cells 24] [--slots 2] [--seconds 1]
                                    [--command true] [--idle-window 10] [--no-idle]

``--command true`` runs the timed grid with `true` instead of `sleep SECONDS` (no ideal to
compare with: its ratio is not printed).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchlib import byte_compiled, unpack

HERE = Path(__file__).resolve().parent
AFTER_SRC = HERE.parent / "src"
TICK = os.sysconf("SC_CLK_TCK")
DRIVER = """
import json, sys, time
from gridsubmit.cli import main
t = time.monotonic()
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as fh:
    json.dump({"wall": time.monotonic() - t, "code": code}, fh)
"""


def become_subreaper() -> None:
    """Orphans of the runs (processes whose parent ended first) are re-parented to this
    process, which reaps them: their CPU is counted in RUSAGE_CHILDREN too."""
    PR_SET_CHILD_SUBREAPER = 36
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed: the CPU of orphaned processes could not be counted")


def reap_all(timeout: float = 60.0) -> None:
    """Wait for every descendant (children and adopted orphans) to end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.02)
    print("warning: descendants still running after the run; their CPU is not counted", file=sys.stderr)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def write_study(work: Path, cells: int, command: list[str]) -> Path:
    study = work / "study.yaml"
    study.write_text(yaml.safe_dump({"name": "bench", "roots": None, "doses": list(range(1, cells + 1)), "views": ["dense"],
                                     "splits": ["train"], "inputs": None, "expected_outputs": [], "command": command}))  # fmt: skip
    return study


def write_profile(work: Path, slots: int) -> Path:
    profile = work / "local.yaml"
    profile.write_text(f"backend: local\ntime: '10:00'\nmax_parallel: {slots}\n")
    return profile


def env_for(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src)}


def timed_run(src: Path, work: Path, cells: int, slots: int, command: list[str]) -> dict:
    """One `gridsubmit submit` of ``cells`` cells: wall time (inside the process), the whole
    tree's CPU, and the most commands that ran at once."""
    work.mkdir(parents=True)
    study, profile = write_study(work, cells, command), write_profile(work, slots)
    out = work / "timing.json"
    reap_all()
    before = children_cpu()
    with open(work / "submit.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(out), "submit", "--study", str(study), "--cluster",
                                 str(profile), "--artifact-root", str(work / "run"), "--quiet"],
                                stdout=log, stderr=subprocess.STDOUT, env=env_for(src))  # fmt: skip
        proc.wait()
    reap_all()
    cpu = children_cpu() - before
    timing = json.loads(out.read_text()) if out.exists() else {"wall": float("nan"), "code": proc.returncode}
    if timing["code"] != 0:
        sys.exit(f"the run in {work} failed (exit {timing['code']}); see {work / 'submit.log'}")
    runs = [json.loads(p.read_text()) for p in (work / "run" / "logs").rglob("result.json")]
    overlap = max_overlap([(r["started_at"], r["ended_at"]) for r in runs if r.get("started_at")])
    return {"wall": timing["wall"], "cpu": cpu, "overlap": overlap, "results": len(runs)}


def max_overlap(intervals) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    depth = best = 0
    for _, step in events:
        depth += step
        best = max(best, depth)
    return best


# --- the idle cost: CPU of a run whose cells wait for a slot ----------------------------------------


def proc_table() -> dict[int, dict]:
    """Every process: parent, CPU seconds (utime + stime) and command line."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        # after the name: state(0) ppid(1) ... utime(11) stime(12)
        table[int(entry)] = {"ppid": int(fields[1]), "cpu": (int(fields[11]) + int(fields[12])) / TICK, "cmd": cmdline}
    return table


def run_tree(root_pid: int) -> dict[int, dict]:
    """The run's processes by role: runner; controller (submitit's, where there is one);
    task (gridsubmit's wrapper: running when a command runs below it, else waiting); command
    (the cell's own process and below)."""
    table = proc_table()
    children: dict[int, list[int]] = {}
    for pid, p in table.items():
        children.setdefault(p["ppid"], []).append(pid)
    tree: dict[int, dict] = {}
    stack = [(root_pid, "runner")]
    while stack:
        pid, role = stack.pop()
        if pid not in table:
            continue
        p = table[pid]
        if role != "command":
            role = "runner" if pid == root_pid else "controller" if "submitit.local._local" in p["cmd"] \
                else "task" if "submitit.core._submit" in p["cmd"] or "gridsubmit.task" in p["cmd"] else "other"
        tree[pid] = {**p, "role": role}
        for child in children.get(pid, []):
            stack.append((child, "command" if role in ("task", "command") else ""))
    for pid, p in tree.items():  # a task with a command below it runs; one without waits
        if p["role"] == "task":
            p["role"] = "running task" if any(tree.get(c, {}).get("role") == "command" for c in children.get(pid, [])) else "waiting task"
    for pid, p in tree.items():  # controllers follow their task
        if p["role"] == "controller":
            kids = [tree[c]["role"] for c in children.get(pid, []) if c in tree]
            p["role"] = "running controller" if "running task" in kids else "waiting controller"
    return tree


def idle_cost(src: Path, work: Path, window: float, cells: int = 5, slots: int = 1, seconds: int = 20) -> dict | None:
    work.mkdir(parents=True)
    study, profile = write_study(work, cells, ["sleep", str(seconds)]), write_profile(work, slots)
    log = open(work / "submit.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gridsubmit", "submit", "--study", str(study), "--cluster", str(profile),
                             "--artifact-root", str(work / "run"), "--quiet"], stdout=log, stderr=subprocess.STDOUT,
                            env=env_for(src))  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the first command runs, then let the rest settle
            if any(p["role"] == "command" for p in run_tree(proc.pid).values()):
                break
            time.sleep(0.1)
        else:
            print(f"idle cost: no command started within 60 s; see {work / 'submit.log'}")
            return None
        time.sleep(2.0)
        before = run_tree(proc.pid)
        t0 = time.monotonic()
        time.sleep(window)
        after = run_tree(proc.pid)
        span = time.monotonic() - t0
    finally:
        proc.send_signal(signal.SIGINT)  # a local submit cancels its cells on Ctrl-C
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        reap_all()
    groups: dict[str, list[float]] = {}
    for pid, p in after.items():
        if p["role"] == "command":
            continue
        used = p["cpu"] - before[pid]["cpu"] if pid in before else p["cpu"]  # a process born in the window: all of it
        groups.setdefault(p["role"], []).append(used)
    waiting = groups.get("waiting controller", []) + groups.get("waiting task", [])
    return {"span": span, "waiting_n": len(waiting), "waiting_pct": 100 * sum(waiting) / span,
            "runner_pct": 100 * sum(groups.get("runner", [])) / span,
            "running_pct": 100 * sum(groups.get("running controller", []) + groups.get("running task", [])) / span}


# --- the comparison ----------------------------------------------------------------------------------


def measure(src: Path, work: Path, args, command: list[str]) -> dict:
    n = args.cells
    figures = {"true12": timed_run(src, work / "true12", 12, args.slots, ["true"]),
               "true24": timed_run(src, work / "true24", 24, args.slots, ["true"]),
               "grid": timed_run(src, work / "grid", n, args.slots, command)}  # fmt: skip
    figures["cpu_per_cell"] = (figures["true24"]["cpu"] - figures["true12"]["cpu"]) / 12
    figures["idle"] = None if args.no_idle else idle_cost(src, work / "idle", args.idle_window)
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default="a29ed50", help="the commit to compare with (default: a29ed50)")
    ap.add_argument("--cells", type=int, default=24)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--command", nargs="+", help="the timed grid's command instead of `sleep SECONDS` (e.g. true)")
    ap.add_argument("--no-idle", action="store_true", help="skip the idle-cost figure")
    ap.add_argument("--idle-window", type=float, default=10.0, help="seconds over which the idle CPU is measured")
    args = ap.parse_args()
    become_subreaper()
    command = args.command or ["sleep", f"{args.seconds:g}"]
    ideal = args.cells * args.seconds / args.slots if not args.command else 0.0
    work = Path(tempfile.mkdtemp(prefix="gridsubmit-bench-"))
    versions = {f"before ({args.before})": unpack(args.before, work / "before"),
                "after (this checkout)": byte_compiled(AFTER_SRC)}
    results = {name: measure(src, work / name.split()[0], args, command) for name, src in versions.items()}

    names = list(results)
    grid_name = f"{args.cells} x {' '.join(command)} on {args.slots} slots"
    print(f"\nlocal backend, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; work folder {work}\n")
    print(f"{'':<46} {names[0]:>24} {names[1]:>24}  target")
    row = lambda label, values, target="": print(f"{label:<46} {values[0]:>24} {values[1]:>24}  {target}")  # noqa: E731
    row("CPU per cell, whole tree (24 vs 12 x true)", [f"{r['cpu_per_cell'] * 1000:.0f} ms" for r in results.values()], "<= 60 ms")
    row("  tree CPU of 12 x true / of 24 x true", [f"{r['true12']['cpu']:.2f} s / {r['true24']['cpu']:.2f} s" for r in results.values()])
    row(f"12 x true on {args.slots} slots, wall", [f"{r['true12']['wall']:.2f} s" for r in results.values()], "<= 1 s")
    row(f"{grid_name}, wall", [f"{r['grid']['wall']:.2f} s" for r in results.values()])
    if ideal:
        row(f"  x ideal ({ideal:g} s)", [f"{r['grid']['wall'] / ideal:.3f}" for r in results.values()], "<= 1.15")
    row("  most commands at once", [str(r["grid"]["overlap"]) for r in results.values()], f"<= {args.slots}")
    row("  tree CPU per cell", [f"{r['grid']['cpu'] / args.cells * 1000:.0f} ms" for r in results.values()])
    if not args.no_idle:
        idle = [r["idle"] for r in results.values()]
        fmt = lambda i, key: "n/a" if i is None else f"{i[key]:.2f} %"  # noqa: E731
        row("waiting cells (4 of 5): CPU, % of a core", [fmt(i, "waiting_pct") for i in idle], "0")
        row("  their processes", ["n/a" if i is None else str(i["waiting_n"]) for i in idle], "0")
        row("  runner meanwhile, % of a core", [fmt(i, "runner_pct") for i in idle])
        row("  the running cell's wrappers, % of a core", [fmt(i, "running_pct") for i in idle])
    after = results[names[1]]
    met = [after["cpu_per_cell"] <= 0.060, after["true12"]["wall"] <= 1.0, after["grid"]["overlap"] <= args.slots,
           not ideal or after["grid"]["wall"] <= 1.15 * ideal, args.no_idle or (after["idle"] or {}).get("waiting_pct", 1) == 0]  # fmt: skip
    print(f"\nafter: {'all targets met' if all(met) else 'NOT all targets met'}")
    sys.exit(0 if all(met) else 1)


if __name__ == "__main__":
    main()
