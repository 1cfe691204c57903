"""The batch script of a SLURM job: submitit writes it, gridsubmit says what goes in.

The one place where profile values enter a job script (directives, the exports of the
captured environment and the profile's env, the setup lines, the node task's command line).
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import submitit

from .. import context as ctx
from ..cluster import ClusterProfile, Resources


class NodeTaskExecutor(submitit.SlurmExecutor):
    """submitit's SLURM executor whose jobs run gridsubmit's node task (stdlib only) on the
    cells' JSON spec: ``cells`` is a folder of one file per array index, or one file."""

    def __init__(self, folder: Path, python: str | None, cells: Path):
        super().__init__(folder=folder, python=python)
        self.cells = cells

    @property
    def _submitit_command_str(self) -> str:
        return f"{self.python} -m gridsubmit.task {shlex.quote(str(self.cells))}"


def executor_for(p: ClusterProfile, folder: Path, res: Resources, name: str, cells: Path,
                 captured: dict[str, str]) -> submitit.SlurmExecutor:
    """The executor (and so the batch script) of one array: every value that enters the script
    was refused at parse time if it held a control character (cluster.py), and is quoted here."""
    # the interpreter goes into the script as it is: quote it (a path may hold spaces)
    executor = NodeTaskExecutor(folder, shlex.quote(p.python) if p.python else None, cells)
    params: dict = {"job_name": name, "time": max(1, math.ceil(res.time_s / 60)), "use_srun": p.use_srun,
                    "stderr_to_stdout": False, "signal_delay_s": 0}  # fmt: skip
    for key in ("partition", "cpus_per_task", "account", "qos", "constraint"):
        if getattr(res, key) is not None:
            params[key] = getattr(res, key)
    if res.mem_mb:
        params["mem"] = f"{res.mem_mb}M"
    # gridsubmit owns every retry: a job SLURM requeued after a node failure would run
    # the cell again beside the new attempt
    extra = {"no-requeue": True, **p.sbatch_extra}
    if res.gpus_per_job:
        count = f"{res.gpu_type}:{res.gpus_per_job}" if res.gpu_type else str(res.gpus_per_job)
        if p.gpu_request == "gres":
            params["gres"] = f"gpu:{count}"
        elif p.gpu_request == "gpus-per-node":
            params["gpus_per_node"] = count
        else:
            extra["gpus"] = count
    if p.warn_signal:  # a warning before the limit, forwarded to the command
        extra["signal"] = p.warn_signal
    if p.array_parallelism:
        params["array_parallelism"] = p.array_parallelism
    plain, _ = ctx.split_secrets(captured)
    exports = [f"export {k}={shlex.quote(str(v))}" for k, v in {**plain, **p.env}.items()]
    if exports or p.setup:
        params["setup"] = [*exports, *p.setup]
    if extra:
        params["additional_parameters"] = extra
    executor.update_parameters(**params)
    return executor
