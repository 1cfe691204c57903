"""What gridsubmit relies on in submitit beyond its documented API, checked without a
cluster: a submitit release that changes these fails here, not in a user's grid."""

import json
import os
import shlex

import submitit
from submitit.core.utils import JobPaths

from gridsubmit.backends.base import Submission
from gridsubmit.backends.slurm import SlurmBackend
from gridsubmit.cluster import Resources, parse_profile


def test_job_paths_name_the_array_script(tmp_path):
    assert JobPaths(tmp_path, job_id="123").submission_file == tmp_path / "123_submission.sh"


def test_the_sbatch_script_of_a_dry_run_is_rendered_without_a_cluster(tmp_path):
    profile = parse_profile({"backend": "slurm", "time": "10:00", "partition": "gpu", "max_array_size": 10,
                             "setup": ["module load cuda"]}, "test")  # fmt: skip
    backend = SlurmBackend(profile, tmp_path, tmp_path, {"PYTHONPATH": "/x y", "API_TOKEN": "s3cret"}, "run1")
    subs = [Submission(f"dose_1/dense/s{i}", 1, ["echo", str(i)], tmp_path / str(i), tmp_path / f"a{i}",
                       Resources(time_s=600, gpus_per_job=1, partition="gpu")) for i in range(3)]  # fmt: skip
    backend.assign(subs)
    script = backend.describe(subs)
    assert "#SBATCH --array=0-2" in script and "#SBATCH --partition=gpu" in script and "#SBATCH --gres=gpu:1" in script
    assert "#SBATCH --no-requeue" in script
    # each job runs the node task on its cells' folder, not submitit's own unpickling entry point
    assert script.rstrip().endswith(f"-m gridsubmit.task {shlex.quote(f'{tmp_path}/.gridsubmit/tasks/gs-run1-<chunk>')}")
    # captured variables are exported before the profile's setup; secrets never reach the script
    assert script.index("export PYTHONPATH='/x y'") < script.index("module load cuda") and "s3cret" not in script


def test_submitits_own_submission_runs_the_node_task_on_the_cells_written_for_each_job(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text(f'#!/bin/sh\ncp "$1" "{tmp_path}/script-$(ls {tmp_path} | grep -c script)"\n'
                                 'echo "Submitted batch job 42"\n')  # fmt: skip
    (fake / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    profile = parse_profile({"backend": "slurm", "time": "10:00", "max_array_size": 10}, "test")
    backend = SlurmBackend(profile, tmp_path, tmp_path, {}, "run1")
    subs = [Submission(f"dose_1/dense/s{i}", 1, ["echo", str(i)], tmp_path / str(i), tmp_path / f"a{i}",
                       Resources(time_s=600, gpus_per_job=i // 3)) for i in range(4)]  # an array of 3, a lone job  # fmt: skip
    backend.assign(subs)
    handles = backend.submit(subs)
    assert [h.job_id for h in handles] == ["42_0", "42_1", "42_2", "42"]
    names = [sub.record["job_name"] for sub in subs]
    scripts = [(tmp_path / f"script-{n}").read_text() for n in (0, 1)]
    assert scripts[0].rstrip().endswith(f"-m gridsubmit.task {backend.tasks / names[0]}")
    assert scripts[1].rstrip().endswith(f"-m gridsubmit.task {backend.tasks / names[3] / '0.json'}")
    for sub, index in zip(subs, (0, 1, 2, 0)):
        cells = json.loads((backend.tasks / sub.record["job_name"] / f"{index}.json").read_text())["cells"]
        assert [c["argv"] for c in cells] == [list(sub.argv)] and cells[0]["attempt_dir"] == str(sub.attempt_dir)
    assert sorted(p.name for p in backend.tasks.iterdir()) == sorted({names[0], names[3]})  # nothing left staged
