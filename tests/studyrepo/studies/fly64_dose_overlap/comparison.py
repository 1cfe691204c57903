"""Phase G comparison jobs of the fly64 dose/overlap study (test stand-in).

Mirrors the study's ``ComparisonJob`` and ``build_comparison_jobs``: one job per
dose x view x split, ordered by dose ascending, dense before sparse, train before test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

VIEWS = ("dense", "sparse")
SPLITS = ("train", "test")


@dataclass
class ComparisonJob:
    """One comparison: pointers to the Phase C data, Phase E checkpoints and Phase F manifest."""

    dose: int
    view: str
    split: str
    phase_c_npz: Path
    pinn_checkpoint: Path
    baseline_checkpoint: Path
    phase_f_manifest: Path
    ms_ssim_sigma: float = 1.0
    skip_registration: bool = False
    register_ptychi_only: bool = True


def build_comparison_jobs(
    phase_c_root: Path,
    phase_e_root: Path,
    phase_f_root: Path,
    doses=(500, 1000, 2000),
    ms_ssim_sigma: float = 1.0,
) -> list[ComparisonJob]:
    """Build the jobs for every dose/view/split; missing Phase C/E inputs raise FileNotFoundError.

    The Phase F manifest is not checked here (the executor reads it later).
    """
    phase_c_root, phase_e_root, phase_f_root = Path(phase_c_root), Path(phase_e_root), Path(phase_f_root)
    jobs: list[ComparisonJob] = []
    for dose in sorted(int(d) for d in doses):
        dose_dir = phase_c_root / f"dose_{dose}"
        baseline_checkpoint = phase_e_root / f"dose_{dose}" / "baseline" / "gs1" / "wts.h5.zip"
        for view in VIEWS:
            pinn_checkpoint = phase_e_root / f"dose_{dose}" / view / "gs2" / "wts.h5.zip"
            for split in SPLITS:
                if view == "dense":
                    phase_c_npz = dose_dir / f"patched_{split}.npz"
                else:
                    phase_c_npz = dose_dir / view / f"{view}_{split}.npz"
                phase_f_manifest = phase_f_root / f"dose_{dose}_{view}_{split}" / "manifest.json"
                if not phase_c_npz.exists():
                    raise FileNotFoundError(f"Phase C dataset not found: {phase_c_npz}")
                if not pinn_checkpoint.exists():
                    raise FileNotFoundError(f"PINN checkpoint not found: {pinn_checkpoint}")
                if not baseline_checkpoint.exists():
                    raise FileNotFoundError(f"Baseline checkpoint not found: {baseline_checkpoint}")
                jobs.append(ComparisonJob(
                    dose=dose,
                    view=view,
                    split=split,
                    phase_c_npz=phase_c_npz,
                    pinn_checkpoint=pinn_checkpoint,
                    baseline_checkpoint=baseline_checkpoint,
                    phase_f_manifest=phase_f_manifest,
                    ms_ssim_sigma=ms_ssim_sigma,
                    skip_registration=False,
                    register_ptychi_only=True,
                ))
    return jobs
