"""Write a small synthetic study tree in the fly64 study's layout (a few hundred KB in all).

    phase_c/dose_{dose}/patched_{split}.npz                      dense test data
    phase_c/dose_{dose}/{view}/{view}_{split}.npz                view data (every view, dense included)
    phase_e/dose_{dose}/baseline/gs1/wts.h5.zip                  placeholder checkpoint
    phase_e/dose_{dose}/{view}/gs2/wts.h5.zip                    placeholder checkpoint
    phase_f/dose_{dose}_{view}_{split}/manifest.json             {"dose", "view", "split", "output_dir"}
    phase_f/dose_{dose}_{view}_{split}/dose_{dose}/{view}/{split}/ptychi_reconstruction.npz

The object is complex (amplitude in [0.25, 1], phase in radians). Each data file holds it as
``objectGuess`` (the study's name for the ground truth), a photon-noisy ``measurement`` of it
and the ``dose``, so every metric moves with dose; a reconstruction holds
``reconstructed_object``, ``algorithm`` and ``metadata`` (with ``computation_time_seconds``), as
the study's do. Checkpoints are placeholders: the reference comparison never loads them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import yaml

DOSES = (1000, 10000, 100000)
VIEWS = ("dense", "sparse")
SPLITS = ("train", "test")
SIZE = 32
RECON_SHIFT = (2, -1)  # the iterative reconstruction comes out shifted, as real ones do: registration undoes it
RECON_PHASE_OFFSET = 0.4  # and with an arbitrary global phase, which the comparison removes


def _blobs(rng: np.random.Generator, count: int) -> np.ndarray:
    """Gaussian blobs on the unit square, scaled to [0, 1]."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    img = np.zeros((SIZE, SIZE))
    for _ in range(count):
        cy, cx, w = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.14)
        img += np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * w**2))
    return img / img.max()


def ground_truth(seed: int = 7) -> np.ndarray:
    """A smooth complex phantom: amplitude in [0.25, 1] (blobs and a ring), phase in [-1, 1] rad."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    ring = np.abs(np.hypot(y - 0.5, x - 0.5) - 0.3) < 0.04
    amplitude = 0.25 + 0.75 * np.clip(_blobs(rng, 5) + 0.5 * ring, 0, 1)
    phase = 2 * _blobs(rng, 4) - 1
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def noisy(obj: np.ndarray, dose: int, rng: np.random.Generator) -> np.ndarray:
    """The object seen with ``dose`` photons per pixel at full amplitude: Poisson-noisy
    intensity for the amplitude, and phase noise that grows where few photons arrive."""
    counts = rng.poisson(np.abs(obj) ** 2 * dose)
    amplitude = np.sqrt(counts / dose)
    phase = np.angle(obj) + rng.normal(size=obj.shape) / np.sqrt(np.maximum(counts, 1))
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def make_study(root: str | Path, doses=DOSES, views=VIEWS, splits=SPLITS, command: list | None = None) -> Path:
    """Create the tree under ``root`` and a ``study.yaml`` pointing at it; return its path."""
    root = Path(root)
    truth = ground_truth()
    for dose in doses:
        rng = np.random.default_rng(dose)
        phase_c = root / "phase_c" / f"dose_{dose}"
        phase_c.mkdir(parents=True, exist_ok=True)
        for split in splits:
            np.savez_compressed(phase_c / f"patched_{split}.npz", objectGuess=truth, measurement=noisy(truth, dose, rng), dose=dose)
        for view in views:
            # sparse views see fewer photons per position: a quarter of the dose
            view_dose = dose if view == "dense" else max(1, dose // 4)
            for split in splits:
                data = phase_c / view / f"{view}_{split}.npz"
                data.parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(data, objectGuess=truth, measurement=noisy(truth, view_dose, rng), dose=view_dose)
                job = root / "phase_f" / f"dose_{dose}_{view}_{split}"
                out = job / f"dose_{dose}" / view / split
                out.mkdir(parents=True, exist_ok=True)
                recon = np.roll(noisy(truth, view_dose * 2, rng), RECON_SHIFT, axis=(0, 1)) * np.exp(1j * RECON_PHASE_OFFSET)
                metadata = np.array({"algorithm": "LSQML", "computation_time_seconds": 1.5}, dtype=object)
                np.savez_compressed(out / "ptychi_reconstruction.npz", reconstructed_object=recon.astype(np.complex64),
                                    algorithm=np.array("LSQML"), metadata=metadata)  # fmt: skip
                manifest = {"dose": dose, "view": view, "split": split, "output_dir": str(out.absolute())}
                (job / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            _placeholder(root / "phase_e" / f"dose_{dose}" / view / "gs2" / "wts.h5.zip")
        _placeholder(root / "phase_e" / f"dose_{dose}" / "baseline" / "gs1" / "wts.h5.zip")
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


def _placeholder(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"placeholder checkpoint\n")


def reference_command() -> list:
    """The built-in command template with the reference comparison in place of scripts.compare_models."""
    from ..study import default_study_dict

    command = default_study_dict()["command"]
    return [("gridsubmit.demo.compare" if item == "scripts.compare_models" else item) for item in command]


if __name__ == "__main__":
    print(make_study(sys.argv[1] if len(sys.argv) > 1 else "demo-study"))
