"""What a followed attempt is now, decided from the evidence gathered about it in one poll
cycle. Pure: the backends gather the evidence (result files, done marks, one bulk scheduler
answer, the claim of a packed cell) and apply the verdict; nothing here reads a file, asks a
scheduler or looks at a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .states import JobState, fate


@dataclass(frozen=True)
class Evidence:
    """What one poll cycle found out about an attempt."""

    result: dict | None = None  # its task's result.json, if written
    scheduled: JobState | None = None  # the scheduler's mapped state; None: no row about its job
    info: dict = field(default_factory=dict)  # the scheduler's fields about its job
    silent: bool = False  # the scheduler could not be asked about it: no evidence either way
    unclaimed_in_pack: bool = False  # a packed cell nobody claimed, now marked so it never runs
    cancel_asked: bool = False
    outputs_wrong: tuple[str, ...] = ()  # expected outputs missing, or left by an earlier attempt


@dataclass(frozen=True)
class Verdict:
    state: JobState
    undecided_since: float | None  # since when the evidence is inconclusive; None: it is not
    info: dict  # the scheduler's fields, with the reason where the decision gives one
    pack_ended: bool = False  # its pack's job ended (or was cancelled) before its turn


def settled_by_result(result: dict | None) -> bool:
    """Does the attempt's own result decide it, whatever the scheduler says?"""
    return fate(result, None, 0.0, math.inf) is not None


def decide(ev: Evidence, previous: JobState, undecided_since: float | None, now: float, grace_s: float) -> Verdict:
    """The attempt's state from this cycle's evidence.

    A packed cell whose job ended before its turn is LOST (it runs again), or CANCELLED when
    a cancel was asked. A job the scheduler lists as queued or running, or could not be asked
    about, leaves nothing to judge: the grace period starts once the scheduler answers without
    a conclusive word. Then ``states.fate`` decides; a success that lacks what the study needs
    is FAILED; undecided, the attempt stays as the scheduler or the last cycle saw it.
    """
    scheduled, info, pack_ended = ev.scheduled, ev.info, False
    if ev.unclaimed_in_pack and ev.result is None:
        pack_ended = True
        if ev.cancel_asked:
            scheduled, why = JobState.CANCELLED, "cancelled before its turn in its pack"
        else:
            scheduled, why = JobState.LOST, (f"its job ended ({info.get('scheduler_state', '?')}) before this "
                                             "cell's turn in its pack; it runs again")  # fmt: skip
        info = {**info, "error": why}
    waiting = ev.result is None and (scheduled.active if scheduled is not None else ev.silent)
    since = None if waiting else now if undecided_since is None else undecided_since
    state = fate(ev.result, scheduled, 0.0 if since is None else now - since, grace_s)
    if state is JobState.COMPLETED and ev.outputs_wrong:
        state = JobState.FAILED  # exit 0 without what the study needs is no success
    if state is None:
        state = scheduled if scheduled is not None and scheduled.active else previous
    return Verdict(state, since, info, pack_ended)
