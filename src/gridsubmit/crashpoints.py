"""Named points where the submitter can be made to die, to prove that nothing runs twice.

``GRIDSUBMIT_CRASH_AT=name`` (or ``name:N``, the N-th time) SIGKILLs the process when it
reaches that point. Unset, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_ENV = "GRIDSUBMIT_CRASH_AT"
_seen: dict[str, int] = {}


def point(name: str) -> None:
    target = os.environ.get(_ENV)
    if not target:
        return
    wanted, _, nth = target.partition(":")
    if wanted != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
