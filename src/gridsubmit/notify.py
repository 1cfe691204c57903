"""Notifications: the cluster profile's ``notify`` command, run once per event.

Events: ``end`` (every cell has ended and none waits for a retry), ``first-failure`` (the first
cell that ended without completing and will not be retried; a cancel is no failure) and
``stuck`` (a job held, or waiting for a reason that never clears by itself). Whichever runner
drives the run sends them: ``submit`` in the foreground, the background runner of a local
``submit --no-wait``, a ``wait`` that re-attached, a ``cancel`` that ended the last cells.

Each event is sent at most once per submission: the runner records it in the manifest's
``notifications`` (and saves) *before* it starts the command, so a runner that re-attaches
never sends it again. The command (an argv, run without a shell) gets a JSON summary on stdin and
``GRIDSUBMIT_EVENT``, ``GRIDSUBMIT_ROOT`` and ``GRIDSUBMIT_RUN_ID`` in its environment. It runs in
a thread beside the runner; what it did (exit code, timed out, could not start) is recorded in the
same entry. One that fails or hangs (killed after ``notify_timeout`` seconds) changes nothing else:
the run goes on, and its outcome and exit status are what they would have been.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from . import ledger
from . import manifest as mf
from .states import JobState

EVENTS = ("end", "first-failure", "stuck")
DEFAULT_TIMEOUT_S = 30.0
LISTED = 50  # cells listed in a summary at most


class Notifier:
    def __init__(self, root: Path, manifest: dict, argv: tuple[str, ...], timeout_s: float, save: Callable[[], None]):
        self.root = Path(root)
        self.manifest = manifest
        self.argv = list(argv)
        self.timeout_s = timeout_s
        self.save = save
        self._threads: list[tuple[dict, threading.Thread, dict]] = []  # (manifest entry, thread, its outcome)

    @property
    def active(self) -> bool:
        return bool(self.argv)

    def _submission(self) -> int | None:
        subs = self.manifest.get("submissions") or []
        return subs[-1].get("n") if subs else None

    def sent(self, event: str) -> bool:
        n = self._submission()
        return any(e.get("event") == event and e.get("submission") == n for e in self.manifest.get("notifications") or [])

    # --- events ------------------------------------------------------------------------------

    def observe(self, observations, cells: dict[str, dict], retry) -> None:
        """After a merge: the first cell that failed for good."""
        if not self.active or self.sent("first-failure"):
            return
        for obs in observations:
            if obs.state.terminal and obs.state not in (JobState.COMPLETED, JobState.CANCELLED):
                cell = cells[obs.key]
                if obs.attempt == len(cell["attempts"]) and not mf.is_due(cell, retry):
                    last = cell["attempts"][-1]
                    self.send("first-failure", {"cell": {"key": cell["key"], "state": cell["state"],
                                                         "error": last.get("error"), "attempt": last.get("attempt")}})  # fmt: skip
                    return

    def stuck(self, stuck: list[tuple[str, dict]]) -> None:
        if self.active and stuck and not self.sent("stuck"):
            self.send("stuck", {"stuck": [{"key": key, "job_id": a.get("job_id"), "reason": a.get("pending_reason")}
                                          for key, a in stuck[:LISTED]]})  # fmt: skip

    def end(self) -> None:
        """Every cell has ended (the caller knows none waits for a retry)."""
        if not self.active or self.sent("end"):
            return
        subs = self.manifest.get("submissions") or []
        if subs and not subs[-1].get("submitted") and not any(
                a.get("submission") == subs[-1].get("n") for c in self.manifest["jobs"] for a in c["attempts"]):
            return  # a submission that ran nothing has no end to tell of
        self.send("end", {})

    # --- sending -----------------------------------------------------------------------------

    def summary(self, event: str, extra: dict) -> dict:
        m = mf.with_results(self.manifest)
        failed = [{"key": c["key"], "state": c["state"], "error": (c["attempts"][-1].get("error") if c["attempts"] else None)}
                  for c in m["jobs"] if c["state"] not in ("COMPLETED", "BLOCKED") and JobState(c["state"]).terminal]  # fmt: skip
        book = ledger.ledger(m)
        return {"event": event, "run_id": m.get("run_id"), "artifact_root": str(self.root),
                "study": (m.get("study") or {}).get("name"), "submission": self._submission(), "at": time.time(),
                "n_jobs": m["n_jobs"], "n_success": m["n_success"], "n_failed": m["n_failed"], "counts": m["counts"],
                "failed": failed[:LISTED], "n_failed_listed": min(len(failed), LISTED),
                "gpu_hours": {"used": book["run"]["gpu_hours"], "wasted": book["run"]["wasted_gpu_hours"],
                              "projected": book["projection"]["gpu_hours"], "cells_to_run": book["projection"]["cells"]},
                **extra}  # fmt: skip

    def send(self, event: str, extra: dict) -> None:
        """Record the event (saved before the command starts: never sent twice), then run the
        command in a thread."""
        entry = {"event": event, "submission": self._submission(), "at": time.time(), "argv": list(self.argv),
                 "state": "running"}  # fmt: skip
        self.manifest.setdefault("notifications", []).append(entry)
        self.save()
        payload = json.dumps(self.summary(event, extra), default=str)
        env = {**os.environ, "GRIDSUBMIT_EVENT": event, "GRIDSUBMIT_ROOT": str(self.root),
               "GRIDSUBMIT_RUN_ID": str(self.manifest.get("run_id"))}  # fmt: skip
        outcome: dict = {}
        thread = threading.Thread(target=_run, args=(self.argv, payload, env, self.timeout_s, outcome), daemon=True,
                                  name=f"notify-{event}")  # fmt: skip
        thread.start()
        self._threads.append((entry, thread, outcome))

    def collect(self, wait: bool = False) -> bool:
        """Record the outcome of the commands that ended (``wait``: of all, each given its
        timeout); True when the manifest changed."""
        changed = False
        for item in list(self._threads):
            entry, thread, outcome = item
            if wait:
                thread.join(self.timeout_s + 5)
            if thread.is_alive():
                continue
            entry.update(outcome)
            self._threads.remove(item)
            changed = True
        return changed


def _run(argv: list[str], payload: str, env: dict, timeout_s: float, outcome: dict) -> None:
    """Run the notifier in its own session; its output goes to a file (a pipe would keep the
    runner waiting for any process the notifier left behind); past the timeout its whole
    process group is killed."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as said:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=said, stderr=said, env=env, text=True,
                                    start_new_session=True)  # fmt: skip
        except OSError as exc:
            outcome.update(state="could not start", error=f"cannot start {argv[0]!r}: {exc.strerror or exc}")
            return
        try:
            proc.communicate(payload, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
            outcome.update(state="timed out", error=f"still running after {timeout_s:g} s (notify_timeout); killed")
        else:
            outcome.update(state="sent" if proc.returncode == 0 else "failed", returncode=proc.returncode)
            if proc.returncode != 0:
                said.seek(0)
                lines = said.read()[-4096:].decode(errors="replace").strip().splitlines()
                outcome["error"] = f"exit {proc.returncode}" + (f": {lines[-1][:300]}" if lines else "")
    outcome["elapsed_s"] = round(time.monotonic() - started, 3)
