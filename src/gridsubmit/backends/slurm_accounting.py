"""Accounting: sacct's final record of each ended attempt's job (state, exit code, node,
MaxRSS, Elapsed, AllocTRES), asked at the end of a run within the status call budget.

sacct trails the jobs by seconds. An attempt that wrote its result (the node's own figures:
elapsed_s, max_rss_bytes, cpu_s) is not waited for: it gets ``accounting: pending``, filled in
by the next runner on the root (``wait``, ``submit``). Attempts that left no result are waited
for, up to ACCOUNTING_WAIT_S, as the scheduler's word is all there is about their end.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

from ..manifest import ACCOUNTING_PENDING
from .base import Handle, SchedulerError
from .slurm_commands import ROW_FIELDS
from .slurm_status import StatusRounds

log = logging.getLogger(__name__)
ACCOUNTING_WAIT_S = 15.0


def accounting(handles: Sequence[Handle], rounds: StatusRounds) -> dict[str, dict]:
    """Job id -> the fields its attempts take: the records the status rounds kept, and
    those asked for once more when a call is due."""
    jobs = {h.job_id for h in handles if h.job_id}
    unreported = {h.job_id for h in handles if h.job_id and not h.reported}
    deadline = time.monotonic() + ACCOUNTING_WAIT_S
    asked = False
    while missing := jobs - rounds.final.keys():
        pause = rounds.wait_s()
        if (asked or pause) and not missing & unreported or time.monotonic() + pause > deadline:
            break  # asked once when due; waited only for attempts that left no result
        time.sleep(pause)
        ask = [h for h in handles if h.job_id in missing]
        try:
            rounds.sacct(sorted({j.split("_")[0] for j in missing}), sorted({h.job_name for h in ask if h.job_name}), ask)
        except SchedulerError as exc:
            log.warning("sacct for the run's accounting failed: %s", exc)
        rounds.spent(1)
        asked = True
    # A reported attempt's last row was seen while its job ran: it says nothing about how
    # the job ended, so none of it stays. Without a result, the last row is all there is.
    pending = {"accounting": ACCOUNTING_PENDING}
    ran = {**pending, **dict.fromkeys(ROW_FIELDS)}
    return {j: {**rounds.final[j], "accounting": None} if j in rounds.final else
            pending if j in unreported else ran for j in jobs}  # fmt: skip
