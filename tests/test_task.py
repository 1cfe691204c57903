"""The task wrapper on its own: exit codes, streamed logs, forwarded signals, the claim."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import wait_for

CHILD = r"""
import signal, sys, time
signal.signal(signal.SIGUSR2, lambda *_: print("got USR2", flush=True))
signal.signal(signal.SIGTERM, lambda *_: (print("got TERM", flush=True), sys.exit(7)))
print("ready", flush=True)
time.sleep(60)
"""


def start_task(tmp_path, argv, **spec):
    spec = {"argv": argv, "cwd": str(tmp_path), "output_dir": str(tmp_path / "out"), "attempt_dir": str(tmp_path / "attempt"),
            **spec}  # fmt: skip
    code = f"from gridsubmit.task import run_task; run_task({spec!r})"
    return subprocess.Popen([sys.executable, "-c", code])


def result(tmp_path):
    return json.loads((tmp_path / "attempt" / "result.json").read_text())


def test_the_commands_own_exit_code_and_streams_are_recorded(tmp_path):
    argv = [sys.executable, "-c", "import sys; print('to out'); print('to err', file=sys.stderr); sys.exit(3)"]
    assert start_task(tmp_path, argv).wait(timeout=30) == 0
    r = result(tmp_path)
    assert r["returncode"] == 3 and r["started"] and r["elapsed_s"] >= 0 and r["hostname"]
    assert (tmp_path / "attempt" / "stdout.log").read_text() == "to out\n"
    assert (tmp_path / "attempt" / "stderr.log").read_text() == "to err\n"
    assert (tmp_path / "out").is_dir()  # the cell's output folder is made before the command starts


def test_the_commands_peak_memory_and_cpu_time_are_measured_on_the_node(tmp_path):
    # a grandchild holds 120 MiB, the command itself burns CPU: the figures are the command's tree
    hold = "b = b'x' * (120 * 2**20); import time; time.sleep(0.2)"
    argv = [sys.executable, "-c", f"import subprocess, sys, time\nsubprocess.run([sys.executable, '-c', {hold!r}])\n"
            "t = time.process_time()\nwhile time.process_time() - t < 0.3: pass"]
    assert start_task(tmp_path, argv).wait(timeout=30) == 0
    r = result(tmp_path)
    assert r["returncode"] == 0
    assert 120 * 2**20 <= r["max_rss_bytes"] < 400 * 2**20, r["max_rss_bytes"]
    assert 0.3 <= r["cpu_s"] < 5, r["cpu_s"]
    small = tmp_path / "small"
    small.mkdir()
    assert start_task(small, [sys.executable, "-c", "pass"]).wait(timeout=30) == 0
    assert result(small)["max_rss_bytes"] < 100 * 2**20  # the task's own memory is not counted in


def test_the_command_runs_in_the_working_directory_with_the_given_environment(tmp_path):
    argv = [sys.executable, "-c", "import os; print(os.getcwd(), os.environ['STUDY_VAR'])"]
    (tmp_path / "repo").mkdir()
    assert start_task(tmp_path, argv, cwd=str(tmp_path / "repo"), env={"STUDY_VAR": "x1"}).wait(timeout=30) == 0
    assert (tmp_path / "attempt" / "stdout.log").read_text() == f"{tmp_path / 'repo'} x1\n"


def test_a_missing_working_directory_is_exit_127_naming_it(tmp_path):
    assert start_task(tmp_path, [sys.executable, "-c", "pass"], cwd=str(tmp_path / "gone")).wait(timeout=30) == 0
    r = result(tmp_path)
    assert r["returncode"] == 127 and f"working directory {tmp_path / 'gone'} does not exist" in r["error"]


def test_a_missing_program_is_exit_127_with_the_reason_in_stderr(tmp_path):
    assert start_task(tmp_path, ["no-such-program-xyz"]).wait(timeout=30) == 0
    assert result(tmp_path)["returncode"] == 127
    assert "cannot start 'no-such-program-xyz'" in (tmp_path / "attempt" / "stderr.log").read_text()


@pytest.mark.parametrize("forward", [True, False])
def test_sigterm_is_forwarded_and_usr2_only_when_asked(tmp_path, forward):
    proc = start_task(tmp_path, [sys.executable, "-c", CHILD], forward_usr2=forward)
    out = tmp_path / "attempt" / "stdout.log"
    wait_for(lambda: out.exists() and "ready" in out.read_text(), timeout=30, what="the child to start")
    proc.send_signal(signal.SIGUSR2)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    text = out.read_text()
    assert "got TERM" in text
    assert ("got USR2" in text) is forward
    r = result(tmp_path)
    assert r["returncode"] == 7 and r["interrupted_by"] == "SIGTERM" and r["warned_by_usr2"]


def test_the_local_time_limit_stops_the_command_and_says_so(tmp_path):
    proc = start_task(tmp_path, [sys.executable, "-c", CHILD], time_limit_s=1, kill_grace_s=1)
    assert proc.wait(timeout=30) == 0
    r = result(tmp_path)
    assert r["timed_out"] and r["returncode"] == 7 and 1 <= r["elapsed_s"] < 5


def test_the_claim_names_the_task_by_pid_and_process_start_time_and_its_gpus(tmp_path):
    # a runner that re-attaches knows the task by both: a pid alone may be another process's by then
    argv = [sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"]
    spec = {"cells": [{"argv": argv, "cwd": str(tmp_path), "output_dir": str(tmp_path / "out"),
                       "attempt_dir": str(tmp_path / "attempt"), "env": {"CUDA_VISIBLE_DEVICES": "3"}}]}  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.Popen([sys.executable, "-m", "gridsubmit.task", str(tmp_path / "spec.json")])
    # the start time is read while the process lives (field 22 of /proc/PID/stat)
    started = wait_for(lambda: int(open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[19]), what="stat")
    assert proc.wait(timeout=30) == 0
    claim = json.loads((tmp_path / "attempt" / "claim.json").read_text())
    assert claim["pid"] == proc.pid and claim["start"] == started and claim["gpus"] == "3"
    assert (tmp_path / "attempt" / "stdout.log").read_text() == "3\n" and result(tmp_path)["cuda_visible_devices"] == "3"


def test_a_second_process_for_the_same_attempt_never_runs_the_command(tmp_path):
    argv = [sys.executable, "-c", "import os, time; open('runs.log', 'a').write(f'{os.getpid()}\\n'); time.sleep(1)"]
    first, second = start_task(tmp_path, argv), start_task(tmp_path, argv)
    assert first.wait(timeout=30) == 0 and second.wait(timeout=30) == 0
    assert len((tmp_path / "runs.log").read_text().splitlines()) == 1
    assert json.loads((tmp_path / "attempt" / "claim.json").read_text())["pid"] in (first.pid, second.pid)


def test_a_command_killed_by_someone_else_is_recorded_as_such(tmp_path):
    argv = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    assert start_task(tmp_path, argv).wait(timeout=30) == 0
    r = result(tmp_path)
    assert r["returncode"] == -9 and r["signals_sent"] == [] and r["killed_by_signal"] == "SIGKILL"
    assert r["oom_killed"] is False and r["interrupted_by"] is None


V1_HYBRID = ("12:memory:/process_api/abc\n0::/\n", "40 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
             "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")  # fmt: skip


@pytest.mark.parametrize("cgroup, mountinfo, expected", [
    # cgroup v2 inside a cgroup namespace: the mount shows the namespace's root
    ("0::/job_7/step_batch/task_0\n", "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
     ("/sys/fs/cgroup/job_7/step_batch/task_0", "/sys/fs/cgroup/job_7/step_batch/task_0/memory.events")),
    # v1 beside v2 (hybrid): the memory controller is v1's
    (*V1_HYBRID, ("/sys/fs/cgroup/memory/process_api/abc", "/sys/fs/cgroup/memory/process_api/abc/memory.oom_control")),
    # a container without a cgroup namespace: the mount shows only its own part of the hierarchy
    ("5:cpu,memory:/docker/c1/sub\n", "50 40 0:33 /docker/c1 /sys/fs/cgroup/cpu,memory rw - cgroup cgroup rw,cpu,memory\n",
     ("/sys/fs/cgroup/cpu,memory/sub", "/sys/fs/cgroup/cpu,memory/sub/memory.oom_control")),
    # a mount point with a space, as mountinfo escapes it
    ("0::/a\n", "30 23 0:26 / /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw\n", ("/mnt/my cgroups/a", "/mnt/my cgroups/a/memory.events")),
    ("0::/elsewhere\n", "50 40 0:33 /docker/c1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", None),  # not in what is mounted
    ("1:name=systemd:/\n", "", None),  # no memory cgroup at all
])  # fmt: skip
def test_the_memory_cgroup_that_counts_a_commands_oom_kills_is_found_in_v1_and_v2(cgroup, mountinfo, expected):
    from gridsubmit.task import _find_memory_cgroup

    assert _find_memory_cgroup(cgroup, mountinfo, lambda path: True) == expected


def test_a_v2_cgroup_without_the_memory_controller_counts_nothing():
    from gridsubmit.task import _find_memory_cgroup

    # the v2 root (or a cgroup whose parent did not enable memory) has no memory.events
    assert _find_memory_cgroup("0::/\n", "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", lambda path: False) is None


def test_a_command_killed_by_sigkill_is_oom_killed_only_when_its_cgroup_counted_an_oom_kill(tmp_path, monkeypatch):
    from gridsubmit import task

    counter = tmp_path / "memory.events"
    counter.write_text("oom 0\noom_kill 3\n")
    monkeypatch.setattr(task, "_memory_cgroup", lambda pid="self": (str(tmp_path), str(counter)))
    spec = {"argv": ["true"], "cwd": str(tmp_path), "attempt_dir": str(tmp_path / "attempt")}

    def run(argv, rises: bool, **kw) -> dict:
        # the command bumps the count, as the kernel does when its OOM killer strikes in the cgroup
        argv = ["sh", "-c", (f"echo 'oom 1\noom_kill 4' > {counter}; " if rises else "") + " ".join(argv)]
        counter.write_text("oom 0\noom_kill 3\n")
        (tmp_path / "attempt" / "claim.json").unlink(missing_ok=True)
        return task.run_task({**spec, "argv": argv, **kw})

    r = run(["kill -9 $$"], rises=True)
    assert r["oom_killed"] is True and r["oom_kill_count"] == {"before": 3, "after": 4} and r["memory_cgroup"] == str(tmp_path)
    assert run(["kill -9 $$"], rises=False)["oom_killed"] is False  # a SIGKILL from someone else
    assert run(["exit 1"], rises=True)["oom_killed"] is False  # not killed: it went on (a child of it was killed)
    assert run(["kill -15 $$"], rises=True)["oom_killed"] is False  # the OOM killer sends SIGKILL
    # a SIGKILL this task sent (the grace period after its time limit) is its own, whatever the count
    r = run(["trap '' TERM; sleep 5"], rises=True, time_limit_s=0.2, kill_grace_s=0.2)
    assert r["returncode"] == -9 and "SIGKILL (grace period over)" in r["signals_sent"] and r["oom_killed"] is False
    counter.write_text("garbage\n")
    monkeypatch.setattr(task, "_memory_cgroup", lambda pid="self": None)
    r = run(["kill -9 $$"], rises=False)
    assert r["oom_killed"] is False and r["oom_kill_count"] == {"before": None, "after": None} and r["memory_cgroup"] is None


def node_task(folder, index=None, **kw):
    env = {k: v for k, v in os.environ.items() if k != "SLURM_ARRAY_TASK_ID"}
    if index is not None:
        env["SLURM_ARRAY_TASK_ID"] = str(index)
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "gridsubmit.task", str(folder)], env=env,
                          capture_output=True, text=True, timeout=90, **kw)  # fmt: skip


def test_a_slurm_job_runs_the_cells_of_its_array_index_importing_the_standard_library_only(tmp_path):
    folder = tmp_path / "tasks" / "gs-run-abc"
    folder.mkdir(parents=True)
    for index in (0, 1):
        cells = [{"argv": [sys.executable, "-c", f"print('cell {index}.{n}')"], "cwd": str(tmp_path),
                  "output_dir": str(tmp_path / f"out{index}{n}"), "attempt_dir": str(tmp_path / f"a{index}{n}")}
                 for n in (0, 1)]  # fmt: skip
        (folder / f"{index}.json").write_text(json.dumps({"cells": cells}))
    proc = node_task(folder, index=1)
    assert proc.returncode == 0, proc.stderr
    assert [(tmp_path / f"a1{n}" / "stdout.log").read_text() for n in (0, 1)] == ["cell 1.0\n", "cell 1.1\n"]
    assert not (tmp_path / "a00").exists() and not (tmp_path / "a01").exists()
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "gridsubmit" in imported and not imported & {"submitit", "numpy", "yaml", "asyncio", "cloudpickle"}
    # a lone job is given its file, whatever array index it inherited from its submitter
    assert node_task(folder / "0.json", index=1).returncode == 0 and (tmp_path / "a00" / "result.json").exists()


def test_a_slurm_job_whose_cells_are_missing_runs_nothing_and_says_why(tmp_path):
    (tmp_path / "tasks").mkdir()
    proc = node_task(tmp_path / "tasks", index=3)
    assert proc.returncode == 1 and "3.json is missing or unreadable; nothing was run" in proc.stderr


def test_a_slurm_job_started_before_sbatch_returned_waits_for_its_cells_through_a_warning_signal(tmp_path):
    folder = tmp_path / "tasks" / "gs-run-abc"
    staged = tmp_path / "tasks" / ".gs-run-abc"
    staged.mkdir(parents=True)
    cell = {"argv": ["true"], "cwd": str(tmp_path), "output_dir": str(tmp_path / "out"), "attempt_dir": str(tmp_path / "a")}
    (staged / "0.json").write_text(json.dumps({"cells": [cell]}))
    proc = subprocess.Popen([sys.executable, "-m", "gridsubmit.task", str(folder)])
    time.sleep(1.5)
    proc.send_signal(signal.SIGUSR2)  # the scheduler's warning ends nothing by itself
    time.sleep(0.5)
    assert proc.poll() is None and not (tmp_path / "a").exists()
    staged.rename(folder)
    assert proc.wait(timeout=10) == 0 and json.loads((tmp_path / "a" / "result.json").read_text())["returncode"] == 0


def test_a_task_killed_outright_takes_its_command_with_it(tmp_path):
    """A retry must never run beside an orphan of the attempt before it."""
    spec = {"argv": ["sleep", "30"], "cwd": str(tmp_path), "output_dir": str(tmp_path / "out"),
            "attempt_dir": str(tmp_path / "attempt"), "env": {}}  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps({"cells": [spec]}))
    task = subprocess.Popen([sys.executable, "-m", "gridsubmit.task", str(tmp_path / "spec.json")])
    claim = tmp_path / "attempt" / "claim.json"
    deadline = time.monotonic() + 20
    while not claim.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the command has started
    children = [int(p) for p in subprocess.run(["pgrep", "-P", str(task.pid)], capture_output=True, text=True).stdout.split()]
    assert children, "the command did not start"
    task.kill()
    task.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in children)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
