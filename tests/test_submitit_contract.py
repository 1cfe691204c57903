"""What gridsubmit relies on in submitit beyond its documented API, checked without a
cluster: a submitit release that changes these fails here, not in a user's grid."""

import os
import shlex

import submitit
from submitit.core.utils import JobPaths

from gridsubmit.backends.base import Submission
from gridsubmit.backends.slurm import SlurmBackend
from gridsubmit.cluster import Resources, parse_profile


def test_job_paths_name_the_array_script_and_each_tasks_submission_file(tmp_path):
    assert JobPaths(tmp_path, job_id="123").submission_file == tmp_path / "123_submission.sh"
    assert JobPaths(tmp_path, job_id="123_4").submitted_pickle == tmp_path / "123_4_submitted.pkl"


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


def test_a_local_jobs_id_is_what_its_task_sees_as_submitit_local_job_id(tmp_path):
    # the local gate names the job that may run by this id
    job = submitit.LocalExecutor(folder=tmp_path).submit(os.getenv, "SUBMITIT_LOCAL_JOB_ID")
    assert job.result() == str(job.job_id)
