"""Progress while waiting, one abstraction for every reader.

The runner tells a :class:`Progress` what it saw; the Progress turns that into
:class:`ProgressEvent` objects — ``ended`` (an attempt ended: its cell, attempt, state) and
``summary`` (the cells by state, when they change, at most once a second, and at least
every ``SUMMARY_EVERY_S`` while they do not) — and hands each event to

* the console (the CLI's live line: one rewritten line on a terminal, plain lines
  otherwise), unless ``quiet``;
* ``listener``, a callable given by the caller (``progress=`` of the Python API);
* the ``gridsubmit`` logger, at INFO: silent unless logging is configured
  (``logging.basicConfig(level=logging.INFO)`` in a notebook, ``pytest -o log_cli=true
  --log-cli-level=INFO``).
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO, Union

from .manifest import counts
from .states import JobState

ORDER = [s.value for s in JobState]
COUNT_EVERY_S = 1.0
SUMMARY_EVERY_S = 60.0  # a summary event at least this often while cells run, even when nothing changed
logger = logging.getLogger("gridsubmit")


@dataclass(frozen=True)
class ProgressEvent:
    """One thing a run's reader may want to know.

    ``kind``: ``"ended"`` (``key``, ``attempt`` and ``state`` of the attempt that ended;
    ``returncode``, ``error`` and ``elapsed_s`` as recorded) or ``"summary"`` (``counts``:
    cells by state, and ``total``). ``elapsed``: seconds since the reader started."""

    kind: str
    counts: dict[str, int] = field(default_factory=dict)
    total: int = 0
    key: str | None = None
    attempt: int | None = None
    state: str | None = None
    returncode: int | None = None
    error: str | None = None
    elapsed_s: float | None = None
    elapsed: float = 0.0

    def text(self) -> str:
        if self.kind == "ended":
            detail = "; ".join(p for p in (f"rc {self.returncode}" if self.returncode is not None else "", self.error or "") if p)
            took = f", {self.elapsed_s:.1f} s" if self.elapsed_s is not None else ""
            return f"{self.key}: {self.state} ({detail}{took})"
        return f"{self.total} cells: {format_counts(self.counts)}"


Listener = Callable[[ProgressEvent], object]


def format_counts(c: dict[str, int]) -> str:
    return " · ".join(f"{name} {c[name]}" for name in ORDER if c.get(name))


class Progress:
    def __init__(self, stream: TextIO | None = None, quiet: bool = False, listener: Listener | None = None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.quiet = quiet
        self.listener = listener
        self.start = time.monotonic()
        self._last_line = ""
        self._ended: dict[str, int] = {}
        self._counted_at = -COUNT_EVERY_S
        self._summary: tuple[dict[str, int], int] | None = None
        self._summary_at = -SUMMARY_EVERY_S

    def elapsed(self) -> str:
        s = int(time.monotonic() - self.start)
        return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"

    def _listened(self) -> bool:
        """Is anybody listening? (Nothing is counted for nobody: a 10,000-cell run polls often.)"""
        return not self.quiet or self.listener is not None or logger.isEnabledFor(logging.INFO)

    def seen(self, manifest: dict) -> None:
        """Attempts that had ended before this command: never reported as if they ran now."""
        for cell in manifest["jobs"]:
            if cell["attempts"] and JobState(cell["attempts"][-1]["state"]).terminal:
                self._ended[cell["key"]] = len(cell["attempts"])

    def update(self, manifest: dict, cells: list[dict] | None = None) -> None:
        """Report the attempts that ended and the counts. ``cells``: those that may have
        changed since the last call (None: every cell). The counts of a large grid are
        taken once a second at most while cells are named."""
        if not self._listened():
            return
        for cell in manifest["jobs"] if cells is None else cells:  # one event per newly ended attempt
            n = len(cell["attempts"])
            if n and JobState(cell["attempts"][-1]["state"]).terminal and self._ended.get(cell["key"]) != n:
                self._ended[cell["key"]] = n
                last = cell["attempts"][-1]
                self._emit(ProgressEvent("ended", key=cell["key"], attempt=n, state=last["state"],
                                         returncode=last.get("returncode"), error=last.get("error"),
                                         elapsed_s=last.get("elapsed_s"), total=len(manifest["jobs"]),
                                         elapsed=time.monotonic() - self.start))  # fmt: skip
        now = time.monotonic()
        if cells is not None and now - self._counted_at < COUNT_EVERY_S:
            return
        self._counted_at = now
        c = counts(manifest)
        if (c, len(manifest["jobs"])) != self._summary or now - self._summary_at >= SUMMARY_EVERY_S:
            self._summary, self._summary_at = (c, len(manifest["jobs"])), now
            self._emit(ProgressEvent("summary", counts=dict(c), total=len(manifest["jobs"]), elapsed=now - self.start))
        self._line(f"[{self.elapsed()}] {len(manifest['jobs'])} cells: {format_counts(c)}")

    def _emit(self, event: ProgressEvent) -> None:
        logger.info("%s", event.text())
        if self.listener is not None:
            self.listener(event)
        if not self.quiet and event.kind == "ended":
            self._print(event.text())

    def _line(self, line: str) -> None:
        """The console's counts line: redrawn in place on a terminal, printed on change otherwise."""
        if self.quiet:
            return
        if self.tty and line != self._last_line:  # redraw on change (the clock ticks each second)
            width = shutil.get_terminal_size().columns - 1  # a wrapped line could not be redrawn in place
            self.stream.write("\r\033[K" + line[:width])
            self.stream.flush()
            self._last_line = line
        elif line.split("] ", 1)[1] != self._last_line.split("] ", 1)[-1]:
            self._print(line)
            self._last_line = line

    def note(self, text: str) -> None:
        """Something the user should know now (shown even when quiet, on stderr)."""
        if self.tty and not self.quiet:
            self._print(f"gridsubmit: {text}")
        else:
            print(f"gridsubmit: {text}", file=sys.stderr, flush=True)

    def _print(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        if self.tty and self._last_line:
            self.stream.write(self._last_line)
        self.stream.flush()

    def done(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()


ProgressLike = Union[Progress, Listener, None]


def progress_of(value: ProgressLike) -> Progress:
    """A Progress from what the API's ``progress=`` accepts: a Progress, a callable (called
    with every :class:`ProgressEvent`), or None (events logged to the ``gridsubmit`` logger only)."""
    if isinstance(value, Progress):
        return value
    if value is None:
        return Progress(quiet=True)
    if not callable(value):
        raise TypeError(f"progress: expected a callable or a gridsubmit.progress.Progress, got {type(value).__name__}")
    return Progress(quiet=True, listener=value)
