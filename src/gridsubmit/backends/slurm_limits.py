"""What a SLURM site lets one user queue, and how sbatch's refusals are told apart.

Read once per run: the submit limits of the user's association and of the QOS the run's jobs
use (``sacctmgr``), the GPU cap per user of that QOS, and the user's jobs already queued that
count against those limits (``squeue -u``). The run's queue cap is the smaller of the
profile's ``max_queued`` and what the site leaves. Parsing and the arithmetic are pure;
:func:`lookup` runs the three commands.

sbatch's failures fall in three kinds: a limit (the queue is full for this user: wait for
jobs to end), a transient failure of the controller (try again, after a bounded backoff with
jitter), and the rest (a bad partition, an invalid account: a user's error, reported).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

# sbatch retries after a transient failure: tries in all, the first pause, the longest pause
SUBMIT_TRIES = 5
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0

# sbatch's words for a submit limit reached (the reasons SLURM names, then its general message)
LIMIT_REASONS = ("MaxSubmitJob", "GrpSubmitJob", "SubmitJobsLimit", "SubmitJobLimit")
LIMIT_POLICY = "Job violates accounting/QOS policy"
# the controller is busy or away for a moment
TRANSIENT = ("Socket timed out on send/recv operation", "Resource temporarily unavailable",
             "Unable to contact slurm controller", "Zero Bytes were transmitted or received",
             "Slurm temporarily unable to accept job", "Connection refused", "Connection timed out")  # fmt: skip


def sbatch_failure(message: str) -> str | None:
    """``"limit"`` (a submit limit is reached: waiting for jobs to end makes room; ``"policy"``
    when sbatch names no submit limit but the general policy message, which other limits give
    too), ``"transient"`` (ask again), or None (anything else: not asked again)."""
    if any(word in message for word in LIMIT_REASONS):
        return "limit"
    if LIMIT_POLICY in message:
        return "policy"
    if any(word.lower() in message.lower() for word in TRANSIENT):
        return "transient"
    return None


def backoff_s(retry: int, rng: Callable[[], float] = random.random) -> float:
    """The pause before retry number ``retry`` (0 is the first): 1 s doubling up to 30 s, each
    drawn between half of it and all of it, so submitters that failed together do not come
    back together."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**retry)
    return ceiling * (0.5 + 0.5 * rng())


@dataclass(frozen=True)
class SubmitLimit:
    """A cap on the jobs one user may have queued or running (array tasks count one each)."""

    name: str  # as sacctmgr names it: MaxSubmitJobsPerUser, MaxSubmitJobs
    value: int
    where: str  # "QOS normal", "association root/root"
    others: int | None  # the user's jobs outside this run that count against it (None: unknown)

    @property
    def left(self) -> int:
        return self.value - (self.others or 0)


@dataclass
class SiteLimits:
    submit: list[SubmitLimit] = field(default_factory=list)
    max_jobs: list[tuple[str, int, str]] = field(default_factory=list)  # (name, value, where): running at once
    gpus: list[tuple[int, str]] = field(default_factory=list)  # (GPUs per user at once, where)
    problems: list[str] = field(default_factory=list)  # lookups that failed
    looked_at: str = ""  # "association root/root, QOS normal"
    default_qos: str | None = None  # the QOS of jobs that ask for none

    def gpu_cap(self) -> tuple[int, str] | None:
        return min(self.gpus) if self.gpus else None

    def cap(self, profile_cap: int) -> tuple[int, SubmitLimit | None]:
        """The run's queue cap: the profile's, or what the tightest submit limit leaves once
        the user's other jobs are counted, whichever is smaller, and that limit (None: the
        profile's). Never below 1: a site that leaves nothing now refuses one job, and the
        run waits for room (see the SLURM backend's refusals)."""
        best, why = profile_cap, None
        for limit in self.submit:
            left = max(1, limit.left)
            if left < best:
                best, why = left, limit
        return best, why

    def describe(self, profile_cap: int) -> list[str]:
        """What was found, in lines for the user."""
        cap, why = self.cap(profile_cap)
        lines = []
        if why is not None:
            mine = ("jobs of yours not known: squeue failed" if why.others is None else
                    f"{why.others} job{'s' if why.others != 1 else ''} of yours queued")  # fmt: skip
            lines.append(f"site limits: {why.name} {why.value} ({why.where}), {mine}: "
                         f"at most {cap} of this run's at once (max_queued {profile_cap} in the profile)")  # fmt: skip
        elif self.submit:
            tight = min(self.submit, key=lambda s: s.left)
            lines.append(f"site limits: {tight.name} {tight.value} ({tight.where}), {tight.others or 0} job(s) of yours "
                         f"queued: max_queued {profile_cap} from the profile is within it")  # fmt: skip
        elif not self.problems:
            lines.append(f"site limits: no submit limit for you ({self.looked_at or 'nothing found'}): "
                         f"max_queued {profile_cap} from the profile")  # fmt: skip
        for name, value, where in self.max_jobs:
            lines.append(f"site limits: {name} {value} ({where}): at most {value} of your jobs run at once, "
                         "the others wait in the queue")  # fmt: skip
        for value, where in self.gpus:
            lines.append(f"site limits: MaxTRESPerUser gres/gpu={value} ({where}): at most {value} GPU(s) of yours "
                         "in use at once; jobs beyond wait as QOSMaxGRESPerUser")  # fmt: skip
        for problem in self.problems:
            lines.append(f"site limits: not read ({problem}); max_queued {profile_cap} from the profile stands")
        return lines


# --- parsing (pure) -----------------------------------------------------------------------------

ASSOC_FORMAT = "User,DefaultAccount,Account,Partition,MaxSubmitJobs,MaxJobs,QOS,DefaultQOS"
QOS_FORMAT = "Name,MaxSubmitJobsPerUser,MaxJobsPerUser,MaxTRESPerUser"
SQUEUE_FORMAT = "%i|%j|%q|%a|%P"


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def gpus_of(tres: str) -> int | None:
    """``cpu=4,gres/gpu=2`` -> 2; ``gres/gpu:a100=1`` counts too; None without a GPU term."""
    total = None
    for part in tres.split(","):
        name, _, value = part.strip().partition("=")
        if (name == "gres/gpu" or name.startswith("gres/gpu:")) and value.strip().isdigit():
            total = (total or 0) + int(value)
    return total


def parse_assoc(text: str, account: str | None) -> dict | None:
    """Rows of ``sacctmgr -n -P show user U withassoc format=ASSOC_FORMAT``: the user's
    association for ``account`` (else the user's default account), the one without a
    partition first. None when the user has none there."""
    rows = [line.split("|") for line in text.splitlines() if line.count("|") >= 7]
    if not rows:
        return None
    want = account or rows[0][1]
    mine = [r for r in rows if r[2] == want]
    if not mine:
        return None
    r = sorted(mine, key=lambda r: bool(r[3]))[0]
    return {"user": r[0], "account": r[2], "partition": r[3], "max_submit": _int(r[4]), "max_jobs": _int(r[5]),
            "qos": [q for q in r[6].split(",") if q], "default_qos": r[7] or None}  # fmt: skip


def parse_qos(text: str) -> dict[str, dict]:
    """Rows of ``sacctmgr -n -P show qos format=QOS_FORMAT`` by name."""
    out = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 4 or not parts[0]:
            continue
        out[parts[0]] = {"max_submit_pu": _int(parts[1]), "max_jobs_pu": _int(parts[2]), "gpus_pu": gpus_of(parts[3])}
    return out


def parse_queue(text: str, own_prefix: str) -> list[dict]:
    """Rows of ``squeue -u U -h -r -o SQUEUE_FORMAT``, the jobs of this run (names starting
    with ``own_prefix``) left out."""
    jobs = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 5 or parts[1].startswith(own_prefix):
            continue
        jobs.append({"job_id": parts[0], "qos": parts[2], "account": parts[3], "partition": parts[4]})
    return jobs


def site_limits(assoc: dict | None, qos: dict[str, dict], run_qos: list[str], queue: list[dict] | None) -> SiteLimits:
    """The limits that bind the run's jobs: the association's, and those of each QOS the run
    uses; ``queue`` (None: not known) gives the user's other jobs each one counts."""
    limits = SiteLimits()
    where_assoc = f"association {assoc['account']}/{assoc['user']}" if assoc else ""
    limits.looked_at = ", ".join(filter(None, [where_assoc, *(f"QOS {q}" for q in run_qos)]))
    limits.default_qos = (assoc or {}).get("default_qos") or "normal"

    def count(match) -> int | None:
        return None if queue is None else sum(1 for job in queue if match(job))

    if assoc:
        if assoc["max_submit"] is not None:
            in_assoc = count(lambda j: j["account"] == assoc["account"]
                             and (not assoc["partition"] or assoc["partition"] in j["partition"].split(",")))  # fmt: skip
            limits.submit.append(SubmitLimit("MaxSubmitJobs", assoc["max_submit"], where_assoc, in_assoc))
        if assoc["max_jobs"] is not None:
            limits.max_jobs.append(("MaxJobs", assoc["max_jobs"], where_assoc))
    for name in run_qos:
        q = qos.get(name)
        if q is None:
            continue
        if q["max_submit_pu"] is not None:
            limits.submit.append(SubmitLimit("MaxSubmitJobsPerUser", q["max_submit_pu"], f"QOS {name}",
                                             count(lambda j, name=name: j["qos"] == name)))  # fmt: skip
        if q["max_jobs_pu"] is not None:
            limits.max_jobs.append(("MaxJobsPerUser", q["max_jobs_pu"], f"QOS {name}"))
        if q["gpus_pu"] is not None:
            limits.gpus.append((q["gpus_pu"], f"QOS {name}"))
    return limits


def run_qos(assoc: dict | None, asked: list[str | None]) -> list[str]:
    """The QOS the run's jobs use: those the profile asks for, and for jobs that ask for none,
    the association's default (SLURM's ``normal`` when it has none)."""
    default = (assoc or {}).get("default_qos") or "normal"
    return sorted({q or default for q in asked} or {default})


def lookup(run: Callable[[list[str]], str], user: str, account: str | None, asked_qos: list[str | None],
           own_prefix: str) -> SiteLimits:  # fmt: skip
    """The site's limits for ``user``'s jobs of this run. ``run`` runs a command and returns
    its stdout, raising on failure; a failed lookup is recorded in ``problems``, not raised."""
    problems = []
    try:
        assoc = parse_assoc(run(["sacctmgr", "-n", "-P", "show", "user", user, "withassoc", f"format={ASSOC_FORMAT}"]),
                            account)  # fmt: skip
    except Exception as exc:  # a site without accounting, a controller away
        assoc = None
        problems.append(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    names = run_qos(assoc, asked_qos)
    qos: dict[str, dict] = {}
    if not problems:
        try:
            qos = parse_qos(run(["sacctmgr", "-n", "-P", "show", "qos", "where", f"name={','.join(names)}",
                                 f"format={QOS_FORMAT}"]))  # fmt: skip
        except Exception as exc:
            problems.append(str(exc).strip().splitlines()[0])
    queue = None
    if not problems:
        try:
            queue = parse_queue(run(["squeue", "-u", user, "-h", "-r", "-o", SQUEUE_FORMAT]), own_prefix)
        except Exception:  # the limits stand; the user's other jobs are not known
            queue = None
    limits = site_limits(assoc, qos, names, queue)
    limits.problems = problems
    return limits
