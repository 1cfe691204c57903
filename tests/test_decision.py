"""The decision of an attempt's state from its evidence, as a table of cases, and the moves a
state may make. Pure: no scheduler, no files."""

import pytest

from gridsubmit import manifest as mf
from gridsubmit.decision import Evidence, decide
from gridsubmit.states import ATTEMPT_MOVES, JobState as S, fate

GRACE = 30.0
OK = {"started": True, "returncode": 0}
EXIT3 = {"started": True, "returncode": 3}
KILLED_FROM_OUTSIDE = {"started": True, "returncode": -9, "signals_sent": []}
FORWARDED_TERM = {"started": True, "returncode": -15, "interrupted_by": "SIGTERM", "signals_sent": ["SIGTERM (forwarded)"]}
NEVER_STARTED = {"started": False, "interrupted_by": "SIGTERM", "error": "never started: SIGTERM arrived first"}

# (case, result.json, the scheduler's mapped state or None, seconds undecided, expected state or None: ask again)
TABLE = [
    ("no result, no row, within the grace period", None, None, 5, None),
    ("no result, no row past the grace period", None, None, 31, S.LOST),
    ("no result, queued", None, S.PENDING, 300, S.PENDING),
    ("no result, running", None, S.RUNNING, 300, S.RUNNING),
    ("no result, the scheduler's time limit", None, S.TIMEOUT, 0, S.TIMEOUT),
    ("no result, cancelled", None, S.CANCELLED, 0, S.CANCELLED),
    ("no result, out of memory", None, S.OUT_OF_MEMORY, 0, S.OUT_OF_MEMORY),
    ("no result, node failure", None, S.NODE_FAIL, 0, S.NODE_FAIL),
    ("no result, 'COMPLETED' within the grace period (the file may lag)", None, S.COMPLETED, 5, None),
    ("no result, 'COMPLETED' past it: never a success", None, S.COMPLETED, 31, S.LOST),
    ("no result, FAILED past the grace period", None, S.FAILED, 31, S.FAILED),
    ("exit 0", OK, None, 0, S.COMPLETED),
    ("exit 0 whatever the scheduler says", OK, S.FAILED, 0, S.COMPLETED),
    ("exit 3: failed on its own, at once", EXIT3, None, 0, S.FAILED),
    ("killed by the OOM killer (its cgroup counted it)", {**KILLED_FROM_OUTSIDE, "oom_killed": True}, None, 0, S.OUT_OF_MEMORY),
    ("stopped by the local time limit", {**FORWARDED_TERM, "timed_out": True}, None, 0, S.TIMEOUT),
    ("killed from outside, the scheduler still running it", KILLED_FROM_OUTSIDE, S.RUNNING, 100, None),
    ("killed from outside, the scheduler's reason", KILLED_FROM_OUTSIDE, S.NODE_FAIL, 0, S.NODE_FAIL),
    ("killed from outside, no reason within the grace period", KILLED_FROM_OUTSIDE, None, 5, None),
    ("killed from outside, no reason past it", KILLED_FROM_OUTSIDE, None, 31, S.FAILED),
    ("a forwarded SIGTERM, the scheduler cancelled it", FORWARDED_TERM, S.CANCELLED, 0, S.CANCELLED),
    ("a forwarded SIGTERM, the scheduler's limit", FORWARDED_TERM, S.TIMEOUT, 0, S.TIMEOUT),
    ("skipped in its pack after a cancel", {"started": False, "cancelled": True}, None, 0, S.CANCELLED),
    ("stopped before it started, cancelled", NEVER_STARTED, S.CANCELLED, 0, S.CANCELLED),
    ("stopped before it started, the backend not told yet", NEVER_STARTED, None, 5, None),
    ("stopped before it started, no word past the grace period", NEVER_STARTED, None, 31, S.LOST),
    ("never started without a signal (no cells' folder)", {"started": False}, None, 0, S.LOST),
]


@pytest.mark.parametrize("case, result, scheduled, undecided, expected", TABLE, ids=[row[0] for row in TABLE])
def test_the_decision_table(case, result, scheduled, undecided, expected):
    assert fate(result, scheduled, undecided, GRACE) is expected


def test_a_final_state_never_moves_and_queued_and_running_go_both_ways():
    for state in S:
        if state.final and state is not S.BLOCKED:
            assert ATTEMPT_MOVES[state] == {state}, state
    assert S.RUNNING.may_become(S.PENDING) and S.PENDING.may_become(S.RUNNING)  # a requeue after preemption
    assert not S.SUBMITTED.may_become(S.PLANNED) and not S.COMPLETED.may_become(S.FAILED)


def test_merge_refuses_a_move_no_state_may_make():
    manifest = {"jobs": [{"key": "dose_1000/dense/train", "state": "COMPLETED", "metrics": None,
                          "attempts": [{"attempt": 1, "state": "COMPLETED"}]}]}  # fmt: skip
    with pytest.raises(mf.IllegalTransition, match="COMPLETED -> RUNNING"):
        mf.merge(manifest, [mf.Observation("dose_1000/dense/train", 1, S.RUNNING)])
    assert not mf.merge(manifest, [mf.Observation("dose_1000/dense/train", 1, S.COMPLETED)])  # the same word again: nothing


# The rules around fate, as decide applies them to one cycle's evidence:
# (case, evidence, the state the last cycle saw, undecided since, expected state, undecided since after)
NOW = 1000.0
SUCCESS = {"started": True, "returncode": 0}
DECIDE_TABLE = [
    ("queued: nothing to judge, no clock", Evidence(scheduled=S.PENDING), S.SUBMITTED, None, S.PENDING, None),
    ("running again after a lag: the clock stops", Evidence(scheduled=S.RUNNING), S.RUNNING, 990.0, S.RUNNING, None),
    ("no row, the scheduler could not be asked: no clock", Evidence(silent=True), S.RUNNING, None, S.RUNNING, None),
    ("an outage keeps the clock stopped however long", Evidence(silent=True), S.RUNNING, 0.0, S.RUNNING, None),
    ("no row when it answers: the clock starts", Evidence(), S.RUNNING, None, S.RUNNING, NOW),
    ("no row within the grace period", Evidence(), S.RUNNING, NOW - 5, S.RUNNING, NOW - 5),
    ("no row past the grace period: LOST", Evidence(), S.RUNNING, NOW - 31, S.LOST, NOW - 31),
    ("its result settles it", Evidence(result=SUCCESS), S.RUNNING, None, S.COMPLETED, NOW),
    ("exit 0 without an expected output: FAILED", Evidence(result=SUCCESS, outputs_wrong=("recon.npz missing",)),
     S.RUNNING, None, S.FAILED, NOW),
    ("a packed cell whose job ended before its turn: LOST, to run again",
     Evidence(scheduled=S.COMPLETED, info={"scheduler_state": "COMPLETED"}, unclaimed_in_pack=True), S.PENDING, None,
     S.LOST, NOW),
    ("a packed cell cancelled before its turn", Evidence(scheduled=S.RUNNING, unclaimed_in_pack=True, cancel_asked=True),
     S.PENDING, None, S.CANCELLED, NOW),
    ("a packed cell that wrote its result is judged by it", Evidence(result=SUCCESS, unclaimed_in_pack=True),
     S.RUNNING, None, S.COMPLETED, NOW),
    ("the scheduler says COMPLETED, no result yet: wait", Evidence(scheduled=S.COMPLETED), S.RUNNING, None, S.RUNNING, NOW),
]  # fmt: skip


@pytest.mark.parametrize("case, evidence, previous, since, expected, since_after", DECIDE_TABLE,
                         ids=[row[0] for row in DECIDE_TABLE])  # fmt: skip
def test_the_rules_around_fate(case, evidence, previous, since, expected, since_after):
    verdict = decide(evidence, previous, since, NOW, GRACE)
    assert (verdict.state, verdict.undecided_since) == (expected, since_after)
    assert verdict.pack_ended == (evidence.unclaimed_in_pack and evidence.result is None)
    if verdict.pack_ended:  # the reason goes with the scheduler's fields, which are not changed in place
        assert verdict.info["error"] and "error" not in evidence.info
