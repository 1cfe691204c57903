import json
import os
import subprocess
import sys
import time
from pathlib import Path

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
