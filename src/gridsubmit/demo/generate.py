"""Write a small synthetic study tree in the fly64 layout (a few hundred KB in all).

Each dose gets Poisson-noisy measurements of one synthetic object, so every metric moves
with dose; checkpoints are placeholder files, as the reference comparison never loads them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import yaml

DOSES = (1000, 10000, 100000)
VIEWS = ("dense", "sparse")
SPLITS = ("train", "test")
SIZE = 48


def ground_truth(seed: int = 7) -> np.ndarray:
    """A smooth phantom: a few Gaussian blobs and a ring, values in [0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    obj = np.zeros((SIZE, SIZE))
    for _ in range(6):
        cy, cx, w = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.04, 0.12)
        obj += np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * w**2))
    r = np.hypot(y - 0.5, x - 0.5)
    obj += 0.5 * (np.abs(r - 0.3) < 0.03)
    return (obj / obj.max()).astype(np.float32)


def noisy(obj: np.ndarray, dose: int, rng: np.random.Generator) -> np.ndarray:
    return (rng.poisson(obj * dose) / dose).astype(np.float32)


def make_study(root: str | Path, doses=DOSES, views=VIEWS, splits=SPLITS, command: list | None = None) -> Path:
    """Create the tree under ``root`` and a ``study.yaml`` pointing at it; return its path."""
    root = Path(root)
    truth = ground_truth()
    for dose in doses:
        rng = np.random.default_rng(dose)
        for view in views:
            # sparse views see fewer photons per position: a quarter of the dose
            view_dose = dose if view == "dense" else max(1, dose // 4)
            for split in splits:
                data = root / "phase_c" / f"dose_{dose}" / (f"patched_{split}.npz" if view == "dense" else f"{view}/{view}_{split}.npz")
                data.parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(data, ground_truth=truth, measurement=noisy(truth, view_dose, rng), dose=view_dose)
                recon = root / "phase_f" / f"dose_{dose}" / view / split / "ptychi_reconstruction.npz"
                recon.parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(recon, reconstruction=noisy(truth, view_dose * 2, rng))
            ckpt = root / "phase_e" / f"dose_{dose}" / view / "gs2" / "wts.h5.zip"
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            ckpt.write_bytes(b"placeholder checkpoint\n")
        base = root / "phase_e" / f"dose_{dose}" / "baseline" / "gs1" / "wts.h5.zip"
        base.parent.mkdir(parents=True, exist_ok=True)
        base.write_bytes(b"placeholder checkpoint\n")
    study = {
        "name": "fly64-synthetic",
        "roots": {"phase_c": "phase_c", "phase_e": "phase_e", "phase_f": "phase_f"},
        "doses": list(doses),
        "views": list(views),
        "splits": list(splits),
        "command": command or reference_command(),
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def reference_command() -> list:
    """The built-in command template with the reference comparison in place of scripts.compare_models."""
    from ..study import default_study_dict

    command = default_study_dict()["command"]
    return [("gridsubmit.demo.compare" if item == "scripts.compare_models" else item) for item in command]


if __name__ == "__main__":
    print(make_study(sys.argv[1] if len(sys.argv) > 1 else "demo-study"))
