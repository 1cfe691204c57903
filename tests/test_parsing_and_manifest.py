"""Pure pieces: scheduler output parsing (faked text is fine here) and manifest merging."""


from gridsubmit import manifest as mf
from gridsubmit.backends.base import tail
from gridsubmit.backends.slurm_commands import expand_job_id, parse_sacct, parse_squeue
from gridsubmit.cluster import Retry
from gridsubmit.states import JobState as S

SACCT = """\
41_0|gs-run-a|COMPLETED|0:0|localhost||00:00:07
41_0.batch|batch|COMPLETED|0:0|localhost|10240K|00:00:07
41_0.extern|extern|COMPLETED|0:0|localhost|512K
41_1|gs-run-a|FAILED|1:0|localhost|
41_1.batch|batch|FAILED|1:0|localhost|2M
41_2|gs-run-a|CANCELLED by 0|0:0|localhost|
41_3|gs-run-a|TIMEOUT|0:0|localhost|
41_[4-6,9%2]|gs-run-a|PENDING|0:0|None assigned|
42|gs-run-b|OUT_OF_MEMORY|0:125|localhost|
43|gs-run-b|NEW_FANGLED_STATE|0:0|localhost|
"""


def test_sacct_rows_map_to_states_with_max_rss_from_the_step_rows():
    jobs = parse_sacct(SACCT)
    assert jobs["41_0"] == (S.COMPLETED, {"scheduler_state": "COMPLETED", "scheduler_exit_code": "0:0",
                                          "elapsed": "00:00:07", "node": "localhost", "max_rss": "10240K"})  # fmt: skip
    assert jobs["41_1"][0] is S.FAILED and jobs["41_1"][1]["max_rss"] == "2M"
    assert jobs["41_2"][0] is S.CANCELLED and jobs["41_3"][0] is S.TIMEOUT and jobs["42"][0] is S.OUT_OF_MEMORY
    assert [jobs[f"41_{i}"][0] for i in (4, 5, 6, 9)] == [S.PENDING] * 4
    assert "node" not in jobs["41_4"][1] and "41_7" not in jobs
    # a state this version does not know never ends a live job
    assert jobs["43"] == (S.RUNNING, {"scheduler_state": "NEW_FANGLED_STATE", "scheduler_exit_code": "0:0", "node": "localhost"})


def test_squeue_rows_map_to_states():
    jobs = parse_squeue("50_0|RUNNING|localhost\n50_1|COMPLETING|localhost\n50_[2-3]|PENDING|\n51|TIMEOUT|localhost\n")
    assert {k: v[0] for k, v in jobs.items()} == {"50_0": S.RUNNING, "50_1": S.RUNNING, "50_2": S.PENDING,
                                                 "50_3": S.PENDING, "51": S.TIMEOUT}  # fmt: skip


def test_squeue_says_why_a_job_waits_and_whether_it_ever_starts_by_itself():
    jobs = parse_squeue("60_0|PENDING||JobArrayTaskLimit\n61|PENDING||JobHeldUser\n62|PENDING||InvalidAccount\n"
                        "63|RUNNING|localhost|None\n64|REQUEUE_HOLD||launch failed requeued held\n")  # fmt: skip
    assert jobs["60_0"][1]["pending_reason"] == "JobArrayTaskLimit" and jobs["60_0"][1]["stuck"] is False
    assert jobs["61"][1]["stuck"] and jobs["62"][1]["stuck"] and jobs["64"][1]["stuck"]
    assert jobs["63"][1] == {"scheduler_state": "RUNNING", "node": "localhost", "pending_reason": "", "stuck": False}


def test_array_ranges_expand_to_task_ids():
    assert expand_job_id("7_[0-2,5%4]") == ["7_0", "7_1", "7_2", "7_5"]
    assert expand_job_id("7_3") == ["7_3"] and expand_job_id("8") == ["8"]


def test_tails_are_bounded_and_never_break_on_bad_bytes(tmp_path):
    log = tmp_path / "out.log"
    log.write_bytes(b"".join(b"line %d \xff\n" % i for i in range(5000)))
    text = tail(log)
    assert len(text.splitlines()) == 50 and text.endswith("line 4999 \ufffd") and len(text.encode()) <= 8192
    assert tail(tmp_path / "missing.log") == ""


def _manifest(states):
    jobs = []
    for i, attempts in enumerate(states):
        jobs.append({"key": f"dose_{i + 1}/dense/train", "dose": i + 1, "view": "dense", "split": "train",
                     "state": attempts[-1] if attempts else "PLANNED", "retry_base": 0, "cancel_requested": False,
                     "metrics": None, "missing": [], "inputs": {"phase_c_npz": f"/in/{i}.npz"}, "pointers": {}, "sought": {},
                     "output_dir": f"/o/{i}", "expected_outputs": [], "attempts": [{"attempt": n + 1, "state": s, "returncode": None,
                                                                   "stdout": "o", "stderr": "e"} for n, s in enumerate(attempts)]})  # fmt: skip
    return {"jobs": jobs, "run_id": "r", "artifact_root": "/x", "cluster": {"backend": "local", "name": "l"}}


def test_due_cells_are_the_unsubmitted_and_the_retryable_with_attempts_left():
    m = _manifest([[], ["COMPLETED"], ["FAILED"], ["LOST"], ["LOST", "LOST", "LOST"], ["NODE_FAIL"], ["TIMEOUT"]])
    due = [c["key"] for c in mf.due_cells(m, Retry())]
    assert due == ["dose_1/dense/train", "dose_4/dense/train", "dose_6/dense/train"]
    m["jobs"][0]["cancel_requested"] = True
    assert "dose_1/dense/train" not in [c["key"] for c in mf.due_cells(m, Retry())]


def test_merge_updates_the_attempt_and_the_cell_and_says_whether_anything_changed():
    m = _manifest([["RUNNING"]])
    obs = mf.Observation("dose_1/dense/train", 1, S.FAILED, {"returncode": 3, "error": None}, None)
    assert mf.merge(m, [obs]) is True
    assert m["jobs"][0]["state"] == "FAILED" and m["jobs"][0]["attempts"][0]["returncode"] == 3
    assert mf.merge(m, [obs]) is False


def test_historical_fields_are_derived_from_the_cells():
    m = mf.with_results(_manifest([["COMPLETED"], ["FAILED"], ["RUNNING"], []]))
    assert (m["n_jobs"], m["n_executed"], m["n_success"], m["n_failed"]) == (4, 2, 1, 1)
    assert [r["state"] for r in m["execution_results"]] == ["COMPLETED", "FAILED"]
    assert "error" not in m["execution_results"][0] and m["execution_results"][1]["error"] == "failed"
    # the study's record: absolute log paths, and the job's inputs under their names
    assert m["execution_results"][0]["log_path"] == "/x/o" and m["execution_results"][0]["phase_c_npz"] == "/in/0.npz"


def test_rerun_failed_restarts_failed_cells_and_keeps_their_history():
    old = _manifest([["COMPLETED"], ["FAILED"]])
    fresh = _manifest([[], []])
    for cell in fresh["jobs"]:
        cell.update(inputs={}, output_dir="/o", options={}, argv=["x"], resources={"time_s": 60, "gpus_per_job": 0})
    for key in ("study", "cluster", "filters", "versions"):
        fresh[key] = old.setdefault(key, {})
    keep = mf.adopt_plan(old, fresh, mf.Rerun())
    assert [c["state"] for c in keep["jobs"]] == ["COMPLETED", "FAILED"]
    rerun = mf.adopt_plan(old, fresh, mf.Rerun(failed=True))
    assert [c["state"] for c in rerun["jobs"]] == ["COMPLETED", "PLANNED"]
    assert rerun["jobs"][1]["retry_base"] == 1 and len(rerun["jobs"][1]["attempts"]) == 1


def test_a_cell_cancelled_before_its_first_submission_can_be_rerun_and_a_rerun_forgets_old_metrics():
    old = _manifest([[], ["COMPLETED"]])
    old["jobs"][0].update(state="CANCELLED", cancel_requested=True)  # cancelled while it waited for a wave
    old["jobs"][1]["metrics"] = [{"model": "m", "metric": "psnr", "amplitude": 1.0, "phase": 2.0, "value": None}]
    fresh = _manifest([[], []])
    for cell in fresh["jobs"]:
        cell.update(inputs={}, output_dir="/o", options={}, argv=["x"], resources={"time_s": 60, "gpus_per_job": 0})
    for key in ("study", "cluster", "filters", "versions"):
        fresh[key] = old.setdefault(key, {})
    again = mf.adopt_plan(old, fresh, mf.Rerun(failed=True))
    assert again["jobs"][0]["state"] == "PLANNED" and not again["jobs"][0]["cancel_requested"]
    assert [c["key"] for c in mf.due_cells(again, Retry())] == ["dose_1/dense/train"]
    rerun = mf.adopt_plan(old, fresh, mf.Rerun(cells=("dose_2/dense/train",)))
    assert rerun["jobs"][1]["state"] == "PLANNED" and rerun["jobs"][1]["metrics"] is None


# --- a packed cell's figures are its own; its job's are the pack's ---------------------------------

SACCT_FINAL = {"scheduler_state": "OUT_OF_MEMORY", "scheduler_exit_code": "0:125", "elapsed": "00:02:00",
               "max_rss": "7G", "node": "gpu-node-3", "accounting": None}  # fmt: skip


def test_a_job_of_one_cell_takes_sacct_figures_as_the_attempts_own():
    attempt = {"job_id": "41_0", "elapsed_s": 119.5, "max_rss_bytes": 7 * 2**30, "node": "gpu3", "accounting": "pending"}
    assert mf.apply_job_facts(attempt, SACCT_FINAL)
    assert attempt == {"job_id": "41_0", "elapsed_s": 119.5, "max_rss_bytes": 7 * 2**30, "node": "gpu3",  # its own name stands
                       "scheduler_state": "OUT_OF_MEMORY", "scheduler_exit_code": "0:125", "elapsed": "00:02:00",
                       "max_rss": "7G"}  # fmt: skip
    assert not mf.apply_job_facts(attempt, SACCT_FINAL)  # nothing new


def test_a_packed_cell_keeps_its_own_figures_and_its_jobs_are_recorded_as_the_packs():
    # the first of three cells: 5 s and 100 MB of its own, in a job that ran 2 minutes and ended out of memory
    attempt = {"job_id": "41_0", "state": "COMPLETED", "elapsed_s": 5.0, "cpu_s": 4.9, "max_rss_bytes": 10**8,
               "accounting": "pending", "pack": {"size": 3, "position": 0},
               "elapsed": "00:00:03", "scheduler_state": "RUNNING"}  # fmt: skip  (as a manifest written before put them)
    assert mf.apply_job_facts(attempt, SACCT_FINAL)
    assert attempt == {"job_id": "41_0", "state": "COMPLETED", "elapsed_s": 5.0, "cpu_s": 4.9, "max_rss_bytes": 10**8,
                       "node": "gpu-node-3",
                       "pack": {"size": 3, "position": 0, "scheduler_state": "OUT_OF_MEMORY", "scheduler_exit_code": "0:125",
                                "elapsed": "00:02:00", "max_rss": "7G"}}  # fmt: skip
    # the rows seen while the job ran say nothing of its end: they go, from the pack too
    assert mf.apply_job_facts(attempt, dict.fromkeys(("scheduler_state", "scheduler_exit_code", "elapsed", "max_rss")))
    assert attempt["pack"] == {"size": 3, "position": 0} and "elapsed" not in attempt


def test_a_packed_cells_scheduler_rows_while_it_runs_are_the_packs(tmp_path):
    from gridsubmit.backends.base import Backend, Handle
    from gridsubmit.cluster import parse_profile

    class Quiet(Backend):  # the collection shared by all backends, with a scheduler that says one thing
        name, grace_s, runs_unattended = "fake", 1.0, True

        def submit(self, submissions):
            return []

        def query(self, handles, ask):
            return {h.key: (S.RUNNING, {"scheduler_state": "RUNNING", "elapsed": "00:01:00", "node": "n1"}) for h in handles}

        def cancel(self, handles):
            pass

        def reattach(self, records):
            return []

    backend = Quiet(parse_profile({"backend": "local", "time": "5:00"}, "test.yaml"), tmp_path, tmp_path, {})
    packed = Handle("dose_1000/dense/train", 1, tmp_path / "a", tmp_path / "o", job_id="41_0",
                    pack={"size": 2, "position": 1}, looked=True)  # fmt: skip
    alone = Handle("dose_1000/dense/test", 1, tmp_path / "b", tmp_path / "p", job_id="42", looked=True)
    by_key = {o.key: o.fields for o in backend.poll([packed, alone])}
    assert by_key["dose_1000/dense/test"]["elapsed"] == "00:01:00"
    fields = by_key["dose_1000/dense/train"]
    assert fields["pack"] == {"size": 2, "position": 1, "scheduler_state": "RUNNING", "elapsed": "00:01:00"}
    assert fields.get("elapsed") is None and fields.get("scheduler_state") is None and fields["node"] == "n1"
