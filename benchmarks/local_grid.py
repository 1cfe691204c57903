"""24 cells of a 1-second command on 2 slots, three ways, in one process:

  gridsubmit   the local backend (submit --wait), cap of 2 concurrent jobs
  sequential   the seed's loop: subprocess.run for one cell after another
  submitit     LocalExecutor, all 24 submitted at once (no cap: every job starts at once)

Prints wall times and gridsubmit's ratio to the ideal 24 x 1 s / 2 = 12 s (target <= 1.15),
and the most commands gridsubmit ever had running at once (must be 2).

Then the idle cost: 5 cells of `sleep 20` with max_parallel 1 (one runs, four wait), run by
`python -m gridsubmit submit` in a child process; over a 10 s window, the CPU of every
process of that run's tree (the runner, submitit's controllers, the task wrappers at the
gate and around the running command), the commands themselves excluded, from
/proc/<pid>/stat utime + stime; target <= 1 % of one core in total. The run is then
interrupted (Ctrl-C: a local submit cancels its cells).

    python benchmarks/local_grid.py [--cells 24] [--slots 2] [--seconds 1] [--no-idle] [--idle-window 10]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import submitit
import yaml

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


# --- the idle cost: CPU of a run whose cells wait for a slot ----------------------------------------

IDLE_TARGET_PCT = 1.0
TICK = os.sysconf("SC_CLK_TCK")


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
    """The run's processes by role: runner, controller (submitit's), task (waiting at the gate,
    or running its command) and command (the cell's own process and below: not counted)."""
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
                else "task" if "submitit.core._submit" in p["cmd"] else "other"
        tree[pid] = {**p, "role": role}
        for child in children.get(pid, []):
            stack.append((child, "command" if role in ("task", "command") else ""))
    for pid, p in tree.items():  # a task with a command below it runs; one without waits at its gate
        if p["role"] == "task":
            p["role"] = "running task" if any(tree.get(c, {}).get("role") == "command" for c in children.get(pid, [])) else "waiting task"
    for pid, p in tree.items():  # controllers follow their task
        if p["role"] == "controller":
            kids = [tree[c]["role"] for c in children.get(pid, []) if c in tree]
            p["role"] = "running controller" if "running task" in kids else "waiting controller"
    return tree


def idle_cost(work: Path, window: float, cells: int = 5, slots: int = 1, seconds: int = 20) -> None:
    work.mkdir(parents=True)
    study = work / "study.yaml"
    study.write_text(yaml.safe_dump({"name": "idle", "roots": None, "doses": list(range(1, cells + 1)), "views": ["dense"],
                                     "splits": ["train"], "inputs": None, "expected_outputs": [],
                                     "command": ["sleep", str(seconds)]}))  # fmt: skip
    profile = work / "local.yaml"
    profile.write_text(f"backend: local\ntime: '10:00'\nmax_parallel: {slots}\n")
    log = open(work / "submit.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gridsubmit", "submit", "--study", str(study), "--cluster", str(profile),
                             "--artifact-root", str(work / "run"), "--quiet"], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the first command runs, then let the spares settle at their gates
            tree = run_tree(proc.pid)
            if any(p["role"] == "command" for p in tree.values()):
                break
            time.sleep(0.1)
        else:
            print(f"\nidle cost: no command started within 60 s; see {work / 'submit.log'}")
            return
        started = time.monotonic()
        time.sleep(2.0)
        before = run_tree(proc.pid)
        t0 = time.monotonic()
        time.sleep(window)
        after = run_tree(proc.pid)
        span = time.monotonic() - t0
        try:  # the runner saves its manifest at most every 0.5 s: close enough to count who waits
            manifest = json.loads((work / "run" / "comparison_manifest.json").read_text())
        except (OSError, ValueError):
            manifest = {"jobs": []}
        seen = set(before) | set(after)
        if time.monotonic() - started >= seconds:
            print("\nidle cost: (the window outlasted the first command; figures include a slot change)")
    finally:
        proc.send_signal(signal.SIGINT)  # a local submit cancels its cells on Ctrl-C
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for pid in seen:  # nothing of the run may outlive it (by pid: only what this run started)
            if pid != proc.pid and pid in proc_table():
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
    groups: dict[str, list[float]] = {}
    for pid, p in after.items():
        if p["role"] == "command":
            continue
        used = p["cpu"] - before[pid]["cpu"] if pid in before else p["cpu"]  # a process born in the window: all of it
        groups.setdefault(p["role"], []).append(used)
    queued = sum(1 for c in manifest["jobs"] if c["state"] in ("PLANNED", "SUBMITTED", "PENDING"))
    waiting = len(groups.get("waiting task", []))
    total = sum(sum(v) for v in groups.values())
    pct = lambda cpu: 100 * cpu / span  # noqa: E731
    print(f"\nidle cost: {cells} cells of `sleep {seconds}`, max_parallel {slots}: CPU over {span:.1f} s, "
          f"commands excluded (/proc utime + stime, {1000 / TICK:.0f} ms ticks)")  # fmt: skip
    print(f"{'processes':<44} {'n':>3} {'CPU s':>7} {'% of a core':>12}")
    order = ("runner", "waiting controller", "waiting task", "running controller", "running task", "other")
    names = {"runner": "runner (gridsubmit submit, polling)", "waiting controller": "submitit controllers of waiting cells",
             "waiting task": "task wrappers waiting at the gate", "running controller": "submitit controller of the running cell",
             "running task": "task wrapper around the running command", "other": "other"}  # fmt: skip
    for role in order:
        if role in groups:
            cpu = sum(groups[role])
            print(f"{names[role]:<44} {len(groups[role]):>3} {cpu:7.2f} {pct(cpu):11.2f}%")
    waiting_cpu = sum(sum(groups.get(r, [])) for r in ("waiting controller", "waiting task"))
    print(f"{'waiting cells (controllers + tasks)':<44} {'':>3} {waiting_cpu:7.2f} {pct(waiting_cpu):11.2f}%")
    print(f"{'total, commands excluded':<44} {'':>3} {total:7.2f} {pct(total):11.2f}%   target <= {IDLE_TARGET_PCT:g} % "
          f"({'met' if pct(total) <= IDLE_TARGET_PCT else 'NOT met'})")  # fmt: skip
    print(f"cells waiting: {waiting} at the gate (a process each), {max(0, queued - waiting)} queued in the runner "
          f"(no process yet)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=24)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--no-idle", action="store_true", help="skip the idle-cost figure")
    ap.add_argument("--idle-window", type=float, default=10.0, help="seconds over which the idle CPU is measured")
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
    if not args.no_idle:
        idle_cost(work / "idle", args.idle_window)
    print(f"work folder: {work}")
    sys.exit(0 if verdict == "met" else 1)


if __name__ == "__main__":
    main()
