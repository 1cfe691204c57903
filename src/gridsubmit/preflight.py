"""Can the cells' command start? Checked before anything is submitted.

The interpreter (or program) must exist, a ``-m pkg.module`` must be importable by that
interpreter from the working directory with the captured environment, and a script path
must exist. Each problem is one line that names the working directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Mapping, Sequence

_FIND_SPEC = """
import importlib.util, sys
try:
    found = importlib.util.find_spec(sys.argv[1]) is not None
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
    found = False
sys.exit(0 if found else 1)
"""


def check_commands(argvs: Iterable[Sequence[str]], workdir: Path, env: Mapping[str, str]) -> list[str]:
    """Problems with the distinct command prefixes among ``argvs`` (each checked once)."""
    problems: list[str] = []
    seen: set[tuple[str, ...]] = set()
    for argv in argvs:
        prefix = tuple(argv[:3])
        if prefix and prefix not in seen:
            seen.add(prefix)
            problems += [p for p in check_command(argv, workdir, env) if p not in problems]
    return problems


def check_command(argv: Sequence[str], workdir: Path, env: Mapping[str, str]) -> list[str]:
    if not workdir.is_dir():
        return [f"working directory {workdir} does not exist"]
    full_env = {**os.environ, **env}
    program = argv[0]
    if "/" in program:
        path = program if os.path.isabs(program) else str(workdir / program)
        found = path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    else:
        found = shutil.which(program, path=full_env.get("PATH"))
    if found is None:
        return [f"{program!r} is not an executable program (looked up from {workdir} with the captured PATH)"]
    if not Path(program).name.startswith("python") or len(argv) < 2:
        return []
    if argv[1] == "-m" and len(argv) > 2:
        return _check_module(found, argv[2], workdir, full_env)
    if not argv[1].startswith("-"):
        script = Path(argv[1]) if os.path.isabs(argv[1]) else workdir / argv[1]
        if not script.is_file():
            return [f"script {argv[1]!r} not found (relative paths are taken from the working directory {workdir})"]
    return []


def _check_module(python: str, module: str, workdir: Path, env: Mapping[str, str]) -> list[str]:
    try:
        proc = subprocess.run([python, "-c", _FIND_SPEC, module], cwd=workdir, env=dict(env), capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"could not ask {python} whether it can import {module!r}: {exc}"]
    if proc.returncode == 0:
        return []
    why = (proc.stdout or proc.stderr).strip().splitlines()
    pythonpath = env.get("PYTHONPATH")
    return [f"`{Path(python).name} -m {module}` cannot start from the working directory {workdir}"
            f"{' (' + why[-1] + ')' if why else ''}; PYTHONPATH is {pythonpath!r}. Run gridsubmit from the "
            f"repository that holds it, set `workdir` in the study, or put it on PYTHONPATH"]  # fmt: skip
