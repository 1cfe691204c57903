"""The house's layering, as docs/design.md draws it: a module imports only from layers below
its own, and the node task only the standard library (and its own fileio and envprobe) (it starts once per job)."""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "gridsubmit"

# Lowest first. A module may import modules of lower layers only (and, within backends/, the
# base). Kept in step with the table in docs/design.md.
LAYERS = [
    {"errors", "fileio", "states", "jobs", "crashpoints", "metrics", "provenance", "preflight", "pending",
     "envprobe", "codehash", "comparability", "backends.slurm_limits"},  # pure, or stdlib edges
    {"task", "yamlio", "context", "runlock", "ledger", "decision"},  # the node task; files and processes; GPU-hours
    {"study", "cluster"},  # YAML -> Grid of cells / ClusterProfile
    {"freshness", "gpus", "knobs", "demo.generate", "demo.compare"},  # the one judgement of stale cells
    {"manifest"},  # build, merge, load, save
    {"progress", "notify", "reuse", "clean", "backends.base"},
    {"report", "backends.slurm_commands", "backends.slurm_script"},  # report: read-only views of a manifest
    {"compare", "diff", "runs", "backends.local", "backends.slurm_ghosts", "backends.slurm_status",
     "backends.slurm_cancel"},
    {"backends.slurm_accounting", "backends.slurm_waves", "backends.slurm_submission"},  # SLURM's parts
    {"backends.slurm"},  # their composition
    {"runner", "report_defend"},  # the loop
    {"api", "report_html"},  # the public Python API; the page
    {"cli", "pytest_plugin"},  # thin clients of api
    {"__main__"},
]
LAYER = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def imports(path: Path) -> set[str]:
    """The gridsubmit modules a file imports (relative imports resolved)."""
    parts = path.relative_to(SRC).with_suffix("").parts
    package = list(parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            if node.module is None:
                found |= {f"{target}.{a.name}".strip(".") for a in node.names}
            else:
                found.add(target)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("gridsubmit.") for a in node.names if a.name.startswith("gridsubmit.")}
    return {name for name in found if name in LAYER}


def test_every_module_imports_only_from_the_layers_below_its_own():
    modules = {".".join(p.relative_to(SRC).with_suffix("").parts): p for p in SRC.rglob("*.py")
               if p.name != "__init__.py"}  # fmt: skip
    unplaced = sorted(set(modules) - set(LAYER))
    assert not unplaced, f"modules not placed in a layer (add them here and in docs/design.md): {unplaced}"
    upward = [f"{name} (layer {LAYER[name]}) imports {dep} (layer {LAYER[dep]})"
              for name, path in modules.items() for dep in sorted(imports(path))
              if LAYER[dep] >= LAYER[name] and not (name.startswith("backends.") and dep == "backends.base")]  # fmt: skip
    assert not upward, "\n".join(upward)


def test_the_node_task_imports_nothing_but_the_standard_library():
    code = ("import sys; before = set(sys.modules); import gridsubmit.task; "
            "print('\\n'.join(sorted(set(sys.modules) - before)))")  # fmt: skip
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    ours = {name for name in loaded if name.startswith("gridsubmit")}
    assert ours <= {"gridsubmit", "gridsubmit.task", "gridsubmit.fileio", "gridsubmit.envprobe"}, ours
    stdlib = set(sys.stdlib_module_names)
    foreign = sorted(name for name in loaded if name.split(".")[0] not in stdlib and not name.startswith("gridsubmit"))
    assert not foreign, foreign


def test_the_cli_reaches_runs_only_through_the_public_api():
    """The CLI prints what the API and the read-only views give it: it never loads or
    changes a manifest, drives a runner or asks a backend itself."""
    internals = {"manifest", "runner", "freshness", "provenance", "runlock", "fileio", "task", "context"}
    internals |= {name for name in LAYER if name.startswith("backends.")}
    assert not imports(SRC / "cli.py") & internals, imports(SRC / "cli.py") & internals
