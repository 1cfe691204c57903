"""The code a cell ran, as one more input: the command's script and the study's ``code_paths``.

Recorded per attempt when it is submitted (``code`` in the attempt):

- ``script``: the file the command runs, with its sha256 (16 hex digits): the file after
  ``{python}`` (relative to the working directory), or the module file of ``{python} -m pkg.mod``
  as the command's interpreter finds it from the working directory with the run's captured
  environment (a namespace package without ``__init__.py`` included). None when the command is
  not a Python interpreter or the file cannot be found.
- ``paths``: the study's ``code_paths`` globs (relative to the working directory) hashed as one
  tree: ``{"globs", "sha256", "files"}``. The tree's listing (relative path -> sha256) is kept
  once per distinct tree in the manifest's ``code_trees``, so a change names its files.

A git commit is not code: a commit that leaves these files as they were changes nothing here
(the submission still records the commit and whether the tree was dirty).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Mapping

SHOWN = 5  # changed files named in the reasons, then "and N more"

_FIND_ORIGIN = """
import importlib.util, sys
spec = importlib.util.find_spec(sys.argv[1])
print(spec.origin if spec is not None and spec.origin else "")
"""


def digest(path: str | Path, seen: dict) -> str | None:
    """sha256 (16 hex digits) of a file, each (path, size, mtime) read once per process."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in seen:
        h = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
        except OSError:
            return None
        seen[key] = h.hexdigest()[:16]
    return seen[key]


def _shown(path: Path, workdir: str) -> str:
    try:
        return str(path.relative_to(workdir))
    except ValueError:
        return str(path)


def tree(workdir: str, globs: list[str], seen: dict) -> tuple[str, dict[str, str]]:
    """(digest of the tree, relative path -> sha256) of the files the globs match in ``workdir``."""
    base = Path(workdir)
    files: set[Path] = set()
    for pattern in globs:
        files.update(p for p in base.glob(pattern) if p.is_file() and "__pycache__" not in p.parts)
    listing = {_shown(p, workdir): digest(p, seen) or "unreadable" for p in sorted(files)}
    return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()[:16], listing


class Recorder:
    """What each new attempt's code is, for the runner: modules resolved and files read once."""

    def __init__(self, workdir: str, env: Mapping[str, str], code_paths: list[str]):
        self.workdir = str(workdir)
        self.env = {**os.environ, **env}
        self.code_paths = list(code_paths)
        self.seen: dict = {}
        self._modules: dict[tuple, str | None] = {}
        self._tree: tuple[str, dict] | None = None  # taken once per round of submissions

    def new_round(self) -> None:
        self._tree = None

    def script(self, argv: list[str]) -> Path | None:
        if len(argv) < 2 or not os.path.basename(argv[0]).startswith("python"):
            return None
        if argv[1] == "-m" and len(argv) > 2:
            key = (argv[0], argv[2])
            if key not in self._modules:
                self._modules[key] = self._module_file(argv[0], argv[2])
            found = self._modules[key]
            return Path(found) if found else None
        if argv[1].startswith("-"):
            return None
        path = Path(argv[1])
        return path if path.is_absolute() else Path(self.workdir) / path

    def _module_file(self, python: str, module: str) -> str | None:
        try:
            proc = subprocess.run([python, "-c", _FIND_ORIGIN, module], cwd=self.workdir, env=self.env, capture_output=True,
                                  text=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return None
        origin = proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else ""
        return origin if origin and os.path.isfile(origin) else None

    def record(self, argv: list[str], trees: dict) -> dict | None:
        """The attempt's ``code`` (None when there is neither a script nor ``code_paths``); the
        tree's listing is added to ``trees`` (the manifest's ``code_trees``)."""
        out: dict = {}
        script = self.script(argv)
        if script is not None:
            out["script"] = {"path": _shown(script, self.workdir), "sha256": digest(script, self.seen)}
        if self.code_paths:
            if self._tree is None:
                self._tree = tree(self.workdir, self.code_paths, self.seen)
            sha, listing = self._tree
            trees.setdefault(sha, listing)
            out["paths"] = {"globs": list(self.code_paths), "sha256": sha, "files": len(listing)}
        return out or None


class Now:
    """The code as it is on disk now, to judge recorded attempts against (freshness)."""

    def __init__(self, workdir: str, code_paths: list[str], trees: Mapping[str, dict] | None = None):
        self.workdir = str(workdir)
        self.code_paths = list(code_paths)
        self.trees = trees or {}
        self.seen: dict = {}
        self._tree: tuple[str, dict] | None = None

    @classmethod
    def of(cls, manifest: dict, study: dict | None = None) -> "Now":
        study = study if study is not None else manifest.get("study") or {}
        workdir = (manifest.get("context") or {}).get("workdir") or ""
        return cls(workdir, study.get("code_paths") or [], manifest.get("code_trees") or {})

    def changes(self, recorded: Mapping | None, argv_was: list, argv_now: list) -> list[str]:
        """Why the code ``recorded`` by an attempt differs from the files now; [] when it does not."""
        if not isinstance(recorded, Mapping):
            return []  # recorded before code was: judged by the rest
        why = []
        script = recorded.get("script")
        if script and list(argv_was or [])[:3] == list(argv_now or [])[:3]:  # another command shows as a command change
            path = Path(script["path"])
            path = path if path.is_absolute() else Path(self.workdir) / path
            now = digest(path, self.seen)
            if now is None:
                why.append(f"code: {script['path']} is gone")
            elif now != script.get("sha256"):
                why.append(f"code: {script['path']} changed")
        paths = recorded.get("paths")
        if paths and self.code_paths:
            if list(paths.get("globs") or []) != self.code_paths:
                why.append(f"code_paths: {paths.get('globs')} -> {self.code_paths}")
            else:
                if self._tree is None:
                    self._tree = tree(self.workdir, self.code_paths, self.seen)
                sha, listing = self._tree
                if sha != paths.get("sha256"):
                    why += self._tree_changes(self.trees.get(paths.get("sha256")), listing, paths)
        return why

    def _tree_changes(self, was: Mapping | None, now: dict, paths: Mapping) -> list[str]:
        if not isinstance(was, Mapping):
            return [f"code: files matching {', '.join(paths.get('globs') or [])} changed"]
        named = [f"code: {p} changed" for p in sorted(set(was) & set(now)) if was[p] != now[p]]
        named += [f"code: {p} added" for p in sorted(set(now) - set(was))]
        named += [f"code: {p} removed" for p in sorted(set(was) - set(now))]
        if len(named) > SHOWN:
            named = named[:SHOWN] + [f"code: and {len(named) - SHOWN} more file(s) under {', '.join(paths.get('globs') or [])}"]
        return named
