"""The pure core: planning, resources, states and their judgement, without a scheduler."""

import json
import time

import pytest

from conftest import run_cli
from gridsubmit.backends.base import Backend, Handle
from gridsubmit.cluster import parse_profile, parse_time
from gridsubmit.errors import ConfigError
from gridsubmit.jobs import JobKey
from gridsubmit.states import JobState, fate, from_slurm
from gridsubmit.study import Filters, load_study, plan

S = JobState
FLY64 = [f"dose_{d}/{v}/{s}" for d in (1000, 10000, 100000) for v in ("dense", "sparse") for s in ("train", "test")]


def touch_fly64_layout(root, doses=(1000, 10000, 100000)):
    """The study's artifact layout with every input as an empty file, and Phase F manifests
    that name their reconstruction's folder."""
    for dose in doses:
        for split in ("train", "test"):
            paths = [f"phase_c/dose_{dose}/patched_{split}.npz", f"phase_c/dose_{dose}/sparse/sparse_{split}.npz"]
            paths += [f"phase_e/dose_{dose}/{view}/gs2/wts.h5.zip" for view in ("dense", "sparse")]
            paths += [f"phase_e/dose_{dose}/baseline/gs1/wts.h5.zip"]
            for view in ("dense", "sparse"):
                job = root / f"phase_f/dose_{dose}_{view}_{split}"
                out = job / f"dose_{dose}/{view}/{split}"
                paths.append(str((out / "ptychi_reconstruction.npz").relative_to(root)))
                job.mkdir(parents=True, exist_ok=True)
                (job / "manifest.json").write_text(json.dumps({"dose": dose, "view": view, "split": split, "output_dir": str(out)}))
            for rel in paths:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).touch()


def fly64_grid(root, filters=Filters()):
    roots = {"phase_c": root / "phase_c", "phase_e": root / "phase_e", "phase_f": root / "phase_f"}
    return plan(load_study(None, roots), root / "out", filters, python="python")


def test_the_seed_fake_artifact_layout_plans_the_same_twelve_cells_in_the_same_order(tmp_path):
    touch_fly64_layout(tmp_path)
    grid = fly64_grid(tmp_path)
    assert [str(j.key) for j in grid.jobs] == FLY64
    assert not grid.blocked
    job = grid.jobs[2]  # dose_1000/sparse/train
    assert job.argv == (
        "python", "-m", "scripts.compare_models",
        "--pinn_dir", str(tmp_path / "phase_e/dose_1000/sparse/gs2"),
        "--baseline_dir", str(tmp_path / "phase_e/dose_1000/baseline/gs1"),
        "--test_data", str(tmp_path / "phase_c/dose_1000/sparse/sparse_train.npz"),
        "--output_dir", str((tmp_path / "out").resolve() / "dose_1000/sparse/train"),
        "--ms-ssim-sigma", "1.0",
        "--tike_recon_path", str(tmp_path / "phase_f/dose_1000_sparse_train/dose_1000/sparse/train/ptychi_reconstruction.npz"),
        "--register-ptychi-only",
    )  # fmt: skip


def test_plan_on_the_command_line_without_a_study_file(tmp_path, capsys):
    touch_fly64_layout(tmp_path)
    (tmp_path / "phase_c/dose_10000/patched_test.npz").unlink()
    code = run_cli("plan", "--phase-c-root", tmp_path / "phase_c", "--phase-e-root", tmp_path / "phase_e",
                   "--phase-f-root", tmp_path / "phase_f", "--view", "dense")  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "dose_10000/dense/test" in out and "BLOCKED  phase_c_npz:" in out and "patched_test.npz does not exist" in out
    assert "6 cells: 5 runnable, 1 blocked" in out


def test_filters_narrow_the_grid(tmp_path):
    touch_fly64_layout(tmp_path)
    grid = fly64_grid(tmp_path, Filters(doses=(10000, 1000), views=("sparse",)))
    assert [str(j.key) for j in grid.jobs] == [k for k in FLY64 if "sparse" in k and "100000" not in k]


def test_order_is_dose_ascending_then_dense_before_sparse_then_train_before_test():
    keys = [JobKey(10, "sparse", "test"), JobKey(2, "other", "train"), JobKey(2, "dense", "test"),
            JobKey(2, "sparse", "train"), JobKey(2, "dense", "train")]  # fmt: skip
    assert [str(k) for k in sorted(keys, key=JobKey.sort_key)] == [
        "dose_2/dense/train", "dose_2/dense/test", "dose_2/sparse/train", "dose_2/other/train", "dose_10/sparse/test"]


@pytest.mark.parametrize("text,seconds", [(30, 1800), (0.05, 3), ("30", 1800), ("0:03", 3), ("1:30:00", 5400),
                                          ("2-00:00:00", 172800), ("1-12", 129600)])
def test_time_limits_read_like_slurm(text, seconds):
    assert parse_time(text, "p.yaml", "time") == seconds


@pytest.mark.parametrize("bad", [-1, 0, "0:00", "soon", "1:2:3:4", True])
def test_bad_time_limits_are_refused(bad):
    with pytest.raises(ConfigError, match="p.yaml, key 'time'"):
        parse_time(bad, "p.yaml", "time")


def test_per_condition_overrides_apply_in_order_and_retries_grow_time_and_memory():
    profile = parse_profile({"backend": "slurm", "time": "1:00:00", "partition": "gpu", "mem": "8G",
                             "overrides": [{"match": {"dose": ">=2000"}, "set": {"time": "4:00:00", "partition": "gpu-long"}},
                                           {"match": {"view": "sparse", "split": ["test"]}, "set": {"mem": "16G"}}]}, "p.yaml")  # fmt: skip
    low = profile.resources_for(JobKey(1000, "sparse", "test"))
    high = profile.resources_for(JobKey(2000, "dense", "train"))
    assert (low.time_s, low.partition, low.mem_mb) == (3600, "gpu", 16384)
    assert (high.time_s, high.partition, high.mem_mb) == (14400, "gpu-long", 8192)
    grown = profile.resources_for(JobKey(1000, "dense", "train"), (S.TIMEOUT, S.OUT_OF_MEMORY))
    assert (grown.time_s, grown.mem_mb) == (7200, 16384)


@pytest.mark.parametrize("text,state", [("COMPLETED", S.COMPLETED), ("CANCELLED by 0", S.CANCELLED), ("CD", S.COMPLETED),
                                        ("TO", S.TIMEOUT), ("OUT_OF_MEMORY", S.OUT_OF_MEMORY), ("NODE_FAIL", S.NODE_FAIL),
                                        ("PREEMPTED", S.PREEMPTED), ("REQUEUED", S.PENDING), ("COMPLETING", S.RUNNING),
                                        ("PD", S.PENDING), ("R", S.RUNNING), ("FAILED", S.FAILED), ("BOOT_FAIL", S.NODE_FAIL),
                                        ("UNKNOWN", None), ("", None)])  # fmt: skip
def test_slurm_states_map_onto_the_one_vocabulary(text, state):
    assert from_slurm(text) is state


def test_completed_means_the_command_itself_exited_zero():
    assert fate({"returncode": 0}, S.FAILED, 0, 5) is S.COMPLETED
    assert fate({"returncode": 3}, S.FAILED, 0, 5) is S.FAILED
    assert fate({"returncode": 3}, None, 0, 5) is S.FAILED  # no need to wait for the scheduler


def test_a_missing_or_unknown_row_is_never_success_and_is_judged_only_after_the_grace_period():
    assert fate(None, None, 1, 5) is None
    assert fate(None, None, 6, 5) is S.LOST
    assert fate(None, S.COMPLETED, 1, 5) is None  # result file may still be on its way
    assert fate(None, S.COMPLETED, 6, 5) is S.LOST
    assert fate(None, S.RUNNING, 100, 5) is S.RUNNING


def test_fates_imposed_by_the_scheduler_win_over_the_killed_commands_exit_status():
    killed = {"returncode": -15, "interrupted_by": "SIGTERM"}
    assert fate(killed, S.TIMEOUT, 0, 5) is S.TIMEOUT
    assert fate(killed, S.CANCELLED, 0, 5) is S.CANCELLED
    assert fate(killed, S.RUNNING, 1, 5) is None  # wait for the scheduler to say why
    assert fate(killed, S.PENDING, 600, 5) is None  # requeued: the job will run again
    assert fate(killed, S.FAILED, 0, 5) is S.FAILED
    assert fate(killed, None, 1, 5) is None and fate(killed, None, 6, 5) is S.FAILED
    assert fate(None, S.OUT_OF_MEMORY, 0, 5) is S.OUT_OF_MEMORY
    assert fate({"returncode": -15, "timed_out": True}, None, 0, 5) is S.TIMEOUT
    assert fate({"started": False}, None, 0, 5) is S.LOST
    assert fate({"started": False}, S.CANCELLED, 0, 5) is S.CANCELLED


def test_an_attempt_stopped_before_its_command_started_is_cancelled_when_it_was_cancelled_never_lost():
    stopped = {"started": False, "interrupted_by": "SIGTERM", "error": "never started: SIGTERM arrived first"}
    assert fate(stopped, None, 0, 5) is None  # the scheduler (the local backend: its own cancel) is asked why
    assert fate(stopped, S.CANCELLED, 0, 5) is S.CANCELLED
    assert fate(stopped, S.RUNNING, 1, 5) is None
    assert fate(stopped, None, 6, 5) is S.LOST and fate(stopped, S.COMPLETED, 0, 5) is S.LOST


def test_a_command_killed_by_a_signal_nobody_forwarded_is_judged_by_the_scheduler_not_taken_as_its_own_failure():
    node_fail = {"returncode": -15, "interrupted_by": None, "signals_sent": []}
    assert fate(node_fail, S.NODE_FAIL, 0, 5) is S.NODE_FAIL
    assert fate(node_fail, S.RUNNING, 60, 5) is None
    oom = {"returncode": -9, "interrupted_by": None, "signals_sent": []}
    assert fate(oom, S.OUT_OF_MEMORY, 0, 5) is S.OUT_OF_MEMORY  # sacct's word wins over a bare -9
    assert fate(oom, None, 1, 5) is None and fate(oom, None, 6, 5) is S.FAILED
    assert fate({**oom, "oom_killed": True}, None, 0, 5) is S.OUT_OF_MEMORY  # its memory cgroup counted the kill
    # a signal the wrapper sent itself (grace period over after a time limit) is no outside kill
    assert fate({"returncode": -9, "signals_sent": ["SIGKILL (grace period over)"]}, None, 0, 5) is S.FAILED
    assert fate({"returncode": 3, "signals_sent": []}, S.NODE_FAIL, 0, 5) is S.FAILED


class Asked(Backend):
    """A backend whose scheduler answers RUNNING for every job it is asked about, and
    records what each query was given."""

    name, grace_s, runs_unattended = "asked", 30.0, True
    answering = True

    def __init__(self, root):
        super().__init__(parse_profile({"backend": "slurm", "time": 5}, "test"), root, root, {})
        self.queried: list[tuple[list[str], bool]] = []

    def asks(self, handles):
        return self.answering

    def query(self, handles, ask):
        self.queried.append(([h.key for h in handles], ask))
        return {h.key: (S.RUNNING, {}) for h in handles if ask or h.key != "c"}

    submit = cancel = reattach = None


def test_between_scheduler_answers_a_cycle_looks_only_at_attempts_with_news_of_their_own(tmp_path):
    backend = Asked(tmp_path)
    handles = [Handle(key, 1, tmp_path / key, tmp_path / "out", job_id=key) for key in "abc"]
    assert {(o.key, o.state) for o in backend.poll(handles)} == {(k, S.RUNNING) for k in "abc"}
    backend.answering = False
    assert backend.poll(handles) == [] and backend.queried[-1] == ([], False)
    # "a" wrote its result and its done mark; "c" waits out a grace period (no row in the last answer)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "result.json").write_text(json.dumps({"returncode": 0, "started": True}))
    backend.done_dir.mkdir(parents=True)
    (backend.done_dir / handles[0].done_name).touch()
    handles[2].undecided_since = time.monotonic()
    assert [(o.key, o.state) for o in backend.poll(handles)] == [("a", S.COMPLETED)]
    assert backend.queried[-1] == (["c"], False)  # "b", running on, was not looked at
    backend.answering = True
    backend.poll(handles[1:])
    assert backend.queried[-1] == (["b", "c"], True)


@pytest.mark.parametrize("cpus, gpus, expected", [(8, None, 4), (4, None, 2), (1, None, 1), (64, None, 32), (8, "0,1,2", 3)])
def test_without_max_parallel_a_local_run_takes_half_the_cores_or_one_job_per_gpu(tmp_path, monkeypatch, cpus, gpus, expected):
    from gridsubmit.backends.local import LocalBackend

    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(cpus)))
    if gpus is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", gpus)
    profile = parse_profile({"backend": "local", "time": "10:00"}, "test")
    assert LocalBackend(profile, tmp_path, tmp_path, {}).max_parallel == expected
