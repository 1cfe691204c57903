import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from gridsubmit.cli import main
from gridsubmit.demo.generate import make_study

HERE = Path(__file__).parent
CELLCMD = HERE / "cellcmd.py"


def write_profile(path: Path, **keys) -> Path:
    data = {"backend": "local", "time": "5:00", "max_parallel": 2, **keys}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def scripted(tmp_path):
    """A 12-cell synthetic study whose command is cellcmd.py, with per-cell behaviours."""

    def make(behaviours: dict | None = None, doses=(1000, 10000, 100000), **profile_keys):
        spec = tmp_path / "behaviours.json"
        spec.write_text(json.dumps(behaviours or {}))
        command = ["{python}", str(CELLCMD), str(spec), "dose_{dose}/{view}/{split}", "{output_dir}"]
        study = make_study(tmp_path / "study", doses=doses, command=command)
        profile = write_profile(tmp_path / "local.yaml", **profile_keys)
        return study, profile, tmp_path / "run"

    return make


def rewrite_npz(path: str) -> None:
    """Different content, still a valid input for the demo comparison."""
    with np.load(path) as data:
        arrays = dict(data)
    arrays["measurement"] = arrays["measurement"] * 1.5
    np.savez_compressed(path, **arrays)


@pytest.fixture
def finished(tmp_path, monkeypatch):
    """A demo grid run to its end from a working directory of its own."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    study = make_study(tmp_path / "study")
    root = tmp_path / "run"
    assert run_cli("submit", "--study", study, "--artifact-root", root, "--quiet") == 0
    return study, root


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def load_manifest(root: Path) -> dict:
    return json.loads((root / "comparison_manifest.json").read_text())


def cells(root: Path) -> dict:
    return {c["key"]: c for c in load_manifest(root)["jobs"]}


def gridsubmit_process(*args, **kw) -> subprocess.Popen:
    env = {**os.environ, **kw.pop("env", {})}
    return subprocess.Popen([sys.executable, "-m", "gridsubmit", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def wait_for(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def results(root: Path) -> list[dict]:
    """Every result.json the tasks wrote under the artifact root."""
    return [json.loads(p.read_text()) for p in sorted((root / "logs").rglob("result.json"))]


# --- the real SLURM test cluster ---------------------------------------------------------------

SLURM_HINT = "start it with `sudo scripts/slurm-test-cluster up` (Debian 12, root), or run the README's test command"


def slurm_ready() -> str | None:
    """None when the test cluster answers with an idle gpu partition, else why not."""
    import shutil

    if not shutil.which("sinfo"):
        return "SLURM client commands are not installed"
    try:
        out = subprocess.run(["sinfo", "-h", "-p", "gpu", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    if out.returncode != 0 or not out.stdout.strip():
        return f"no gpu partition answers: {(out.stderr or out.stdout).strip()}"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    problem = slurm_ready()
    if problem:
        message = f"SLURM test cluster not available ({problem}); {SLURM_HINT}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)  # in CI the SLURM promises must be proven, never skipped
        pytest.skip(message)


@pytest.fixture
def slurm_scripted(tmp_path, slurm_cluster):
    """Like ``scripted``, on the test cluster's gpu partition with one GPU per job."""

    def make(behaviours=None, doses=(1000, 10000, 100000), views=("dense", "sparse"), splits=("train", "test"), **keys):
        spec = tmp_path / "behaviours.json"
        spec.write_text(json.dumps(behaviours or {}))
        command = ["{python}", str(CELLCMD), str(spec), "dose_{dose}/{view}/{split}", "{output_dir}"]
        study = make_study(tmp_path / "study", doses=doses, views=views, splits=splits, command=command)
        profile = tmp_path / "slurm.yaml"
        data = {"backend": "slurm", "partition": "gpu", "gpus_per_job": 1, "cpus_per_task": 1, "time": "0:10:00",
                "poll_interval": {"min": 1, "max": 3}, **keys}
        profile.write_text(yaml.safe_dump(data))
        return study, profile, tmp_path / "run"

    return make


def sacct_jobs(name_prefix: str) -> list[tuple[str, str, str, str]]:
    """(job id, name, state, time limit) of every job whose name starts with the prefix."""
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-S", "now-1days", "-o", "JobID,JobName,State,Timelimit"],
                         capture_output=True, text=True, check=True).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line.split("|")[1].startswith(name_prefix)]


def sacct_settled(name_prefix: str, job_ids, timeout: float = 30, final: bool = False) -> list[tuple[str, str, str, str]]:
    """sacct_jobs once it lists every one of ``job_ids`` (accounting trails the jobs by
    seconds); with ``final``, once it has recorded each one's end."""

    def rows():
        jobs = sacct_jobs(name_prefix)
        listed = {j[0]: j[2] for j in jobs}
        if not set(job_ids) <= listed.keys():
            return None
        if final and any(listed[j] in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED", "SUSPENDED") for j in job_ids):
            return None
        return jobs

    return wait_for(rows, timeout=timeout, what=f"jobs {sorted(job_ids)} in sacct")


def job_ids(root: Path) -> set[str]:
    return {a["job_id"] for c in load_manifest(root)["jobs"] for a in c["attempts"] if a["job_id"]}
