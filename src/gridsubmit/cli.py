"""Command line: parse arguments, call the layers below, print. No logic of its own."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from . import __version__
from . import knobs as kn
from . import report
from .api import Detached, GridExecutor, HangUp, Rerun, Run, StuckError, finished, stale_of
from .errors import UsageError
from .progress import Progress
from .states import JobState
from .study import Filters, load_study

ROOT_FLAGS = ("phase_c", "phase_e", "phase_f")
TIMED_OUT = 3  # `wait --timeout` passed; the run goes on
PLAN_ROOT = Path("runs/plan")  # `plan` without --artifact-root: where the output folders it shows would be
STUCK = 4  # `wait --fail-on-held`: a job is held or cannot start by itself; the run goes on
QUIET_HELP = "print only errors, warnings and the closing summary: no progress display, no status table"


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dose", type=int, action="append", default=[], help="only this dose (repeatable)")
    p.add_argument("--view", action="append", default=[], help="only this view (repeatable)")
    p.add_argument("--split", action="append", default=[], help="only this split (repeatable)")


def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", type=Path, help="study YAML (default: the built-in fly64 layout)")
    for name in ROOT_FLAGS:
        p.add_argument(f"--{name.replace('_', '-')}-root", type=Path, dest=f"{name}_root", help=f"the {name} root folder")
    p.add_argument("--workdir", type=Path, help="where the cells' command runs (default: the study's `workdir`, "
                   "else the current directory); a run keeps the one it was first submitted with")
    p.add_argument("--strict", action="store_true", help="a BLOCKED cell or a command that cannot start is an error")
    _filters(p)


def _rerun_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rerun-failed", action="store_true", help="run again the cells that ended without completing")
    p.add_argument("--rerun-stale", action="store_true", help="run again the COMPLETED cells whose inputs, options, "
                   "command or working directory changed since they ran")
    p.add_argument("--rerun-all", action="store_true", help="run again every selected cell (with the filters: those); "
                   "also replaces the cells of another study in this artifact root")
    p.add_argument("--rerun", action="append", default=[], metavar="CELL", help="run this cell again, e.g. "
                   "dose_1000/dense/train (repeatable)")


def _knob_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("knobs", "override the cluster profile for this run (recorded in the manifest's last "
                             "submission; they change how cells run, not what they compute, so no cell turns stale)")  # fmt: skip
    g.add_argument("--max-parallel", type=int, metavar="N", help="local: at most N cells at once")
    g.add_argument("--time", metavar="LIMIT", help="every cell's time limit ('30', '1:30:00', '2-00:00:00')")
    g.add_argument("--partition", metavar="NAME", help="SLURM: the partition of every cell")
    g.add_argument("--cells-per-job", type=int, metavar="K", help="SLURM: run K cells one after another in one job")


def _knobs(args) -> kn.Knobs:
    return kn.Knobs(args.max_parallel, args.time, args.partition, args.cells_per_job)


def _rerun(args) -> Rerun:
    return Rerun(args.rerun_failed, args.rerun_stale, args.rerun_all, tuple(args.rerun))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gridsubmit", description="Run a condition grid of comparison jobs on SLURM or locally.")
    parser.add_argument("--version", action="version", version=f"gridsubmit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="show what would run and what is blocked")
    _study_args(p)
    p.add_argument("--artifact-root", type=Path, help=f"where outputs would go (default: {PLAN_ROOT}, a placeholder)")
    p.add_argument("--cluster", type=Path, help="cluster profile YAML (for {python})")
    p.add_argument("--argv", action="store_true", help="print each cell's command line")
    _rerun_args(p)

    p = sub.add_parser("submit", help="submit the grid (and wait for it, by default)")
    _study_args(p)
    p.add_argument("--cluster", type=Path, help="cluster profile YAML (default: local backend)")
    p.add_argument("--artifact-root", type=Path, required=True,
                   help="folder for the manifest, logs and outputs (shared with the nodes on a cluster)")
    p.add_argument("--no-wait", dest="wait", action="store_false", help="return after submitting")
    _rerun_args(p)
    p.add_argument("--hash-inputs", action="store_true", help="record each input's sha256 (default: size and mtime; "
                   "hashing multi-GB checkpoints takes a while)")
    p.add_argument("--reuse-from", action="append", default=[], type=Path, metavar="ROOT",
                   help="artifact root of an earlier run: a cell that ran there from the same command, working "
                   "directory, options and inputs, and whose outputs are unchanged, is copied, not run (repeatable)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print what would be submitted; submit nothing")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    _knob_args(p)

    for name, text in (("status", "show the state of every cell (read-only)"),
                       ("wait", "re-attach to a run and poll it to the end"),
                       ("cancel", "cancel cells of a run"), ("report", "metrics table, CSV and plot")):  # fmt: skip
        p = sub.add_parser(name, help=text)
        if name == "report":
            p.add_argument("artifact_root", type=Path, nargs="+", help="one run, or several: one table with a run column")
        else:
            p.add_argument("artifact_root", type=Path)
        if name == "status":
            p.add_argument("cell", nargs="?", help="one cell in full (e.g. dose_1000/dense/train)")
            p.add_argument("--json", action="store_true", help="the whole manifest (or the cell) as JSON")
            _filters(p)
            p.add_argument("--state", action="append", default=[], type=str.upper, choices=list(JobState.__members__),
                           metavar="STATE", help="only the cells in this state (repeatable): "
                           + ", ".join(JobState.__members__))  # fmt: skip
        if name == "wait":
            p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
            p.add_argument("--timeout", type=float, help=f"give up after this many seconds (exit {TIMED_OUT}); the run goes on")
            p.add_argument("--cancel-on-interrupt", action="store_true", help="Ctrl-C cancels the local run's cells "
                           "(default: Ctrl-C detaches and a background runner goes on)")
            p.add_argument("--fail-on-held", action="store_true", help=f"stop (exit {STUCK}) once a SLURM job is held or "
                           "waits for a reason that never clears by itself (bad account, ...); the run goes on")
            _knob_args(p)
        if name == "cancel":
            _filters(p)
        if name == "report":
            _filters(p)
            p.add_argument("--csv", type=Path, help="write the metrics here")
            p.add_argument("--plot", type=Path, help="write a PNG plot here (needs matplotlib)")
            p.add_argument("--html", type=Path, help="write a self-contained HTML page here: grid, metrics, plots, "
                           "provenance, failures")
            p.add_argument("--require-complete", action="store_true", help="exit 1 unless every cell COMPLETED, is not "
                           "stale, has its outputs and metrics")
            p.add_argument("--require-consistent", action="store_true", help="exit 1 when the cells that contribute "
                           "metrics differ in GPU model, driver, CUDA, code, environment, options or gridsubmit version")
            p.add_argument("--json", action="store_true", help="completeness, metrics, comparability, GPU-hours (and "
                           "the --compare tables) as JSON")
            p.add_argument("--compare", action="append", default=[], metavar="METRIC[:PART]", help="a table of one metric "
                           "(amplitude by default, or :phase; a single-value metric takes no part): rows dose x view (x split), a column per model, the best "
                           "marked; with --csv, the CSV holds these tables (repeatable)")
            p.add_argument("--reference", metavar="MODEL", help="--compare and the HTML page: each model's difference "
                           "from this one")
            p.add_argument("--ledger-csv", type=Path, help="write the GPU-hour ledger here (attempts, cells, doses, run, "
                           "projection)")
            p.add_argument("--colour-by", "--color-by", dest="colour_by", choices=["gpu", "driver", "cuda", "code",
                           "environment", "options", "gridsubmit"], help="--html: colour the grid's cells by this factor")

    p = sub.add_parser("logs", help="print (or follow) a cell's stdout or stderr",
                       description="Print one attempt's output. A COMPLETED attempt: its stdout. Any other: both "
                       "streams, each under a label (==> stdout.log <==, then ==> stderr.log <==, so the error comes "
                       "last). --stdout, --stderr or --follow print one stream. For an attempt whose command never "
                       "started, it says so on stderr and exits 1.")  # fmt: skip
    p.add_argument("artifact_root", type=Path)
    p.add_argument("cell", help="the cell, e.g. dose_1000/dense/train")
    p.add_argument("--attempt", type=int, help="which attempt (default: the last)")
    stream = p.add_mutually_exclusive_group()
    stream.add_argument("--stdout", dest="stream", action="store_const", const="stdout",
                        help="standard output only (the default with --follow, and for a COMPLETED attempt)")
    stream.add_argument("--stderr", dest="stream", action="store_const", const="stderr", help="standard error only")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing what is written until the attempt ends")

    p = sub.add_parser("diff", help="compare two runs: metric deltas per cell and model, and what their cells ran from")
    p.add_argument("run_a", type=Path, help="artifact root of run A")
    p.add_argument("run_b", type=Path, help="artifact root of run B (deltas are B - A)")
    p.add_argument("--json", action="store_true", help="the whole comparison as JSON")
    p.add_argument("--csv", type=Path, help="write one row per cell x model x metric here")
    p.add_argument("--all", action="store_true", help="show identical cells too")

    p = sub.add_parser("runs", help="every run under a folder, one line each (read-only)")
    p.add_argument("folder", type=Path, nargs="?", default=Path("."),
                   help="where to look (default: here); artifact roots up to 3 levels below it are found")
    p.add_argument("--json", action="store_true", help="the listing as JSON")

    p = sub.add_parser("clean", help="remove the folders and logs of superseded attempts",
                       description="Remove the attempt folders (logs, results) of attempts that a later attempt of "
                       "the same cell replaced: failed, cancelled, lost or rerun ones. The last attempt of each cell, "
                       "attempts that have not ended and output folders are never touched; the manifest keeps every "
                       "attempt's record and says what was removed.")  # fmt: skip
    p.add_argument("artifact_root", type=Path)
    p.add_argument("--dry-run", action="store_true", help="show what would be removed and how much space; remove nothing")
    p.add_argument("--json", action="store_true", help="what was (or would be) removed, as JSON")

    p = sub.add_parser("demo", help="the whole loop on a synthetic study")
    p.add_argument("--artifact-root", type=Path, help="default: gridsubmit-demo/<time>")
    p.add_argument("--cluster", type=Path, help="cluster profile YAML (default: local backend)")
    p.add_argument("--quiet", action="store_true", help="no progress display, no status table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["gridsubmit", *(sys.argv[1:] if argv is None else argv)])  # for the manifest's history
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"gridsubmit: error: {exc}", file=sys.stderr)
        return 2
    except TimeoutError as exc:
        print(f"gridsubmit: {exc}", file=sys.stderr)
        return TIMED_OUT
    except StuckError as exc:
        print(f"gridsubmit: {exc}", file=sys.stderr)
        return STUCK
    except BrokenPipeError:  # the reader went away (| head): end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Detached as exc:
        print(f"\ngridsubmit: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ngridsubmit: interrupted. SLURM jobs keep running and `gridsubmit wait <artifact-root>` re-attaches; "
              "local jobs were cancelled (`gridsubmit submit ... --rerun-failed` runs them again)", file=sys.stderr)  # fmt: skip
        root = getattr(args, "artifact_root", None)
        if isinstance(root, Path) and Run(root).exists:
            print(f"gridsubmit: {_summary(Run(root).manifest)}", file=sys.stderr)
        return 130
    except HangUp:  # the terminal closed (nothing can be printed): the manifest is saved, the cells go on
        return 129


def _executor(args, root: Path, quiet: bool = True) -> GridExecutor:
    return GridExecutor(root, args.cluster, progress=Progress(quiet=quiet))


def _grid(args, executor: GridExecutor):
    roots = {name: getattr(args, f"{name}_root") for name in ROOT_FLAGS}
    study = load_study(args.study, roots)
    filters = Filters(tuple(args.dose), tuple(args.view), tuple(args.split))
    grid = executor.plan(study, filters=filters, workdir=args.workdir)
    if args.workdir and args.workdir.resolve() != grid.workdir:
        print(f"gridsubmit: warning: this run was first submitted from {grid.workdir}; its cells keep running "
              f"there (--workdir {args.workdir} is ignored; use a new --artifact-root to change it)", file=sys.stderr)  # fmt: skip
    if args.strict and grid.blocked:
        lines = [f"  {job.key}: {'; '.join(job.missing)}" for job in grid.blocked]
        raise UsageError(f"--strict: {len(grid.blocked)} cell(s) blocked:\n" + "\n".join(lines))
    problems = executor.check(grid)
    if problems and args.strict:
        raise UsageError("--strict: the command cannot start:\n  " + "\n  ".join(problems))
    for problem in problems:
        print(f"gridsubmit: warning: {problem}", file=sys.stderr)
    return grid


def cmd_plan(args) -> int:
    executor = _executor(args, args.artifact_root or PLAN_ROOT)
    grid = _grid(args, executor)
    print(f"working directory: {grid.workdir}")
    if not Run(executor.root).exists:
        if args.argv and args.artifact_root is None:
            print(f"output folders below are placeholders under the default root {PLAN_ROOT}: give --artifact-root "
                  "ROOT (the one you will submit to) to see the real ones")  # fmt: skip
        for job in grid.jobs:
            state = "BLOCKED" if job.blocked else "PLANNED"
            print(f"{str(job.key):<32} {state}" + (f"  {'; '.join(job.missing)}" if job.blocked else ""))
            if args.argv and not job.blocked:
                print("    " + shlex.join(job.argv))
        print(f"\n{len(grid.jobs)} cells: {len(grid.runnable)} runnable, {len(grid.blocked)} blocked")
        return 0
    manifest = executor.preview(grid, rerun=_rerun(args))  # what submit would do with this root
    due = set(executor.due(manifest))
    planned = {str(job.key) for job in grid.jobs}
    for cell in manifest["jobs"]:
        if cell["key"] not in planned:
            continue
        action = "runs" if cell["key"] in due else "stays"
        note = "; ".join(cell["missing"]) if cell["state"] == JobState.BLOCKED else "stale: " + "; ".join(cell["stale"]) if cell.get("stale") else ""
        print(f"{cell['key']:<32} {cell['state']:<10} {action:<6} {note}".rstrip())
        if args.argv and cell["argv"]:
            print("    " + shlex.join(cell["argv"]))
    stale = [c for c in manifest["jobs"] if c["key"] in planned and c.get("stale") and c["key"] not in due]
    print(f"\n{len(planned)} cells in {executor.root}: {len(due & planned)} would run"
          + (f", {len(stale)} stale left as they are (--rerun-stale runs them)" if stale else ""))
    return 0


def cmd_submit(args) -> int:
    executor = _executor(args, args.artifact_root, quiet=args.quiet)
    knobs = _knobs(args)
    executor.profile = kn.apply(executor.profile, knobs)  # refuses one the backend does not have; shown by --dry-run
    grid = _grid(args, executor)
    root = executor.root
    if not grid.runnable:
        raise UsageError(f"nothing to run: all {len(grid.jobs)} cell(s) are blocked (see `gridsubmit plan`)")
    if args.dry_run:
        print(executor.dry_run(grid, rerun=_rerun(args)))
        return 0
    preview = executor.preview(grid, rerun=_rerun(args))  # refuses another study, an unknown --rerun cell, ...
    due = executor.due(preview)
    stale = [c["key"] for c in preview["jobs"] if c.get("stale") and c["state"] == JobState.COMPLETED]
    if stale:
        print(f"{len(stale)} COMPLETED cell(s) are stale and stay as they are (`--rerun-stale` runs them):")
        for cell in preview["jobs"]:
            if cell["key"] in stale:
                print(f"  {cell['key']}: {'; '.join(cell['stale'])}")
    if not due and finished(preview):  # recorded all the same: the stale marks, the history
        print(f"nothing to run: every cell of {root} has run (`--rerun-failed`, `--rerun-stale`, `--rerun-all`, "
              "`--rerun CELL` run cells again)")  # fmt: skip
    elif args.wait and not args.quiet:
        print(f"artifact root: {root}  ({len(due)} to run, {len(grid.blocked)} blocked; "
              f"backend {executor.profile.backend}; working directory {grid.workdir})")  # fmt: skip
    before = Run(root).ended()
    run = executor.submit(grid, rerun_failed=args.rerun_failed, rerun_stale=args.rerun_stale, rerun_all=args.rerun_all,
                          rerun=args.rerun, hash_inputs=args.hash_inputs, wait=args.wait,
                          command=args.command_line, reuse_from=args.reuse_from, knobs=knobs)  # fmt: skip
    _print_reuse(run)
    if not args.wait:
        print(f"submitted; `gridsubmit status {root}` shows progress, `gridsubmit wait {root}` waits")
        later = run.manifest["counts"].get("PLANNED", 0)
        if later and executor.profile.backend == "slurm":
            print(f"{later} cell(s) wait for room in the queue (max_queued: {executor.profile.max_queued}); "
                  f"`gridsubmit wait {root}` submits them as jobs end")  # fmt: skip
        return 0
    _print_outcome(run, before, table=not args.quiet)
    return run.exit_status


def _print_reuse(run: Run) -> None:
    """What the last submission reused from other runs, and what it could not, and why."""
    entry = (run.manifest.get("submissions") or [{}])[-1].get("reuse")
    if not entry:
        return
    print(f"reused {len(entry['reused'])} cell(s) from {', '.join(entry['from'])} (copied, not run)")
    if entry["refused"]:
        print(f"{len(entry['refused'])} cell(s) matched a cell there but were run, not reused:")
        for key, why in entry["refused"].items():
            print(f"  {key}: {why}")


def _print_outcome(run: Run, before: set[tuple[str, int]], table: bool = True) -> None:
    """Every cell's state (unless not ``table``), the cells by outcome, and which attempts ended
    in this command (the others ended before)."""
    m = run.manifest
    if table:
        print("\n" + report.status_table(m, stale_of(m)) + "\n")
    print(_summary(m))
    copied = {c["key"] for c in m["jobs"] if c["attempts"] and c["attempts"][-1].get("reused")}
    now = {key for key, _ in run.ended() - before} - copied
    reused = {key for key, n in run.ended() - before if key in copied}
    states: dict[str, int] = {}
    for cell in m["jobs"]:
        if cell["key"] in now:
            states[cell["state"]] = states.get(cell["state"], 0) + 1
    ended_before = sum(1 for c in m["jobs"] if c["key"] not in now and c["attempts"])
    ended_before -= len(reused)
    print(f"ran now: {len(now)}" + (f" ({', '.join(f'{n} {s}' for s, n in states.items())})" if states else "")
          + (f"; reused from other runs: {len(reused)}" if reused else "") + f"; ended before this command: {ended_before}")
    _print_notes(m)


def _print_notes(manifest: dict) -> None:
    for note in manifest.get("freshness", {}).get("notes", []):
        print(f"gridsubmit: {note}", file=sys.stderr)


def _summary(m: dict) -> str:
    """Cells by outcome; cancelled ones (asked for) are not counted as failed, stale ones not as completed."""
    cancelled = m["counts"].get("CANCELLED", 0)
    failed = sum(1 for r in m["execution_results"] if r["state"] not in (JobState.COMPLETED, JobState.CANCELLED))
    stale = f", {m['n_stale']} stale" if m.get("n_stale") else ""
    return (f"{m['n_jobs']} cells: {m['n_success']} completed{stale}, {failed} failed, "
            f"{cancelled} cancelled, {m['n_blocked']} blocked")


def _selected(args) -> Filters:
    return Filters(tuple(args.dose), tuple(args.view), tuple(args.split))


def cmd_status(args) -> int:
    run = Run.open(args.artifact_root)
    if args.cell and (_selected(args) != Filters() or args.state):
        raise UsageError("give a cell or --dose/--view/--split/--state, not both")
    if args.cell:
        manifest = run.manifest
        cell = run.cell(args.cell, manifest)
        if args.json:
            _print_json(cell)
        else:
            print(report.cell_text(cell, run.root, cell.get("stale") or [], manifest.get("submissions", [])))
            _print_notes(manifest)
        return 0
    manifest = run.select(_selected(args), args.state)  # every cell without filters
    if args.json:
        _print_json(manifest)
        return 0
    print(f"run {manifest['run_id']} · {manifest['cluster'].get('backend')} ({manifest['cluster'].get('name')}) · {run.root}")
    stale = stale_of(manifest)
    print(report.status_table(manifest, stale))
    everything = run.manifest
    selected = f" of {everything['n_jobs']} selected" if manifest["n_jobs"] != everything["n_jobs"] else ""
    print(f"\n{manifest['n_jobs']} cells{selected}: " + (", ".join(f"{k} {v}" for k, v in manifest["counts"].items()) or "none")
          + (f" ({len(stale)} of them stale: `submit --rerun-stale` runs them)" if stale else ""))
    from .ledger import footer

    print(footer(run.ledger(manifest)))
    _print_notes(manifest)
    outage = everything.get("scheduler_outage")
    if outage and not finished(everything):
        print(f"scheduler not answering since {report.local_time(outage['since'])}, {outage['failed_calls']} "
              f"status call(s) failed ({outage.get('last_error')}); nothing is judged lost meanwhile")  # fmt: skip
    if not finished(everything):
        who = run.runner()
        print(f"runner: {who}" if who is not None else
              f"no runner attached: `gridsubmit wait {run.root}` resumes")  # fmt: skip
    return 0


def cmd_wait(args) -> int:
    run = Run.open(args.artifact_root)
    before = run.ended()
    run.wait(timeout=args.timeout, progress=Progress(quiet=args.quiet), fail_on_stuck=args.fail_on_held,
             cancel_on_interrupt=args.cancel_on_interrupt, knobs=_knobs(args))  # fmt: skip
    _print_outcome(run, before, table=not args.quiet)
    return run.exit_status


def cmd_logs(args) -> int:
    run = Run.open(args.artifact_root)
    attempt = run.attempt(args.cell, args.attempt)
    active = attempt["state"] in (JobState.SUBMITTED, JobState.PENDING, JobState.RUNNING)
    logs = [run.log_path(args.cell, args.attempt, stream) for stream in ("stdout", "stderr")]
    if not any(path.exists() for path in logs) and not (args.follow and active):
        why = attempt["state"] + (f": {attempt['error']}" if attempt.get("error") else "")
        if attempt.get("cleaned_at"):
            what = f"has no log files: `gridsubmit clean` removed {run.root / attempt['dir']} at {report.local_time(attempt['cleaned_at'])}"
        elif attempt.get("started_at") is not None or attempt.get("returncode") is not None:
            what = f"has no log files in {run.root / attempt['dir']} (removed?)"
        else:
            what = "has not started yet" if active else "never started"
            why += "; --follow waits for it" if active else ""
        print(f"gridsubmit: attempt {attempt['attempt']} of {args.cell} {what}: {why}", file=sys.stderr)
        return 1
    if args.stream is None and not args.follow and attempt["state"] != JobState.COMPLETED:  # both, the error last
        for i, path in enumerate(logs):
            sys.stdout.buffer.write(b"\n" * (i > 0) + f"==> {path.name} <==\n".encode())
            tail = b"\n"
            if path.exists():
                with open(path, "rb") as fh:
                    while chunk := fh.read(65536):
                        sys.stdout.buffer.write(chunk)
                        tail = chunk[-1:]
            sys.stdout.buffer.write(b"" if tail == b"\n" else b"\n")
        sys.stdout.flush()
        return 0
    path = run.log_path(args.cell, args.attempt, args.stream or "stdout")
    with open(path, "rb") if path.exists() else open(os.devnull, "rb") as fh:
        while True:
            chunk = fh.read(65536)
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                continue
            attempt = run.attempt(args.cell, args.attempt)
            if not args.follow or attempt["state"] not in (JobState.SUBMITTED, JobState.PENDING, JobState.RUNNING):
                return 0
            time.sleep(0.5)
            if fh.name == os.devnull and path.exists():
                return cmd_logs(args)


def cmd_cancel(args) -> int:
    filters = Filters(tuple(args.dose), tuple(args.view), tuple(args.split))
    print(Run.open(args.artifact_root).cancel(filters))
    return 0


def cmd_report(args) -> int:
    from . import compare, comparability, ledger

    if len(args.artifact_root) > 1:
        return _report_runs(args)
    run = Run.open(args.artifact_root[0])
    manifest = run.select(_selected(args))  # every cell without filters
    stale = stale_of(manifest)
    ok, missing, _ = report.completeness(manifest, stale)
    shown = report.only(manifest, ok)
    comparable, book = run.comparability(manifest), run.ledger(manifest)
    tables = [compare.table(manifest, ok, *compare.parse_spec(spec, manifest), args.reference) for spec in args.compare]
    out = sys.stderr if args.json else sys.stdout  # --json: stdout holds the JSON only
    if args.json:
        _print_json({"run_id": manifest["run_id"], "artifact_root": str(run.root), "contributing": ok,
                     "not_included": [{"key": k, "why": why} for k, why in missing], "metrics": report.metric_rows(shown),
                     "comparability": comparable, "gpu_hours": book, "compare": tables})  # fmt: skip
    else:
        print(report.metrics_table(shown, missing))
        print("\n" + report.completeness_text(manifest, stale))
        print("\n" + comparability.text(comparable))
        print("\n" + ledger.text(book))
        for t in tables:
            print("\n" + compare.text(t))
    _print_notes(manifest)
    if args.csv:
        n = compare.write_csv(tables, args.csv) if tables else report.write_csv(shown, args.csv)
        print(f"wrote {n} row(s) to {args.csv}", file=out)
    if args.ledger_csv:
        n = ledger.write_csv(book, args.ledger_csv)
        print(f"wrote {n} row(s) to {args.ledger_csv}", file=out)
    if args.plot:
        report.plot(shown, args.plot, doses=[cell["dose"] for cell in manifest["jobs"]])
        print(f"wrote {args.plot}", file=out)
    if args.html:
        from .report_html import write_html

        write_html(manifest, args.html, stale, colour_by=args.colour_by, reference=args.reference, ledger_book=book)
        print(f"wrote {args.html}", file=out)
    if args.require_complete and missing:
        print(f"gridsubmit: --require-complete: {len(missing)} cell(s) do not contribute", file=sys.stderr)
        return 1
    if args.require_consistent and not comparable["consistent"]:
        print(f"gridsubmit: --require-consistent: {', '.join(comparable['varying'])} vary across the contributing cells",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _report_runs(args) -> int:
    """Several runs: each one's table and completeness, one CSV with a run column, one plot."""
    one_run = {"--html": args.html, "--json": args.json, "--compare": args.compare, "--reference": args.reference,
               "--ledger-csv": args.ledger_csv, "--require-consistent": args.require_consistent,
               "--colour-by": args.colour_by}  # fmt: skip
    flags = [flag for flag, value in one_run.items() if value]
    if flags:
        raise UsageError(f"{', '.join(flags)}: one run only; give one artifact root (or use `gridsubmit diff A B`)")
    runs = [(str(root), Run.open(root)) for root in args.artifact_root]
    given: dict[Path, str] = {}
    for label, run in runs:
        if run.root in given:
            same = "is given twice" if label == given[run.root] else f"and {given[run.root]} are the same run ({run.root})"
            raise UsageError(f"{label} {same}: give each run once")
        given[run.root] = label
    manifests = [(label, run.manifest) for label, run in runs]
    filters = _selected(args)
    present = {axis: {cell[axis] for _, m in manifests for cell in m["jobs"]} for axis in ("dose", "view", "split")}
    stray = filters.stray(sorted(present["dose"]), sorted(present["view"]), sorted(present["split"]), "no cell of these runs")
    if stray:
        raise UsageError(stray)
    shown, incomplete = [], 0
    for (label, run), (_, manifest) in zip(runs, manifests):
        manifest = run.select(filters, strict=False)
        stale = stale_of(manifest)
        ok, missing, _ = report.completeness(manifest, stale)
        incomplete += len(missing)
        print(f"== run {label}: {manifest['study'].get('name')}, created {report.local_time(manifest.get('created_at'))}, "
              f"run id {manifest['run_id']}")  # fmt: skip
        print(report.metrics_table(report.only(manifest, ok), missing))
        print("\n" + report.completeness_text(manifest, stale) + "\n")
        _print_notes(manifest)
        shown.append((label, report.only(manifest, ok)))
    if args.csv:
        n = report.write_runs_csv(shown, args.csv)
        print(f"wrote {n} row(s) of {len(shown)} runs to {args.csv}")
    if args.plot:
        report.plot(None, args.plot, runs=shown, doses=[c["dose"] for _, run in runs for c in run.select(filters, strict=False)["jobs"]])
        print(f"wrote {args.plot}")
    if args.require_complete and incomplete:
        print(f"gridsubmit: --require-complete: {incomplete} cell(s) do not contribute", file=sys.stderr)
        return 1
    return 0


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=1))


def cmd_runs(args) -> int:
    from .runs import list_runs, runs_table

    listing = list_runs(args.folder)
    if args.json:
        _print_json(listing)
    else:
        print(runs_table(listing))
    return 0


def cmd_clean(args) -> int:
    from .clean import clean, clean_text

    out = clean(args.artifact_root, dry_run=args.dry_run)
    if args.json:
        _print_json(out)
    else:
        print(clean_text(out))
    return 0


def cmd_diff(args) -> int:
    from . import diff

    a, b = Run.open(args.run_a).manifest, Run.open(args.run_b).manifest
    d = diff.diff_runs(a, b)
    for manifest in (a, b):
        _print_notes(manifest)
    if args.json:
        _print_json(d)
        for warning in d["warnings"]:  # in the JSON too, but seen here
            print(f"gridsubmit: warning: {warning}", file=sys.stderr)
    else:
        print(diff.diff_text(d, all_cells=args.all))
    if args.csv:
        n = diff.write_diff_csv(d, args.csv)
        print(f"wrote {n} row(s) to {args.csv}", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_demo(args) -> int:
    from .demo.generate import make_study

    root = (args.artifact_root or Path("gridsubmit-demo") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UsageError(f"{root}: exists and is not an empty folder; the demo writes a study and a run there: "
                         "choose another --artifact-root")  # fmt: skip
    study = make_study(root / "study")
    print(f"synthetic study: {study}")
    code = cmd_submit(argparse.Namespace(
        study=study, phase_c_root=None, phase_e_root=None, phase_f_root=None, strict=True, dose=[], view=[], split=[],
        workdir=None, cluster=args.cluster, artifact_root=root, wait=True, rerun_failed=False, rerun_stale=False,
        rerun_all=False, rerun=[], hash_inputs=False, dry_run=False, quiet=args.quiet, command_line=args.command_line,
        reuse_from=[], max_parallel=None, time=None, partition=None, cells_per_job=None))  # fmt: skip
    manifest = Run.open(root).manifest
    print("\n" + report.metrics_table(manifest))
    plot = root / "metrics.png"
    try:
        report.plot(manifest, plot)
        print(f"\nplot: {plot}")
    except UsageError as exc:  # matplotlib is optional
        print(f"\n(no plot: {exc})")
    print(f"\nartifact root: {root}\n  " + "\n  ".join(map(str, Run(root).files)))
    return code


COMMANDS = {"plan": cmd_plan, "submit": cmd_submit, "status": cmd_status, "wait": cmd_wait, "logs": cmd_logs,
            "cancel": cmd_cancel, "report": cmd_report, "diff": cmd_diff, "demo": cmd_demo, "runs": cmd_runs,
            "clean": cmd_clean}  # fmt: skip
