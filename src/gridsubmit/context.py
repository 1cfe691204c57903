"""Where and with what environment a run's cells execute, captured once at its first submit.

Every later attempt (a retry, ``wait`` from another shell, ``submit --rerun-failed`` from
another directory) runs in the same working directory with the same captured variables,
whoever drives it. The manifest records them with the values of secret-looking names
redacted; the full values live in ``.gridsubmit/environment.json`` (mode 0600).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from .fileio import write_json_atomic

# What a cell needs from the submitting shell to find its interpreter and its code.
CAPTURED = ("PATH", "PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV")
SECRET = re.compile(r"SECRET|TOKEN|PASS|CREDENTIAL|AUTH|COOKIE|SESSION|(?:^|_)KEY(?:$|_)|APIKEY|_PWD$", re.I)
REDACTED = "<redacted>"
ENV_FILE = "environment.json"


@dataclass(frozen=True)
class RunContext:
    workdir: Path
    env: Mapping[str, str] = field(default_factory=dict)  # captured values, unredacted
    host: str = ""
    user: str = ""
    captured_at: float = 0.0

    def as_manifest(self) -> dict:
        return {"workdir": str(self.workdir), "env": redact(self.env), "host": self.host, "user": self.user,
                "captured_at": self.captured_at}  # fmt: skip


def capture(workdir: str | Path, names: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> RunContext:
    """The working directory and the variables to carry: CAPTURED plus ``names``, those set."""
    environ = os.environ if environ is None else environ
    wanted = dict.fromkeys([*CAPTURED, *names])
    env = {name: environ[name] for name in wanted if name in environ}
    return RunContext(Path(workdir).resolve(), env, socket.gethostname(), user(), time.time())


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def split_secrets(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(the variables that may be written where others can read them, the names of the
    secret-looking ones, whose values never leave the 0600 environment file)."""
    return {k: v for k, v in env.items() if not SECRET.search(k)}, sorted(k for k in env if SECRET.search(k))


def redact(env: Mapping[str, str]) -> dict[str, str]:
    return {k: (REDACTED if SECRET.search(k) else v) for k, v in env.items()}


def save(state_dir: Path, context: RunContext) -> None:
    """The unredacted values, readable by their owner only."""
    state_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(state_dir / ENV_FILE, dict(context.env), mode=0o600)


def load(state_dir: Path, recorded: Mapping) -> RunContext:
    """The context a manifest recorded, with redacted values restored from the state file
    (left out when that file is gone)."""
    env = dict(recorded.get("env") or {})
    try:
        env.update(json.loads((state_dir / ENV_FILE).read_text()))
    except (OSError, ValueError):
        pass
    lost = sorted(k for k, v in env.items() if v == REDACTED)
    if lost:  # another user, or a copied run: say so rather than run without them
        print(f"gridsubmit: warning: cannot read {state_dir / ENV_FILE}; the cells run without "
              f"{', '.join(lost)}", file=sys.stderr)  # fmt: skip
    env = {k: v for k, v in env.items() if v != REDACTED}
    return RunContext(Path(recorded["workdir"]), env, recorded.get("host", ""), recorded.get("user", ""),
                      recorded.get("captured_at", 0.0))  # fmt: skip
