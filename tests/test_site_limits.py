"""The site's limits and sbatch's refusals, pure: parsing sacctmgr/squeue, the queue cap
arithmetic, the kinds of sbatch failure, the retry backoff, and the pending-reason sentences."""

import pytest

from gridsubmit.backends.slurm_limits import (BACKOFF_FIRST_S, BACKOFF_MAX_S, SUBMIT_TRIES, SiteLimits, SubmitLimit,
                                              backoff_s, gpus_of, lookup, parse_assoc, parse_qos, parse_queue,
                                              sbatch_failure, site_limits)  # fmt: skip
from gridsubmit.backends.slurm_waves import refused_cap
from gridsubmit.pending import REASONS, explain
from gridsubmit.report import status_table

ASSOC = "alice|proj|proj||||normal,gpu-limited|normal\nalice|proj|other||100|20|normal|\n"
QOS = "normal|||\ngpu-limited|5|4|cpu=64,gres/gpu=2\n"
QUEUE = ("11_0|gs-run1-aaaaaa|gpu-limited|proj|gpu\n11_1|gs-run1-aaaaaa|gpu-limited|proj|gpu\n"
         "12|train|gpu-limited|proj|gpu\n13|notebook|normal|proj|cpu\n14|other|gpu-limited|other|gpu,cpu\n")  # fmt: skip


def test_the_queue_cap_is_the_profiles_or_what_the_tightest_submit_limit_leaves_after_the_users_other_jobs():
    limits = SiteLimits(submit=[SubmitLimit("MaxSubmitJobsPerUser", 5, "QOS normal", 2),
                                SubmitLimit("MaxSubmitJobs", 100, "association proj/alice", 40)])  # fmt: skip
    assert limits.cap(500) == (3, limits.submit[0])
    assert limits.cap(2) == (2, None)  # the profile's is smaller
    assert SiteLimits().cap(500) == (500, None)  # nothing found: the profile's
    assert SiteLimits(submit=[SubmitLimit("MaxSubmitJobsPerUser", 5, "QOS q", None)]).cap(500)[0] == 5  # others unknown
    full = SiteLimits(submit=[SubmitLimit("MaxSubmitJobsPerUser", 5, "QOS q", 7)])
    assert full.cap(500)[0] == 1  # never 0: one job is tried, and a refusal waits for room


def test_the_limits_found_are_said_in_one_line_with_what_they_leave_this_run():
    limits = SiteLimits(submit=[SubmitLimit("MaxSubmitJobsPerUser", 5, "QOS normal", 2)], gpus=[(2, "QOS normal")])
    lines = limits.describe(500)
    assert lines[0] == ("site limits: MaxSubmitJobsPerUser 5 (QOS normal), 2 jobs of yours queued: "
                        "at most 3 of this run's at once (max_queued 500 in the profile)")  # fmt: skip
    assert "gres/gpu=2 (QOS normal)" in lines[1] and "QOSMaxGRESPerUser" in lines[1]
    failed = SiteLimits(problems=["sacctmgr exited 1: Slurm accounting storage is disabled"]).describe(500)
    assert failed == ["site limits: not read (sacctmgr exited 1: Slurm accounting storage is disabled); "
                      "max_queued 500 from the profile stands"]  # fmt: skip


def test_sacctmgr_and_squeue_rows_give_the_limits_that_bind_the_runs_jobs_and_count_only_the_users_other_jobs_under_each():
    assoc = parse_assoc(ASSOC, None)
    assert assoc["account"] == "proj" and assoc["default_qos"] == "normal" and assoc["max_submit"] is None
    qos = parse_qos(QOS)
    assert qos["gpu-limited"] == {"max_submit_pu": 5, "max_jobs_pu": 4, "gpus_pu": 2}
    queue = parse_queue(QUEUE, "gs-run1-")
    assert [j["job_id"] for j in queue] == ["12", "13", "14"]  # this run's own jobs are left out
    limits = site_limits(assoc, qos, ["gpu-limited"], queue)
    assert limits.submit == [SubmitLimit("MaxSubmitJobsPerUser", 5, "QOS gpu-limited", 2)]  # jobs 12 and 14
    assert limits.cap(500)[0] == 3
    assert limits.gpus == [(2, "QOS gpu-limited")] and limits.max_jobs == [("MaxJobsPerUser", 4, "QOS gpu-limited")]
    other = site_limits(parse_assoc(ASSOC, "other"), qos, ["normal"], queue)
    assert other.submit == [SubmitLimit("MaxSubmitJobs", 100, "association other/alice", 1)]  # job 14
    assert other.max_jobs == [("MaxJobs", 20, "association other/alice")]
    assert site_limits(assoc, qos, ["gpu-limited"], None).submit[0].others is None  # squeue failed


def test_gpu_caps_are_read_from_tres_strings():
    assert gpus_of("cpu=64,gres/gpu=2") == 2
    assert gpus_of("gres/gpu:a100=1,gres/gpu:v100=2") == 3
    assert gpus_of("cpu=4") is None and gpus_of("") is None


def test_a_failed_lookup_is_not_fatal_it_is_said_and_the_profiles_value_stands():
    def run(argv):
        raise RuntimeError("sacctmgr exited 1: Slurm accounting storage is disabled")

    limits = lookup(run, "alice", None, [None], "gs-run1-")
    assert limits.problems == ["sacctmgr exited 1: Slurm accounting storage is disabled"]
    assert limits.cap(500) == (500, None)

    answers = {"sacctmgr": [ASSOC, QOS]}

    def partly(argv):  # sacctmgr answers, squeue fails
        if argv[0] == "squeue":
            raise RuntimeError("squeue: Socket timed out on send/recv operation")
        return answers["sacctmgr"].pop(0)

    limits = lookup(partly, "alice", None, ["gpu-limited"], "gs-run1-")
    assert limits.cap(500)[0] == 5 and "not known" in limits.describe(500)[0]


@pytest.mark.parametrize("message, kind", [
    ("sbatch: error: QOSMaxSubmitJobPerUserLimit\nsbatch: error: Batch job submission failed: Job violates "
     "accounting/QOS policy (job submit limit, user's size and/or time limits)", "limit"),
    ("sbatch: error: AssocMaxSubmitJobLimit", "limit"),
    ("sbatch: error: Batch job submission failed: Job violates accounting/QOS policy", "policy"),
    ("sbatch: error: Batch job submission failed: Socket timed out on send/recv operation", "transient"),
    ("sbatch: error: Batch job submission failed: Resource temporarily unavailable", "transient"),
    ("sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)", "transient"),
    ("sbatch: error: Batch job submission failed: Invalid partition name specified", None),
])  # fmt: skip
def test_sbatch_failures_are_told_apart_limit_transient_or_a_users_error(message, kind):
    assert sbatch_failure(message) == kind


def test_retries_back_off_exponentially_with_jitter_and_stay_bounded():
    assert SUBMIT_TRIES == 5 and BACKOFF_FIRST_S == 1 and BACKOFF_MAX_S == 30
    assert [backoff_s(n, lambda: 1.0) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert [backoff_s(n, lambda: 0.0) for n in range(3)] == [0.5, 1, 2]  # jitter: between half and all of it
    assert sum(backoff_s(n, lambda: 1.0) for n in range(SUBMIT_TRIES - 1)) == 15  # the longest a chunk is retried


def test_pending_reasons_are_explained_in_a_sentence_with_the_qos_gpu_cap_when_known():
    assert explain("QOSMaxGRESPerUser", {"gpus": 2, "qos": "gridsubmit-limited"}) == (
        "QOSMaxGRESPerUser: your QOS (gridsubmit-limited) allows 2 GPUs at once, all of them in use by your running "
        "jobs; it starts when one of them ends")
    assert explain("QOSMaxGRESPerUser").startswith("QOSMaxGRESPerUser: your QOS caps the GPUs")
    for code in ("QOSMaxSubmitJobPerUserLimit", "AssocGrpGRES", "Priority", "Resources", "ReqNodeNotAvail", "JobHeldAdmin"):
        text = explain(code)
        assert text.startswith(f"{code}: ") and len(text) > len(code) + 20, text
    assert explain("ReqNodeNotAvail, UnavailableNodes:node7").startswith("ReqNodeNotAvail, UnavailableNodes:node7: a node")
    assert explain("SomethingNew") == "SomethingNew"  # unknown: as squeue said it
    assert all("{" not in text or code == "QOSMaxGRESPerUser" for code, text in REASONS.items())


def test_the_status_table_shows_the_reason_a_job_waits_explained():
    attempt = {"attempt": 1, "state": "PENDING", "job_id": "7_1", "pending_reason": "QOSMaxGRESPerUser",
               "gpu_cap": {"gpus": 2, "qos": "normal"}}  # fmt: skip
    cell = {"key": "dose_1000/dense/train", "state": "PENDING", "attempts": [attempt], "missing": []}
    text = status_table({"jobs": [cell]})
    assert "waiting: QOSMaxGRESPerUser: your QOS (normal) allows 2 GPUs at once" in text


def test_after_a_refusal_for_a_limit_half_the_refused_wave_is_tried_and_a_single_job_waits_for_one_of_the_runs_own():
    assert refused_cap(ours=0, refused=10) == 5
    assert refused_cap(ours=3, refused=2) == 4
    assert refused_cap(ours=4, refused=1) == 4  # room only when one of the run's four ends
    assert refused_cap(ours=0, refused=1) == 0  # the user's other jobs fill the queue: asked again later
