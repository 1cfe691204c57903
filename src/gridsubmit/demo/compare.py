"""Reference comparison: the flags of ``scripts.compare_models``, numpy metrics, one tidy CSV.

    python -m gridsubmit.demo.compare --pinn_dir D --baseline_dir D --test_data F.npz \
        --output_dir OUT --ms-ssim-sigma 1.0 [--tike_recon_path R.npz] [--skip-registration] \
        [--register-ptychi-only]

Scores reconstructions of the test data's complex ground truth (``objectGuess``): ``PtychoPINN`` (the noisy
measurement, denoised as much as the photon count calls for), ``Baseline`` (the measurement
as it is) and ``pty-chi`` (the iterative reconstruction, when ``--tike_recon_path`` is given;
a path that does not exist raises FileNotFoundError, as the real script does). Tuple metrics
(mae, mse, psnr, ssim, ms_ssim, frc50) are computed on amplitude and phase, after removing the
global phase offset; registration offsets and computation time are scalars. Writes
``<output_dir>/comparison_metrics.csv`` as ``model,metric,amplitude,phase,value``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

TUPLE_METRICS = ("mae", "mse", "psnr", "ssim", "ms_ssim", "frc50")
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang, Simoncelli & Bovik 2003
MIN_SCALE = 8  # smallest side MS-SSIM goes down to


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian filter with reflected edges (complex input blurs both parts)."""
    radius = max(1, int(3 * sigma))
    x = np.arange(-radius, radius + 1)
    k = np.exp(-(x**2) / (2 * sigma**2))
    k /= k.sum()
    padded = np.pad(img, radius, mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view
    rows = windows(padded, k.size, axis=1) @ k
    return windows(rows, k.size, axis=0) @ k


def _ssim_maps(a: np.ndarray, b: np.ndarray, data_range: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """SSIM's luminance and contrast-structure maps (their product is the SSIM map)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = gaussian_blur(a, sigma), gaussian_blur(b, sigma)
    var_a = gaussian_blur(a * a, sigma) - mu_a**2
    var_b = gaussian_blur(b * b, sigma) - mu_b**2
    cov = gaussian_blur(a * b, sigma) - mu_a * mu_b
    return (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1), (2 * cov + c2) / (var_a + var_b + c2)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float, sigma: float = 1.5) -> float:
    luminance, cs = _ssim_maps(a, b, data_range, sigma)
    return float((luminance * cs).mean())


def ms_ssim(a: np.ndarray, b: np.ndarray, data_range: float, sigma: float) -> float:
    """Multi-scale SSIM: contrast-structure at each dyadic scale, luminance at the coarsest,
    combined with the standard weights. Simplified for small images: only the scales whose
    side stays >= MIN_SCALE are used (weights renormalised), halving is 2x2 mean pooling, and
    negative terms are clipped to 0 so the fractional powers stay real."""
    n = 1
    while n < len(MS_SSIM_WEIGHTS) and min(a.shape) // 2**n >= MIN_SCALE:
        n += 1
    weights = np.array(MS_SSIM_WEIGHTS[:n]) / sum(MS_SSIM_WEIGHTS[:n])
    score = 1.0
    for i, w in enumerate(weights):
        luminance, cs = _ssim_maps(a, b, data_range, sigma)
        score *= max(float(cs.mean()), 0.0) ** w
        if i == n - 1:
            score *= max(float(luminance.mean()), 0.0) ** w
        else:
            a, b = _halve(a), _halve(b)
    return float(score)


def _halve(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    return img[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def frc50(a: np.ndarray, b: np.ndarray) -> float:
    """First Fourier ring (in pixels of radius from the centre of the spectrum) where the ring
    correlation drops below 0.5; the Nyquist ring when it never does."""
    fa, fb = np.fft.fftshift(np.fft.fft2(a)), np.fft.fftshift(np.fft.fft2(b))
    y, x = np.indices(a.shape)
    rings = np.hypot(y - a.shape[0] // 2, x - a.shape[1] // 2).round().astype(int).ravel()
    nyquist = min(a.shape) // 2
    ring_sum = lambda values: np.bincount(rings, values.ravel())[: nyquist + 1]  # noqa: E731
    frc = ring_sum((fa * fb.conj()).real) / np.maximum(np.sqrt(ring_sum(abs(fa) ** 2) * ring_sum(abs(fb) ** 2)), 1e-12)
    below = np.nonzero(frc[1:] < 0.5)[0]
    return float(below[0] + 1) if below.size else float(nyquist)


def denoise(measured: np.ndarray, dose: float) -> np.ndarray:
    """The stand-in for the network: blend in a smoothed copy, the more the fewer photons."""
    weight = min(1.0, 10 / np.sqrt(dose))
    return weight * gaussian_blur(measured, 1.0) + (1 - weight) * measured


def channels(recon: np.ndarray, truth: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Amplitude and phase of recon and truth, after removing the global phase offset. The
    recon's phase is written as truth phase + wrapped difference, so no 2*pi jumps count as error."""
    recon = recon * np.exp(-1j * np.angle(np.vdot(truth, recon)))
    phase = np.angle(truth) + np.angle(recon * truth.conj())
    return {"amplitude": (np.abs(recon), np.abs(truth)), "phase": (phase, np.angle(truth))}


def tuple_metrics(recon: np.ndarray, truth: np.ndarray, sigma: float) -> dict[str, dict[str, float]]:
    """metric -> {"amplitude": x, "phase": y}."""
    out: dict[str, dict[str, float]] = {m: {} for m in TUPLE_METRICS}
    for channel, (r, t) in channels(recon, truth).items():
        data_range = float(np.ptp(t)) or 1.0
        err = r - t
        mse = float(np.mean(err**2))
        out["mae"][channel] = float(np.mean(np.abs(err)))
        out["mse"][channel] = mse
        out["psnr"][channel] = float(10 * np.log10(data_range**2 / max(mse, 1e-12)))
        out["ssim"][channel] = ssim(r, t, data_range)
        out["ms_ssim"][channel] = ms_ssim(r, t, data_range, sigma)
        out["frc50"][channel] = frc50(r, t)
    return out


def register(recon: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Undo an integer shift found by phase correlation of the amplitudes; return the
    registered recon and the (dy, dx) it was rolled by."""
    cross = np.fft.ifft2(np.fft.fft2(np.abs(truth)) * np.fft.fft2(np.abs(recon)).conj())
    dy, dx = np.unravel_index(np.argmax(abs(cross)), cross.shape)
    # report shifts as signed offsets, not as indices in [0, n)
    dy, dx = (int(d) - n if d > n // 2 else int(d) for d, n in zip((dy, dx), cross.shape))
    return np.roll(recon, (dy, dx), axis=(0, 1)), dy, dx


def load_reconstruction(path: Path) -> tuple[np.ndarray, float | None]:
    """The object of a ``ptychi_reconstruction.npz`` and its recorded computation time, if any."""
    with np.load(path, allow_pickle=True) as data:  # metadata is a pickled dict, as the study writes it
        obj = data["reconstructed_object"].astype(complex)
        metadata = data["metadata"].item() if "metadata" in data else {}
    seconds = metadata.get("computation_time_seconds") if isinstance(metadata, dict) else None
    return obj, None if seconds is None else float(seconds)


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
    if args.tike_recon_path is not None and not args.tike_recon_path.exists():
        raise FileNotFoundError(f"--tike_recon_path: reconstruction not found: {args.tike_recon_path}")
    with np.load(args.test_data) as data:
        truth, measured = data["objectGuess"].astype(complex), data["measurement"].astype(complex)
        dose = float(data["dose"])
    # model -> (reconstruction, computation time): the networks are timed here, the iterative
    # reconstruction reports the time its file recorded (else how long it took to load)
    started = time.perf_counter()
    recons = {"PtychoPINN": (denoise(measured, dose), time.perf_counter() - started), "Baseline": (measured, 0.0)}
    if args.tike_recon_path is not None:
        started = time.perf_counter()
        iterative, seconds = load_reconstruction(args.tike_recon_path)
        recons["pty-chi"] = (iterative, time.perf_counter() - started if seconds is None else seconds)
    rows: list[tuple[str, str, float | None, float | None, float | None]] = []
    for model, (recon, elapsed) in recons.items():
        offsets = None
        if not args.skip_registration and (model == "pty-chi" or not args.register_ptychi_only):
            recon, dy, dx = register(recon, truth)
            offsets = (dy, dx)
        scores = tuple_metrics(recon, truth, args.ms_ssim_sigma)
        rows += [(model, m, scores[m]["amplitude"], scores[m]["phase"], None) for m in TUPLE_METRICS]
        if offsets is not None:  # a model that was not registered has no offset to report
            rows += [(model, "registration_offset_dy", None, None, offsets[0]),
                     (model, "registration_offset_dx", None, None, offsets[1])]  # fmt: skip
        rows.append((model, "computation_time_s", None, None, elapsed))
        print(f"{model:<10} " + "  ".join(f"{m}={scores[m]['amplitude']:.4g}/{scores[m]['phase']:.4g}" for m in TUPLE_METRICS))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    fmt = lambda v: "" if v is None else f"{v:.6f}"  # noqa: E731
    lines = ["model,metric,amplitude,phase,value"] + [f"{m},{k},{fmt(a)},{fmt(p)},{fmt(v)}" for m, k, a, p, v in rows]
    (args.output_dir / "comparison_metrics.csv").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
