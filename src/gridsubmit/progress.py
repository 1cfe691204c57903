"""Live progress while waiting: one rewritten line on a terminal, plain lines otherwise."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

from .manifest import counts
from .states import JobState

ORDER = [s.value for s in JobState]
COUNT_EVERY_S = 1.0


def format_counts(c: dict[str, int]) -> str:
    return " · ".join(f"{name} {c[name]}" for name in ORDER if c.get(name))


class Progress:
    def __init__(self, stream: TextIO | None = None, quiet: bool = False):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.quiet = quiet
        self.start = time.monotonic()
        self._last_line = ""
        self._ended: dict[str, int] = {}
        self._counted_at = -COUNT_EVERY_S

    def elapsed(self) -> str:
        s = int(time.monotonic() - self.start)
        return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"

    def seen(self, manifest: dict) -> None:
        """Attempts that had ended before this command: never printed as if they ran now."""
        for cell in manifest["jobs"]:
            if cell["attempts"] and JobState(cell["attempts"][-1]["state"]).terminal:
                self._ended[cell["key"]] = len(cell["attempts"])

    def update(self, manifest: dict, cells: list[dict] | None = None) -> None:
        """Print the attempts that ended and redraw the counts line. ``cells``: those that
        may have changed since the last call (None: every cell). The counts of a large
        grid are taken once a second at most while cells are named."""
        if self.quiet:
            return
        for cell in manifest["jobs"] if cells is None else cells:  # one line per newly ended attempt
            n = len(cell["attempts"])
            if n and JobState(cell["attempts"][-1]["state"]).terminal and self._ended.get(cell["key"]) != n:
                self._ended[cell["key"]] = n
                last = cell["attempts"][-1]
                rc = last.get("returncode")
                detail = "; ".join(part for part in (f"rc {rc}" if rc is not None else "", last.get("error") or "") if part)
                elapsed = f", {last['elapsed_s']:.1f} s" if last.get("elapsed_s") is not None else ""
                self._print(f"{cell['key']}: {last['state']} ({detail}{elapsed})")
        now = time.monotonic()
        if cells is not None and now - self._counted_at < COUNT_EVERY_S:
            return
        self._counted_at = now
        line = f"[{self.elapsed()}] {len(manifest['jobs'])} cells: {format_counts(counts(manifest))}"
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
