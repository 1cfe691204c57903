"""The fault-injecting SLURM wrappers in tests/fakeslurm, run against stand-in "real" commands
(small shell scripts in tmp_path), so these tests need no cluster."""

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

WRAP_BIN = Path(__file__).parent / "fakeslurm" / "bin"
COMMANDS = ("sbatch", "sacct", "squeue", "scancel")

SACCT_OUT = ("101|gs-x|RUNNING|0:0|localhost|\n"
             "102_3|gs-x|COMPLETED|0:0|localhost|\n"
             "102_3.batch|batch|COMPLETED|0:0|localhost|4K\n"
             "103_[0-3]|gs-y|PENDING|0:0|None assigned|\n")
SQUEUE_OUT = "101|RUNNING|localhost\n102_3|PENDING|\n"


@pytest.fixture
def slurm(tmp_path):
    """Stand-in real commands, a faults file location, and a runner for the wrappers."""
    real = tmp_path / "realbin"
    real.mkdir()
    ran = tmp_path / "ran"
    ran.mkdir()
    scripts = {
        "sbatch": f'touch "{ran}/sbatch"\necho "sbatch: warning: stand-in" >&2\necho "Submitted batch job 555"',
        "sacct": f"touch \"{ran}/sacct\"\nprintf '%s' '{SACCT_OUT}'",
        "squeue": f"touch \"{ran}/squeue\"\nprintf '%s' '{SQUEUE_OUT}'",
        "scancel": f'touch "{ran}/scancel"\necho "scancel args: $*"\nexit "${{FAKE_RC:-0}}"',
    }
    for name, body in scripts.items():
        path = real / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)

    class Slurm:
        root = tmp_path
        faults = tmp_path / "faults.json"
        calls_path = tmp_path / "calls.jsonl"
        state_path = tmp_path / "faults.state.json"
        realbin = real

        def env(self, **extra):
            env = {**os.environ, "PATH": f"{WRAP_BIN}{os.pathsep}{os.environ['PATH']}",
                   "GRIDSUBMIT_FAULTS": str(self.faults), "GRIDSUBMIT_REAL_SLURM_BIN": str(real)}
            env.update(extra)
            return {k: v for k, v in env.items() if v is not None}

        def set_faults(self, data):
            self.faults.write_text(data if isinstance(data, str) else json.dumps(data))

        def run(self, cmd, *args, **extra_env):
            return subprocess.run([str(WRAP_BIN / cmd), *args], env=self.env(**extra_env),
                                  capture_output=True, text=True, timeout=60)

        def ran(self, cmd):
            return (ran / cmd).exists()

        def reset_ran(self):
            for p in ran.iterdir():
                p.unlink()

        def calls(self):
            if not self.calls_path.exists():
                return []
            return [json.loads(line) for line in self.calls_path.read_text().splitlines()]

    return Slurm()


def test_symlinks_point_at_the_wrapper():
    script = WRAP_BIN.parent / "faultwrap.py"
    assert os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/usr/bin/env python3\n")
    for name in COMMANDS:
        link = WRAP_BIN / name
        assert link.is_symlink() and os.readlink(link) == "../faultwrap.py"


def test_passthrough_is_logged(slurm):
    p = slurm.run("sbatch", "--parsable", "job.sh")
    assert (p.returncode, p.stdout) == (0, "Submitted batch job 555\n")
    assert "sbatch: warning: stand-in" in p.stderr
    assert slurm.ran("sbatch")
    p = slurm.run("scancel", "7", "8", FAKE_RC="3")
    assert (p.returncode, p.stdout) == (3, "scancel args: 7 8\n")
    p = slurm.run("sacct", "-n", "-P")
    assert p.stdout == SACCT_OUT
    calls = slurm.calls()
    assert [c["cmd"] for c in calls] == ["sbatch", "scancel", "sacct"]
    assert calls[0]["argv"] == ["sbatch", "--parsable", "job.sh"]
    assert [c["rc"] for c in calls] == [0, 3, 0]
    assert all(c["fault"] is None and isinstance(c["t"], float) for c in calls)
    assert set(calls[0]) == {"cmd", "argv", "t", "rc", "fault"}


def test_without_faults_variable_nothing_is_logged(slurm):
    p = slurm.run("squeue", "-h", GRIDSUBMIT_FAULTS=None)
    assert (p.returncode, p.stdout) == (0, SQUEUE_OUT)
    assert not slurm.calls_path.exists()


def test_real_command_found_on_path_without_own_directory(slurm):
    # own bin dir listed twice and in another spelling: still no recursion into the wrapper
    path = os.pathsep.join([str(WRAP_BIN), str(WRAP_BIN) + "/", str(WRAP_BIN / ".." / "bin"),
                            str(slurm.realbin), os.environ["PATH"]])
    p = slurm.run("sbatch", PATH=path, GRIDSUBMIT_REAL_SLURM_BIN=None)
    assert (p.returncode, p.stdout) == (0, "Submitted batch job 555\n")
    assert slurm.ran("sbatch")


def test_real_command_missing(slurm):
    only_python = slurm.root / "pybin"
    only_python.mkdir()
    (only_python / "python3").symlink_to(sys.executable)
    p = slurm.run("sbatch", PATH=f"{WRAP_BIN}{os.pathsep}{only_python}", GRIDSUBMIT_REAL_SLURM_BIN=None)
    assert p.returncode == 99
    assert "real sbatch is not on PATH" in p.stderr and "Traceback" not in p.stderr


def test_fail(slurm):
    slurm.set_faults({"sbatch": [{"do": "fail"}, {"do": "fail", "message": "Invalid account", "rc": 4}]})
    p = slurm.run("sbatch", "job.sh")
    assert (p.returncode, p.stdout) == (1, "")
    assert p.stderr == "sbatch: error: Socket timed out on send/recv operation\n"
    p = slurm.run("sbatch", "job.sh")
    assert (p.returncode, p.stderr) == (4, "sbatch: error: Invalid account\n")
    assert not slurm.ran("sbatch")
    p = slurm.run("sbatch", "job.sh")  # list used up
    assert p.returncode == 0 and slurm.ran("sbatch")
    calls = slurm.calls()
    assert [c["rc"] for c in calls] == [1, 4, 0]
    assert calls[0]["fault"] == {"do": "fail"}
    assert calls[1]["fault"]["message"] == "Invalid account"
    assert calls[2]["fault"] is None


def test_after_queues_but_reports_failure(slurm):
    slurm.set_faults({"sbatch": [{"do": "after"}]})
    p = slurm.run("sbatch", "job.sh")
    assert slurm.ran("sbatch")
    assert (p.returncode, p.stdout) == (1, "")
    assert p.stderr.endswith("sbatch: error: Socket timed out on send/recv operation\n")
    assert slurm.calls()[0]["rc"] == 1


def test_times_are_consumed_across_processes(slurm):
    slurm.set_faults({"sacct": [{"do": "fail", "times": 2}, {"do": "stdout", "text": "999|x|FAILED|1:0||\n"}],
                      "squeue": [{"do": "fail", "rc": 2, "times": -1}]})
    results = [slurm.run("sacct", "-n", "-P") for _ in range(4)]
    assert [r.returncode for r in results] == [1, 1, 0, 0]
    assert results[2].stdout == "999|x|FAILED|1:0||\n"
    assert results[3].stdout == SACCT_OUT
    assert all(slurm.run("squeue").returncode == 2 for _ in range(3))
    assert not slurm.ran("squeue")
    assert slurm.state_path.exists()
    # appending an entry keeps the counts of those already used up
    data = json.loads(slurm.faults.read_text())
    data["sacct"].append({"do": "fail", "rc": 7})
    slurm.set_faults(data)
    assert [slurm.run("sacct").returncode for _ in range(2)] == [7, 0]


def test_times_are_consumed_once_under_concurrency(slurm):
    slurm.set_faults({"scancel": [{"do": "fail", "times": 3}]})
    with ThreadPoolExecutor(8) as pool:
        rcs = list(pool.map(lambda i: slurm.run("scancel", str(i)).returncode, range(10)))
    assert sorted(rcs) == [0] * 7 + [1] * 3
    calls = slurm.calls()
    assert len(calls) == 10 and sorted(c["rc"] for c in calls) == sorted(rcs)


def test_missing_faults_file_means_no_faults(slurm):
    assert not slurm.faults.exists()
    p = slurm.run("scancel", "1")
    assert p.returncode == 0 and slurm.calls()[0]["fault"] is None


def test_hide_by_job_id(slurm):
    slurm.set_faults({"sacct": [{"do": "hide", "job_ids": ["102"]}, {"do": "hide", "job_ids": ["101", "103"]},
                                {"do": "hide"}],
                      "squeue": [{"do": "hide", "job_ids": ["101"]}]})
    assert slurm.run("sacct", "-n", "-P").stdout == (
        "101|gs-x|RUNNING|0:0|localhost|\n103_[0-3]|gs-y|PENDING|0:0|None assigned|\n")
    assert slurm.run("sacct", "-n", "-P").stdout == (
        "102_3|gs-x|COMPLETED|0:0|localhost|\n102_3.batch|batch|COMPLETED|0:0|localhost|4K\n")
    assert slurm.run("sacct", "-n", "-P").stdout == ""
    assert slurm.run("squeue", "-h").stdout == "102_3|PENDING|\n"
    assert slurm.ran("sacct") and slurm.ran("squeue")


def test_hide_all_keeps_a_header(slurm, tmp_path):
    (slurm.realbin / "squeue").write_text("#!/bin/sh\nprintf 'JOBID|STATE\\n5|RUNNING\\n6_1|PENDING\\n'\n")
    slurm.set_faults({"squeue": [{"do": "hide"}]})
    assert slurm.run("squeue").stdout == "JOBID|STATE\n"


def test_state_replacement(slurm):
    sacct_fmt = ["-n", "-P", "-o", "JobID,JobName,State,ExitCode,NodeList,MaxRSS"]
    slurm.set_faults({"sacct": [{"do": "state", "value": "BOGUS_STATE", "job_ids": ["102"]},
                                {"do": "state", "value": "BOGUS_STATE"},
                                {"do": "state", "value": "BOGUS_STATE"}],
                      "squeue": [{"do": "state", "value": "REQUEUE_HOLD", "job_ids": ["101"]},
                                 {"do": "state", "value": "REQUEUE_HOLD"}]})
    assert slurm.run("sacct", *sacct_fmt).stdout == (
        "101|gs-x|RUNNING|0:0|localhost|\n"
        "102_3|gs-x|BOGUS_STATE|0:0|localhost|\n"
        "102_3.batch|batch|BOGUS_STATE|0:0|localhost|4K\n"
        "103_[0-3]|gs-y|PENDING|0:0|None assigned|\n")
    out = slurm.run("sacct", "-n", "-P", "--format=JobID,JobName,State").stdout
    assert [line.split("|")[2] for line in out.splitlines()] == ["BOGUS_STATE"] * 4
    # a format without a state column is left alone (e.g. the job-name lookup)
    assert slurm.run("sacct", "-n", "-P", "-X", "-o", "JobID,JobName").stdout == SACCT_OUT
    squeue_fmt = ["-h", "-r", "-o", "%i|%T|%N"]
    assert slurm.run("squeue", *squeue_fmt).stdout == "101|REQUEUE_HOLD|localhost\n102_3|PENDING|\n"
    assert slurm.run("squeue", *squeue_fmt).stdout == "101|REQUEUE_HOLD|localhost\n102_3|REQUEUE_HOLD|\n"


def test_slow_calls_through(slurm):
    slurm.set_faults({"sbatch": [{"do": "slow", "seconds": 0.2}]})
    start = time.monotonic()
    p = slurm.run("sbatch", "job.sh")
    assert time.monotonic() - start >= 0.2
    assert (p.returncode, p.stdout) == (0, "Submitted batch job 555\n")
    assert slurm.ran("sbatch") and slurm.calls()[0]["fault"]["do"] == "slow"


def _sbatch_under_a_parent(slurm):
    """sbatch run by `sh -c 'sbatch; sleep 30'`; the sh's exit status and all output."""
    parent = subprocess.Popen(["sh", "-c", "sbatch job.sh; sleep 30"], env=slurm.env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = parent.communicate(timeout=60)  # EOF once the orphaned wrapper exits too
    return parent.returncode, out, err


def test_kill_parent_before(slurm):
    marker = slurm.root / "reached"
    slurm.set_faults({"sbatch": [{"do": "kill_parent", "when": "before", "marker": str(marker)}]})
    rc, out, err = _sbatch_under_a_parent(slurm)
    assert rc == -signal.SIGKILL
    assert marker.exists() and not slurm.ran("sbatch")
    assert "Submitted" not in out
    calls = slurm.calls()
    assert len(calls) == 1 and calls[0]["rc"] == 1 and calls[0]["fault"]["when"] == "before"


def test_kill_parent_after(slurm):
    marker = slurm.root / "reached"
    slurm.set_faults({"sbatch": [{"do": "kill_parent", "when": "after", "marker": str(marker)}]})
    rc, out, err = _sbatch_under_a_parent(slurm)
    assert rc == -signal.SIGKILL
    assert marker.exists() and slurm.ran("sbatch")
    assert out == "Submitted batch job 555\n"
    calls = slurm.calls()
    assert len(calls) == 1 and calls[0]["rc"] == 0 and calls[0]["fault"]["when"] == "after"


@pytest.mark.parametrize("faults, message", [
    ("{not json", "not valid JSON"),
    ('["fail"]', "top level must be an object"),
    ({"sbatc": [{"do": "fail"}]}, "unknown command 'sbatc'"),
    ({"sbatch": {"do": "fail"}}, "must map to a list"),
    ({"sbatch": [{"do": "explode"}]}, "unknown or missing \"do\""),
    ({"sbatch": [{"do": "fail", "time": 2}]}, "keys not known for \"fail\": time"),
    ({"sbatch": [{"do": "hide"}]}, "\"hide\" is for sacct and squeue only"),
    ({"sbatch": [{"do": "fail", "times": "2"}]}, "\"times\" must be an integer"),
    ({"sbatch": [{"do": "kill_parent"}]}, "needs \"when\""),
    ({"sbatch": [{"do": "slow"}]}, "needs \"seconds\""),
])
def test_bad_faults_file(slurm, faults, message):
    slurm.set_faults(faults)
    p = slurm.run("sbatch", "job.sh")
    assert p.returncode == 99
    assert message in p.stderr and p.stderr.startswith("faultwrap (sbatch): ")
    assert "Traceback" not in p.stderr
    assert not slurm.ran("sbatch")
    assert slurm.calls()[0]["rc"] == 99


def test_wrapper_under_another_name(tmp_path):
    link = tmp_path / "srun"
    link.symlink_to(WRAP_BIN.parent / "faultwrap.py")
    p = subprocess.run([str(link)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 99 and "invoked as 'srun'" in p.stderr and "Traceback" not in p.stderr
