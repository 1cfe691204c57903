"""Reference comparison: the flags of ``scripts.compare_models``, numpy metrics, one CSV.

    python -m gridsubmit.demo.compare --pinn_dir D --baseline_dir D --test_data F.npz \
        --output_dir OUT --ms-ssim-sigma 1.0 [--tike_recon_path R.npz] [--skip-registration] \
        [--register-ptychi-only]

Scores three reconstructions of the test data's ground truth (a denoised "pinn", the raw
"baseline", and the iterative "ptychi" one when given) with MAE, MSE, PSNR, SSIM and FRC50,
and writes ``comparison_metrics.csv`` into the output folder.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

FIELDS = ["model", "mae", "mse", "psnr", "ssim", "frc50"]


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(3 * sigma))
    x = np.arange(-radius, radius + 1)
    k = np.exp(-(x**2) / (2 * sigma**2))
    k /= k.sum()
    padded = np.pad(img, radius, mode="reflect")
    rows = np.apply_along_axis(lambda r: np.convolve(r, k, mode="valid"), 1, padded)
    return np.apply_along_axis(lambda c: np.convolve(c, k, mode="valid"), 0, rows)


def ssim(a: np.ndarray, b: np.ndarray, sigma: float, data_range: float = 1.0) -> float:
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = gaussian_blur(a, sigma), gaussian_blur(b, sigma)
    var_a = gaussian_blur(a * a, sigma) - mu_a**2
    var_b = gaussian_blur(b * b, sigma) - mu_b**2
    cov = gaussian_blur(a * b, sigma) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def frc50(a: np.ndarray, b: np.ndarray) -> float:
    """Spatial frequency (fraction of Nyquist) where the Fourier ring correlation drops below 0.5."""
    fa, fb = np.fft.fftshift(np.fft.fft2(a)), np.fft.fftshift(np.fft.fft2(b))
    n = a.shape[0]
    y, x = np.indices(a.shape) - n // 2
    rings = np.hypot(y, x).astype(int)
    nyquist = n // 2
    num = np.bincount(rings.ravel(), (fa * fb.conj()).real.ravel())[:nyquist]
    den = np.sqrt(np.bincount(rings.ravel(), (abs(fa) ** 2).ravel())[:nyquist]
                  * np.bincount(rings.ravel(), (abs(fb) ** 2).ravel())[:nyquist])  # fmt: skip
    frc = num / np.maximum(den, 1e-12)
    below = np.nonzero(frc[1:] < 0.5)[0]
    return float((below[0] + 1) / nyquist) if below.size else 1.0


def metrics(recon: np.ndarray, truth: np.ndarray, sigma: float) -> dict:
    err = recon - truth
    mse = float(np.mean(err**2))
    return {"mae": float(np.mean(np.abs(err))), "mse": mse, "psnr": float(10 * np.log10(1.0 / max(mse, 1e-12))),
            "ssim": ssim(recon, truth, sigma), "frc50": frc50(recon, truth)}  # fmt: skip


def register(recon: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Undo an integer shift by phase correlation."""
    cross = np.fft.ifft2(np.fft.fft2(truth) * np.fft.fft2(recon).conj())
    dy, dx = np.unravel_index(np.argmax(abs(cross)), cross.shape)
    return np.roll(recon, (dy, dx), axis=(0, 1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gridsubmit.demo.compare", description=__doc__.split("\n")[0])
    p.add_argument("--pinn_dir", required=True, type=Path)
    p.add_argument("--baseline_dir", required=True, type=Path)
    p.add_argument("--test_data", required=True, type=Path)
    p.add_argument("--output_dir", required=True, type=Path)
    p.add_argument("--ms-ssim-sigma", type=float, default=1.0)
    p.add_argument("--tike_recon_path", type=Path)
    p.add_argument("--skip-registration", action="store_true")
    p.add_argument("--register-ptychi-only", action="store_true")
    args = p.parse_args(argv)
    for folder in (args.pinn_dir, args.baseline_dir):
        if not folder.is_dir():
            print(f"compare: checkpoint folder not found: {folder}", file=sys.stderr)
            return 2
    with np.load(args.test_data) as data:
        truth, measured = data["ground_truth"].astype(float), data["measurement"].astype(float)
        dose = float(data["dose"])
    # "pinn": a denoiser that smooths as much as the photon noise calls for
    recons = {"pinn": gaussian_blur(measured, max(0.5, 20 / np.sqrt(dose))), "baseline": measured}
    if args.tike_recon_path:
        with np.load(args.tike_recon_path) as data:
            recons["ptychi"] = data["reconstruction"].astype(float)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for model, recon in recons.items():
        if not args.skip_registration and (model == "ptychi" or not args.register_ptychi_only):
            recon = register(recon, truth)
        row = {"model": model, **metrics(recon, truth, args.ms_ssim_sigma)}
        rows.append(row)
        print(f"{model:<9} " + "  ".join(f"{k}={row[k]:.4g}" for k in FIELDS[1:]))
    with open(args.output_dir / "comparison_metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
