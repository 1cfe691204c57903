"""Why a queued SLURM job waits, in a sentence: squeue's reason code, explained (pure).

squeue gives a code (``QOSMaxGRESPerUser``, ``Priority``, ...); the status table shows the
code followed by what it means for the user and what, if anything, they can do. Codes not
in the table are shown as they are.
"""

from __future__ import annotations

# code -> sentence; {gpus} and {qos} are filled in from the attempt's gpu_cap when it has one
# (the code is matched as a whole, else its part before a comma: "ReqNodeNotAvail, UnavailableNodes:n1")
REASONS: dict[str, str] = {
    "Priority": "other jobs come first by priority; it starts when its turn comes",
    "Resources": "waiting for free nodes, CPUs, GPUs or memory; it is next in line",
    "BeginTime": "not allowed to start before its begin time",
    "Dependency": "waiting for the jobs it depends on",
    "JobArrayTaskLimit": "the array's own limit of tasks at once (array_parallelism) is reached",
    "QOSMaxGRESPerUser": "your QOS{qos} allows {gpus} GPUs at once, all of them in use by your running jobs; "
                         "it starts when one of them ends",
    "QOSMaxJobsPerUserLimit": "your QOS allows only so many running jobs at once; it starts when one ends",
    "QOSMaxSubmitJobPerUserLimit": "your QOS allows only so many queued jobs; gridsubmit submits the rest as jobs end",
    "QOSGrpGRES": "the GPUs all users of the QOS may hold at once are in use",
    "QOSGrpCpuLimit": "the CPUs all users of the QOS may hold at once are in use",
    "QOSMaxWallDurationPerJobLimit": "its time limit is over the QOS's maximum: it will never start; lower `time`",
    "AssocGrpGRES": "your account's GPU allowance (shared with its other users) is in use",
    "AssocGrpCpuLimit": "your account's CPU allowance (shared with its other users) is in use",
    "AssocGrpJobsLimit": "your account's limit of running jobs is reached",
    "AssocMaxJobsLimit": "your association's limit of running jobs is reached; it starts when one ends",
    "AssocGrpSubmitJobsLimit": "your account's limit of queued jobs is reached",
    "AssocGrpBillingMinutes": "your account has used its allocation (billing minutes); ask its manager",
    "AssocGrpCPUMinutesLimit": "your account has used its CPU-minutes allocation; ask its manager",
    "ReqNodeNotAvail": "a node it needs is down, drained or reserved: it may never start; see `sinfo`",
    "PartitionDown": "its partition is down: it waits until an administrator brings it back",
    "PartitionInactive": "its partition is inactive: it waits until an administrator brings it back",
    "PartitionTimeLimit": "its time limit is over the partition's maximum: it will never start; lower `time`",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows",
    "JobHeldAdmin": "held by an administrator: it waits until they release it",
    "JobHeldUser": "held by you: `scontrol release JOBID` lets it start",
    "InvalidAccount": "its account is not valid for you: it will never start; fix `account`",
    "InvalidQOS": "its QOS is not valid for you: it will never start; fix `qos`",
    "QOSNotAllowed": "its QOS is not allowed for your account or partition: it will never start; fix `qos`",
    "AccountNotAllowed": "its account may not use this partition: it will never start",
    "Reservation": "waiting for its reservation to begin",
    "Licenses": "waiting for licenses",
    "launch failed requeued held": "its start failed and SLURM held it: `scontrol release JOBID`, or cancel it",
}


def explain(reason: str, gpu_cap: dict | None = None) -> str:
    """``QOSMaxGRESPerUser: your QOS allows 2 GPUs at once, ...``; an unknown code as it is.
    ``gpu_cap`` (``{"gpus": 2, "qos": "normal"}``, the attempt's record of its QOS's cap per
    user) fills in the numbers; without it the sentence names no number."""
    code = reason.strip()
    sentence = REASONS.get(code)
    if sentence is None:
        head = code.split(",")[0].strip()
        sentence = REASONS.get(head)
        if sentence is None:
            return code
    if "{gpus}" in sentence:
        if gpu_cap and gpu_cap.get("gpus") is not None:
            sentence = sentence.format(gpus=gpu_cap["gpus"], qos=f" ({gpu_cap['qos']})" if gpu_cap.get("qos") else "")
        else:
            sentence = "your QOS caps the GPUs you may use at once, and your running jobs use them all; it starts when one ends"
    return f"{code}: {sentence}"
