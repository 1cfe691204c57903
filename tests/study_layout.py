"""The fly64 dose/overlap study, as a test stand-in: its artifact tree and its repository.

``build_study_tree`` lays out Phase C/E/F artifacts the way the study's own test fixture does;
``make_study_repo`` copies ``tests/studyrepo`` (``scripts/compare_models.py`` without a
``scripts/__init__.py``, and ``studies/fly64_dose_overlap/comparison.py``) to a fresh folder.

The stand-in script imports ``ptycho_helpers`` from ``STUDYLIB``, which is found through
PYTHONPATH only. Each run appends a line to ``<output_dir>/runs.log`` (see ``read_runs``);
a run exits 1 when ``FAIL_FILE`` in its working directory lists its cell
(``dose_{dose}/{view}/{split}``, the last three parts of ``--output_dir``).
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
STUDYREPO = HERE / "studyrepo"
STUDYLIB = HERE / "studylib"
FAIL_FILE = "fail_cells.txt"

VIEWS = ("dense", "sparse")
SPLITS = ("train", "test")
PATTERNS = {"dense": 16, "sparse": 8}
SIZE = 8


def _test_data(path: Path, dose: int, n: int, seed: int) -> None:
    """A small test-data NPZ: ``n`` diffraction patterns of ``dose`` counts each, plus coords."""
    rng = np.random.default_rng(seed)
    patterns = rng.uniform(0.5, 1.5, size=(n, SIZE, SIZE))
    patterns *= dose / patterns.sum(axis=(1, 2), keepdims=True)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    obj = (1 + 0.2 * np.cos(2 * np.pi * x)) * np.exp(1j * 0.3 * np.sin(2 * np.pi * y))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, diffraction=patterns.astype(np.float32),
             xcoords=np.arange(n, dtype=np.float64), ycoords=np.arange(n, dtype=np.float64),
             objectGuess=obj.astype(np.complex64), probeGuess=np.ones((SIZE, SIZE), np.complex64))


def _checkpoint(path: Path, **info) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("diffraction_to_obj/params.json", json.dumps(info))


def build_study_tree(root: Path, doses=(500, 1000, 2000)) -> dict:
    """Build the study's Phase C/E/F artifact tree under ``root``; return the three roots.

    phase_c/dose_{d}/patched_{split}.npz, phase_c/dose_{d}/{view}/{view}_{split}.npz,
    phase_e/dose_{d}/baseline/gs1/wts.h5.zip, phase_e/dose_{d}/{view}/gs2/wts.h5.zip,
    phase_f/dose_{d}_{view}_{split}/manifest.json (``output_dir`` absolute) and
    phase_f/dose_{d}_{view}_{split}/dose_{d}/{view}/{split}/ptychi_reconstruction.npz.
    """
    root = Path(root).resolve()
    phase_c, phase_e, phase_f = root / "phase_c", root / "phase_e", root / "phase_f"
    for i, dose in enumerate(doses):
        dose = int(dose)
        for j, split in enumerate(SPLITS):
            seed = 1000 * i + 10 * j
            _test_data(phase_c / f"dose_{dose}" / f"patched_{split}.npz", dose, PATTERNS["dense"], seed)
            for k, view in enumerate(VIEWS):
                _test_data(phase_c / f"dose_{dose}" / view / f"{view}_{split}.npz", dose, PATTERNS[view], seed + k)
        _checkpoint(phase_e / f"dose_{dose}" / "baseline" / "gs1" / "wts.h5.zip", dose=dose, model="baseline", gridsize=1)
        for view in VIEWS:
            _checkpoint(phase_e / f"dose_{dose}" / view / "gs2" / "wts.h5.zip", dose=dose, model="pinn", view=view, gridsize=2)
            for split in SPLITS:
                job_dir = phase_f / f"dose_{dose}_{view}_{split}"
                out = job_dir / f"dose_{dose}" / view / split
                out.mkdir(parents=True, exist_ok=True)
                y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
                recon = (1 + 0.1 * x) * np.exp(1j * 0.2 * y)
                np.savez(out / "ptychi_reconstruction.npz", reconstructed_object=recon.astype(np.complex64),
                         algorithm=np.array("LSQML"),
                         metadata=np.array({"algorithm": "LSQML", "computation_time_seconds": 1.5}, dtype=object))
                manifest = {"dose": dose, "view": view, "split": split, "output_dir": str(out)}
                (job_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return {"phase_c": phase_c, "phase_e": phase_e, "phase_f": phase_f}


def make_study_repo(dest: Path) -> Path:
    """Copy the stand-in study repository to ``dest`` (one per test) and return it."""
    dest = Path(dest)
    shutil.copytree(STUDYREPO, dest, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    return dest


def studylib_env(base: dict | None = None, **extra: str) -> dict:
    """An environment whose PYTHONPATH is exactly ``STUDYLIB`` (plus ``extra`` variables)."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = str(STUDYLIB)
    env.update(extra)
    return env


def read_runs(output_dir: Path) -> list[dict]:
    """The runs the stand-in logged in ``output_dir``: time, pid, cwd, cuda (str), argv (list)."""
    log = Path(output_dir) / "runs.log"
    if not log.exists():
        return []
    runs = []
    for line in log.read_text().splitlines():
        t, pid, cwd, cuda, argv = line.split("\t", 4)
        runs.append({"time": float(t), "pid": int(pid), "cwd": cwd, "cuda": cuda, "argv": json.loads(argv)})
    return runs
