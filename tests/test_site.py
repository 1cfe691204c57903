"""What a real HPC site does to a run: odd profile values, filesystems without flock,
runners on other login nodes."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import cells, run_cli, write_profile
from gridsubmit.runlock import STALE_AFTER_S

SITE_KEYS = ["partition", "account", "qos", "constraint", "gpu_type", "time", "python", "setup", "env",
             "sbatch_extra key", "sbatch_extra value"]  # fmt: skip


def slurm_profile(path: Path, key: str, bad: str) -> Path:
    data = {"backend": "slurm", "partition": "gpu", "time": "0:10:00", "setup": ["module load cuda/12.2"]}
    if key == "setup":
        data["setup"] = ["module load cuda/12.2", f"source activate {bad}"]
    elif key == "env":
        data["env"] = {"SITE_VAR": f"x{bad}"}
    elif key == "sbatch_extra key":
        data["sbatch_extra"] = {f"mail-type{bad}": "END"}
    elif key == "sbatch_extra value":
        data["sbatch_extra"] = {"mail-type": f"END{bad}"}
    elif key == "time":
        data["time"] = f"0:10:00{bad}"
    else:
        data[key] = f"gpu{bad}foo"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("char", ["\n", "\r", "\x00"], ids=["newline", "carriage-return", "nul"])
@pytest.mark.parametrize("key", SITE_KEYS)
def test_a_control_character_in_any_value_that_reaches_the_job_script_is_refused_naming_the_key(scripted, tmp_path,
                                                                                               capsys, key, char):  # fmt: skip
    study, _, root = scripted({})
    profile = slurm_profile(tmp_path / "site.yaml", key, char)
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--dry-run") == 2
    err = capsys.readouterr().err
    named = {"setup": "setup[1]", "env": "env.SITE_VAR", "sbatch_extra key": "sbatch_extra.",
             "sbatch_extra value": "sbatch_extra.mail-type"}.get(key, key)  # fmt: skip
    assert f"site.yaml, key '{named}" in err and "control character" in err and "Traceback" not in err
    assert not root.exists()


def test_a_yaml_block_scalar_with_its_trailing_newline_is_refused_with_a_hint(scripted, tmp_path, capsys):
    study, _, root = scripted({})
    profile = tmp_path / "site.yaml"
    profile.write_text("backend: slurm\ntime: '0:10:00'\nconstraint: |\n  a100\n")
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--dry-run") == 2
    assert "key 'constraint'" in capsys.readouterr().err


# --- locks on filesystems without flock, and runners on other hosts --------------------------------


@pytest.fixture
def no_flock(tmp_path):
    """An environment whose Python sees flock fail as on Lustre mounted without it (ENOSYS)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import errno, fcntl, os\n"
        "def flock(fd, op):\n"
        "    raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))\n"
        "fcntl.flock = flock\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def gridsubmit(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gridsubmit", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)  # fmt: skip


def test_without_flock_submit_wait_and_status_work_and_a_second_runner_is_refused_naming_the_holder(scripted, no_flock):
    study, profile, root = scripted({"*": "sleep-ok:1"}, doses=(1000,))
    check = subprocess.run([sys.executable, "-c", "import fcntl; fcntl.flock(0, fcntl.LOCK_EX)"], env=no_flock,
                           capture_output=True, text=True)  # fmt: skip
    assert "Function not implemented" in check.stderr  # the stand-in really fails flock
    out = gridsubmit("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--no-wait", env=no_flock)
    assert out.returncode == 0, out.stderr
    second = gridsubmit("submit", "--study", study, "--cluster", profile, "--artifact-root", root, env=no_flock)
    assert second.returncode == 2 and "in use by 'gridsubmit wait" in second.stderr, second.stderr
    status = gridsubmit("status", root, env=no_flock)
    assert status.returncode == 0 and "runner: 'gridsubmit wait" in status.stdout
    done = gridsubmit("wait", root, "--quiet", env=no_flock)
    assert done.returncode == 0, done.stderr
    for out in (second, status, done):
        assert "Traceback" not in out.stdout + out.stderr
    assert {c["state"] for c in cells(root).values()} == {"COMPLETED"}
    assert not (root / ".gridsubmit" / "holder.json").exists()


def test_a_runner_on_another_host_is_refused_while_its_heartbeat_is_fresh_and_taken_over_once_stale(scripted, capsys):
    study, profile, root = scripted({}, doses=(1000,))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet",
                   "--view", "dense") == 0  # fmt: skip
    holder = root / ".gridsubmit" / "holder.json"
    holder.write_text(json.dumps({"pid": 4242, "start": 1, "host": "login2", "command": "wait", "since": time.time()}))
    capsys.readouterr()
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 2
    assert "pid 4242 on login2" in capsys.readouterr().err
    old = time.time() - STALE_AFTER_S - 5
    os.utime(holder, (old, old))  # its heartbeat stopped: that host is gone
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    assert {c["state"] for c in cells(root).values()} == {"COMPLETED"} and not holder.exists()


def test_a_holder_file_left_by_a_killed_runner_on_this_host_is_taken_over_at_once(scripted, tmp_path):
    study, profile, root = scripted({}, doses=(1000,))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet",
                   "--view", "dense") == 0  # fmt: skip
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (root / ".gridsubmit" / "holder.json").write_text(json.dumps(
        {"pid": dead.pid, "start": 1, "host": socket.gethostname(), "command": "submit", "since": time.time()}))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0


# --- the environment order: node, captured, profile env, setup lines, command ---------------------


def env_study(tmp_path: Path) -> Path:
    from gridsubmit.demo.generate import make_study

    command = ["sh", "-c", 'printf "%s\\n" "$PATH" "$PYTHONPATH" "$SITE_X" "$PROFILE_Y" > "$0/env.txt"', "{output_dir}"]
    study = make_study(tmp_path / "study", doses=(1000,), views=("dense",), splits=("train",), command=command)
    data = yaml.safe_load(study.read_text())
    study.write_text(yaml.safe_dump({**data, "expected_outputs": [], "capture_env": ["SITE_X"]}))
    return study


@pytest.mark.slurm
def test_setup_lines_decide_path_and_pythonpath_and_captured_values_fill_the_rest_on_the_cluster(slurm_cluster, tmp_path,
                                                                                                  monkeypatch):  # fmt: skip
    monkeypatch.setenv("SITE_X", "captured-x")
    monkeypatch.setenv("PYTHONPATH", "/captured/py")
    study, root = env_study(tmp_path), tmp_path / "run"
    profile = tmp_path / "site.yaml"
    profile.write_text(yaml.safe_dump({"backend": "slurm", "partition": "cpu", "gpus_per_job": 0, "time": "0:05:00",
                                       "poll_interval": {"min": 1, "max": 2}, "env": {"PROFILE_Y": "from-profile"},
                                       "setup": ["export PATH=/opt/x:$PATH", "export PYTHONPATH=/opt/py:$PYTHONPATH"]}))  # fmt: skip
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    path, pythonpath, site_x, profile_y = (root / "dose_1000" / "dense" / "train" / "env.txt").read_text().splitlines()
    assert path.startswith("/opt/x:") and path.removeprefix("/opt/x:") == os.environ["PATH"]
    assert pythonpath == "/opt/py:/captured/py"
    assert (site_x, profile_y) == ("captured-x", "from-profile")


def test_on_the_local_backend_the_profile_env_goes_over_the_captured_values(tmp_path, monkeypatch):
    monkeypatch.setenv("SITE_X", "captured-x")
    monkeypatch.setenv("PROFILE_Y", "captured-y")
    study, root = env_study(tmp_path), tmp_path / "run"
    data = yaml.safe_load(study.read_text())
    study.write_text(yaml.safe_dump({**data, "capture_env": ["SITE_X", "PROFILE_Y"]}))
    profile = write_profile(tmp_path / "local.yaml", env={"PROFILE_Y": "from-profile"})
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    lines = (root / "dose_1000" / "dense" / "train" / "env.txt").read_text().splitlines()
    assert lines[0] == os.environ["PATH"] and lines[2:] == ["captured-x", "from-profile"]


def test_on_the_local_backend_setup_lines_come_after_the_captured_values_and_the_profile_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SITE_X", "captured-x")
    monkeypatch.setenv("PYTHONPATH", "/captured/py")
    study, root = env_study(tmp_path), tmp_path / "run"
    profile = write_profile(tmp_path / "local.yaml", env={"PROFILE_Y": "from-profile"},
                            setup=["export PATH=/opt/x:$PATH", "export PYTHONPATH=/opt/py:$PYTHONPATH",
                                   'export PROFILE_Y="$PROFILE_Y+setup"'])  # fmt: skip
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    path, pythonpath, site_x, profile_y = (root / "dose_1000" / "dense" / "train" / "env.txt").read_text().splitlines()
    assert path.startswith("/opt/x:") and path.removeprefix("/opt/x:") == os.environ["PATH"]
    assert pythonpath == "/opt/py:/captured/py"
    assert (site_x, profile_y) == ("captured-x", "from-profile+setup")  # setup saw the profile's env, and goes over it


def test_a_local_setup_line_that_fails_is_shown_as_the_cell_s_error(tmp_path, capsys):
    study, root = env_study(tmp_path), tmp_path / "run"
    profile = write_profile(tmp_path / "local.yaml", setup=["echo 'module: command not found' >&2", "exit 3"])
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 1
    cell = json.loads((root / "comparison_manifest.json").read_text())["jobs"][0]
    assert cell["state"] != "COMPLETED" and "module: command not found" in cell["attempts"][-1]["error"]
    assert not (root / "dose_1000" / "dense" / "train" / "env.txt").exists()
