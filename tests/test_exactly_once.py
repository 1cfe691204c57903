"""Exactly once, whatever dies when: the submitter is SIGKILLed at every step of submit, poll
and merge, then `gridsubmit wait` finishes the grid. The proof is each command's own
runs.log (one line per run) and, on SLURM, sacct (one job per attempt)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import cells, gridsubmit_process, job_ids, load_manifest, run_cli, sacct_settled, wait_for

FAKESLURM = Path(__file__).parent / "fakeslurm" / "bin"


def killed_submit(*args, env: dict, log: Path, timeout: float = 180) -> str:
    """Run gridsubmit with a crash point; its output goes to a file (SLURM's sbatch wrappers
    may outlive it)."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gridsubmit", *map(str, args)], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **env})  # fmt: skip
        code = proc.wait(timeout=timeout)
    text = log.read_text()
    assert code == -signal.SIGKILL, text
    return text


def runs(cell: dict) -> int:
    log = Path(cell["output_dir"]) / "runs.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def started_attempts(root: Path, cell: dict) -> int:
    """Attempts whose task claimed the attempt and started the command (a task told to stop
    after claiming, before the command started, says so in its result: started false)."""
    n = 0
    for attempt in cell["attempts"]:
        claim, result = root / attempt["dir"] / "claim.json", root / attempt["dir"] / "result.json"
        said = json.loads(result.read_text()) if result.exists() else {}
        if claim.exists() and "gave_up" not in json.loads(claim.read_text()) and said.get("started", True):
            n += 1
    return n


def leftover_processes(root: Path) -> list[str]:
    """Processes whose command line names the artifact root (tasks, submitit, runners)."""
    return processes_matching(str(root))


def processes_matching(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if text in cmdline and state not in ("Z", "X"):
            found.append(f"{pid}: {cmdline[:160]}")
    return found


def report(capsys, backend: str, point: str, counts: dict) -> None:
    with capsys.disabled():
        print(f"\n  {backend} kill at {point}: runs per cell {sorted(counts.values())}", end="")


def assert_exactly_once(root: Path) -> dict:
    counts = {}
    for key, cell in cells(root).items():
        assert cell["state"] == "COMPLETED", (key, cell["attempts"])
        counts[key] = runs(cell)
        assert counts[key] == started_attempts(root, cell) == 1, (key, counts[key], cell["attempts"])
    return counts


LOCAL_POINTS = ["intent-saved", "process-started", "process-started:3", "backend-returned", "handles-recorded",
                "handles-saved", "granted", "granted:3", "polled:4", "merged:8", "saved", "finished", "enriched"]


@pytest.mark.parametrize("point", LOCAL_POINTS)
def test_local_submitter_killed_at_any_step_then_wait_runs_each_cell_exactly_once(scripted, point, capsys):
    # 4 cells on 2 slots, long enough for a second debounced save while cells run (saves are >= 0.5 s apart)
    study, profile, root = scripted({"*": "sleep-ok:1.2"}, doses=(1000,))
    killed_submit("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet",
                  env={"GRIDSUBMIT_CRASH_AT": point}, log=root.parent / "submit.log")  # fmt: skip
    assert run_cli("wait", root, "--quiet") == 0
    counts = assert_exactly_once(root)
    wait_for(lambda: not leftover_processes(root), timeout=15, what=f"no process left: {leftover_processes(root)}")
    report(capsys, "local", point, counts)


def test_local_interrupt_in_the_submit_window_leaves_nothing_running_and_wait_runs_each_cell_once(scripted):
    study, profile, root = scripted({"*": "sleep-ok:0.5"}, doses=(1000,))
    proc = gridsubmit_process("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet",
                              env={"GRIDSUBMIT_CRASH_AT": "never"})  # fmt: skip
    wait_for(lambda: (root / "comparison_manifest.json").exists() and any(
        a for c in cells(root).values() for a in c["attempts"]), what="attempts on disk")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in out, out
    wait_for(lambda: not leftover_processes(root), timeout=20, what=f"no process left: {leftover_processes(root)}")
    states = {c["state"] for c in cells(root).values()}
    assert states <= {"CANCELLED", "COMPLETED"}, states
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--rerun-failed",
                   "--quiet") == 0  # fmt: skip
    for cell in cells(root).values():  # a command stopped as it started may not have left its mark yet
        assert 1 <= runs(cell) <= started_attempts(root, cell) <= 2, (runs(cell), started_attempts(root, cell))


def test_a_local_run_refuses_wait_and_cancel_from_another_host(scripted, capsys):
    study, profile, root = scripted({}, doses=(1000,))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    manifest = json.loads((root / "comparison_manifest.json").read_text())
    manifest["context"]["host"] = "another-host"
    for cell in manifest["jobs"]:
        cell["state"] = "RUNNING"
        cell["attempts"][-1]["state"] = "RUNNING"
    (root / "comparison_manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert run_cli("wait", root) == 2
    assert "belongs to host 'another-host'" in capsys.readouterr().err


# --- out of memory: the command's own cgroup is the evidence -----------------------------------

OOM_LIMIT = 256 * 2**20  # room for the runner, its launcher and the task; the command goes past it


def limited_cgroup(version: str, name: str) -> Path:
    """A new memory cgroup with a limit of OOM_LIMIT and no swap, that a process can join;
    pytest.skip (saying why) where this machine has none that can be written."""
    from gridsubmit.task import _memory_cgroup

    mounts = [line.split(" - ") for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    if version == "v1":
        mine = _memory_cgroup()
        if mine is None or not mine[1].endswith("memory.oom_control"):
            pytest.skip("no cgroup-v1 memory controller is mounted here")
        parent = Path(mine[0])  # v1 lets a cgroup with processes have children
    else:
        found = [m[0].split()[4] for m in mounts if m[1].split()[0] == "cgroup2"]
        if not found:
            pytest.skip("no cgroup v2 hierarchy is mounted here")
        parent = Path(found[0])  # its top (a leaf can be made and joined there)
        controllers = (parent / "cgroup.controllers").read_text().split()
        if "memory" not in controllers:
            pytest.skip(f"cgroup v2 at {parent} has no memory controller (controllers: {' '.join(controllers) or 'none'}; "
                        "the memory controller is bound to cgroup v1 on this machine)")  # fmt: skip
        if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
            try:
                (parent / "cgroup.subtree_control").write_text("+memory")
            except OSError as exc:
                pytest.skip(f"cannot enable the memory controller below {parent}: {exc}")
    group = parent / name
    try:
        group.mkdir()
        if version == "v1":
            (group / "memory.limit_in_bytes").write_text(str(OOM_LIMIT))
            if (group / "memory.memsw.limit_in_bytes").exists():
                (group / "memory.memsw.limit_in_bytes").write_text(str(OOM_LIMIT))
        else:
            (group / "memory.max").write_text(str(OOM_LIMIT))
            if (group / "memory.swap.max").exists():
                (group / "memory.swap.max").write_text("0")
    except OSError as exc:
        if group.is_dir():
            group.rmdir()
        pytest.skip(f"no writable cgroup-{version} memory controller to stage an OOM kill at {parent}: {exc}")
    return group


def remove_cgroup(group: Path) -> None:
    for pid in (group / "cgroup.procs").read_text().split():  # none should be left; never leave one behind
        os.kill(int(pid), signal.SIGKILL)
    wait_for(lambda: not (group / "cgroup.procs").read_text().split(), timeout=10, what=f"{group} to empty")
    group.rmdir()


def one_cell_study(scripted, tmp_path, script: str):
    """The study's dose_1000/dense/train cell runs ``script`` (a shell script) and nothing else."""
    command = tmp_path / "command.sh"
    command.write_text(script)
    command.chmod(0o755)
    study, profile, root = scripted({}, doses=(1000,))
    data = yaml.safe_load(study.read_text())
    study.write_text(yaml.safe_dump({**data, "command": [str(command), "{output_dir}"], "expected_outputs": []}))
    return study, profile, root


def submit_args(study, profile, root) -> list:
    return ["submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet",
            "--dose", 1000, "--view", "dense", "--split", "train"]  # fmt: skip


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_a_command_the_oom_killer_kills_in_its_memory_cgroup_is_out_of_memory_not_failed(scripted, tmp_path, version):
    # As on a SLURM node (the job's cgroup) or in a systemd scope: the whole run lives in a
    # memory-limited cgroup; the command (made the OOM killer's first choice) allocates past it.
    group = limited_cgroup(version, f"gridsubmit-oom-{os.getpid()}")
    try:
        study, profile, root = one_cell_study(scripted, tmp_path, "#!/bin/sh\necho 1000 > /proc/self/oom_score_adj\n"
                                              f"exec {sys.executable} -c 'x = bytearray(1024 * 2**20); print(len(x))'\n")  # fmt: skip
        args = [sys.executable, "-m", "gridsubmit", *map(str, submit_args(study, profile, root))]
        proc = subprocess.run(["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh", *args],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 1, proc.stdout + proc.stderr
        cell = cells(root)["dose_1000/dense/train"]
        attempt = cell["attempts"][-1]
        assert cell["state"] == "OUT_OF_MEMORY" and attempt["returncode"] == -9, attempt
        result = json.loads((root / attempt["dir"] / "result.json").read_text())
        assert result["memory_cgroup"] == str(group) and result["oom_killed"] is True, result
        assert result["oom_kill_count"]["after"] == result["oom_kill_count"]["before"] + 1, result
    finally:
        remove_cgroup(group)


def test_a_command_killed_from_outside_is_no_oom_kill_whatever_the_kernel_log_says_of_its_pid(scripted, tmp_path):
    # The kernel log names pids, and pids are reused: a line naming the command's pid, written by
    # somebody else, is no evidence that the OOM killer killed this command.
    if not os.access("/dev/kmsg", os.W_OK):
        pytest.skip("/dev/kmsg cannot be written here (root can): the reused pid cannot be staged")
    pidfile = tmp_path / "command.pid"
    study, profile, root = one_cell_study(scripted, tmp_path, f"#!/bin/sh\necho $$ > {pidfile}.tmp\nmv {pidfile}.tmp {pidfile}\n"
                                          f"exec {sys.executable} -c 'import time; time.sleep(60)'\n")  # fmt: skip
    proc = gridsubmit_process(*submit_args(study, profile, root))
    try:
        pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=60, what="the command to start"))
        with open("/dev/kmsg", "w") as kmsg:  # what the OOM killer writes, but about another process of that pid
            kmsg.write(f"gridsubmit test: Memory cgroup out of memory: Killed process {pid} (python)\n")
        time.sleep(0.2)  # the command is python by now (it execs at once)
        os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out
    cell = cells(root)["dose_1000/dense/train"]
    attempt = cell["attempts"][-1]
    assert cell["state"] == "FAILED" and attempt["returncode"] == -9, attempt
    result = json.loads((root / attempt["dir"] / "result.json").read_text())
    assert result["killed_by_signal"] == "SIGKILL" and result["oom_killed"] is False, result
    assert result["oom_kill_count"]["after"] == result["oom_kill_count"]["before"], result


# --- SLURM ---------------------------------------------------------------------------------


def slurm_grid(slurm_scripted):
    """4 cells in two resource groups: two arrays, two sbatch calls. Each runs long enough for
    the runner to see it running and save more than once (the points counted: saved:2, ...)."""
    return slurm_scripted({"*": "sleep-ok:3"}, doses=(1000, 10000), splits=("train",),
                          overrides=[{"match": {"dose": 1000}, "set": {"time": "0:09:00"}}])  # fmt: skip


def assert_one_job_per_attempt(root: Path) -> None:
    """Every job of the run in sacct belongs to one attempt, and every attempt that ran has
    its job there (a job cancelled while queued may leave no record at all)."""
    attempts = [a for c in load_manifest(root)["jobs"] for a in c["attempts"] if a.get("job_id")]
    prefix = f"gs-{load_manifest(root)['run_id']}-"
    jobs = sacct_settled(prefix, {a["job_id"] for a in attempts if a["state"] == "COMPLETED"})
    ids = [j[0] for j in jobs]
    assert len(ids) == len(set(ids)) and set(ids) <= {a["job_id"] for a in attempts}, (ids, attempts)
    assert not [j for j in jobs if j[2] == "FAILED"], jobs  # no task gave up for want of its cells


SLURM_POINTS = ["intent-saved", "sbatch-returned", "sbatch-returned:2", "backend-returned", "handles-recorded",
                "handles-saved", "polled:3", "merged:6", "saved:2", "finished", "enriched"]


@pytest.mark.slurm
@pytest.mark.parametrize("point", SLURM_POINTS)
def test_slurm_submitter_killed_at_any_step_then_wait_runs_each_cell_once_with_one_job_per_attempt(
        slurm_scripted, point, capsys):  # fmt: skip
    study, profile, root = slurm_grid(slurm_scripted)
    killed_submit("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet",
                  env={"GRIDSUBMIT_CRASH_AT": point}, log=root.parent / "submit.log")  # fmt: skip
    assert run_cli("wait", root, "--quiet") == 0
    counts = {key: runs(cell) for key, cell in cells(root).items()}
    for key, cell in cells(root).items():
        assert cell["state"] == "COMPLETED" and counts[key] == started_attempts(root, cell) == 1, (key, cell["attempts"])
    assert_one_job_per_attempt(root)
    report(capsys, "slurm", point, counts)


@pytest.mark.slurm
@pytest.mark.parametrize("which, when, slow", [(1, "before", 0), (1, "after", 0), (2, "after", 0), (1, "after", 3), (2, "after", 3)])
def test_slurm_submitter_killed_while_sbatch_is_in_flight_then_wait_runs_each_cell_once(slurm_scripted, tmp_path, capsys,
                                                                                         which, when, slow):  # fmt: skip
    study, profile, root = slurm_grid(slurm_scripted)
    faults, calls = tmp_path / "faults.json", tmp_path / "calls.jsonl"
    fault = {"do": "slow", "seconds": slow} if slow else {"do": "kill_parent", "when": when}
    faults.write_text(json.dumps({"sbatch": ([{"do": "slow", "seconds": 0}] if which == 2 else []) + [fault]}))
    env = {"PATH": f"{FAKESLURM}{os.pathsep}{os.environ['PATH']}", "GRIDSUBMIT_FAULTS": str(faults)}
    proc = gridsubmit_process("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet", env=env)
    if slow:  # kill the submitter while its slow sbatch still runs: the array lands after the submitter died
        wait_for(lambda: which == 1 or calls.exists() and len(calls.read_text().splitlines()) >= 1, what="sbatch #1")
        wait_for(lambda: processes_matching("fakeslurm/bin/sbatch"), timeout=60, what="sbatch in flight")
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL, out
    assert run_cli("wait", root, "--quiet") == 0
    counts = {}
    for key, cell in cells(root).items():
        counts[key] = runs(cell)
        assert cell["state"] == "COMPLETED" and counts[key] == started_attempts(root, cell) == 1, (key, cell["attempts"])
        if when == "after":  # an array that landed is rolled forward: none of its jobs is thrown away
            assert all(a["state"] == "COMPLETED" for a in cell["attempts"] if a.get("job_id")), (key, cell["attempts"])
    assert_one_job_per_attempt(root)
    if when == "after":
        assert len(job_ids(root)) == len(cells(root))  # one job per cell, none wasted
    report(capsys, "slurm", f"sbatch #{which} in flight ({when}, {'slow' if slow else 'fast'})", counts)


def test_cancel_covers_a_cell_waiting_for_its_retry_and_nothing_is_resubmitted(scripted):
    study, profile, root = scripted({}, doses=(1000,))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    manifest = load_manifest(root)
    cell = manifest["jobs"][0]
    cell["state"] = cell["attempts"][0]["state"] = "LOST"  # ended, and due for a retry
    (root / "comparison_manifest.json").write_text(json.dumps(manifest))
    assert run_cli("cancel", root, "--view", "dense", "--split", "train") == 0
    assert run_cli("wait", root, "--quiet") == 1
    after = cells(root)["dose_1000/dense/train"]
    assert after["state"] == "CANCELLED" and len(after["attempts"]) == 1 and runs(after) == 1
