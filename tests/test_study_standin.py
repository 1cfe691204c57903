"""The study stand-in is faithful to the real study in what gridsubmit can observe."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from study_layout import FAIL_FILE, build_study_tree, make_study_repo, read_runs, studylib_env


@pytest.fixture
def study(tmp_path):
    repo = make_study_repo(tmp_path / "repo")
    tree = build_study_tree(tmp_path / "tree")
    return repo, tree


def cell_args(tree, out: Path, dose=1000, view="dense", split="train", tike=True) -> list[str]:
    data = tree["phase_c"] / f"dose_{dose}" / (f"patched_{split}.npz" if view == "dense" else f"{view}/{view}_{split}.npz")
    args = ["--pinn_dir", tree["phase_e"] / f"dose_{dose}" / view / "gs2",
            "--baseline_dir", tree["phase_e"] / f"dose_{dose}" / "baseline" / "gs1",
            "--test_data", data, "--output_dir", out, "--ms-ssim-sigma", "1.0"]
    if tike:
        manifest = json.loads((tree["phase_f"] / f"dose_{dose}_{view}_{split}" / "manifest.json").read_text())
        args += ["--tike_recon_path", Path(manifest["output_dir"]) / "ptychi_reconstruction.npz"]
    return [str(a) for a in args] + ["--register-ptychi-only"]


def compare(cwd, args, env=None, module=True, repo=None):
    head = ["-m", "scripts.compare_models"] if module else [str(repo / "scripts" / "compare_models.py")]
    env = env if env is not None else studylib_env()
    return subprocess.run([sys.executable, *head, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def metrics(out: Path) -> list[dict]:
    with open(out / "comparison_metrics.csv") as fh:
        return list(csv.DictReader(fh))


def test_module_run_from_repo_root_writes_tidy_metrics(study, tmp_path):
    repo, tree = study
    out = tmp_path / "art" / "dose_1000" / "dense" / "train"
    res = compare(repo, cell_args(tree, out))
    assert res.returncode == 0, res.stderr
    rows = metrics(out)
    assert list(rows[0]) == ["model", "metric", "amplitude", "phase", "value"]
    assert [r["model"] for r in rows if r["metric"] == "psnr"] == ["PtychoPINN", "Baseline", "pty-chi"]
    for r in rows:
        if r["metric"] in ("mae", "mse", "psnr", "ssim", "ms_ssim", "frc50"):
            assert r["value"] == "" and float(r["amplitude"]) == float(r["amplitude"]) and r["phase"]
        else:
            assert r["amplitude"] == r["phase"] == "" and float(r["value"]) >= -10
    assert {r["metric"] for r in rows} >= {"registration_offset_dy", "registration_offset_dx", "computation_time_s"}
    assert (out / "pinn_frc_curves.csv").read_text().startswith("model,frequency_bin,amplitude_frc,phase_frc")
    assert (out / "baseline_frc_curves.csv").exists()
    [run] = read_runs(out)
    assert run["cwd"] == str(repo) and "--tike_recon_path" in run["argv"]


def test_psnr_grows_with_dose_and_two_way_without_reconstruction(study, tmp_path):
    repo, tree = study
    psnr = []
    for dose in (500, 2000):
        out = tmp_path / "art" / f"dose_{dose}" / "sparse" / "test"
        res = compare(repo, cell_args(tree, out, dose=dose, view="sparse", split="test", tike=False))
        assert res.returncode == 0, res.stderr
        rows = metrics(out)
        assert {r["model"] for r in rows} == {"PtychoPINN", "Baseline"}
        psnr.append(next(float(r["amplitude"]) for r in rows if r["model"] == "PtychoPINN" and r["metric"] == "psnr"))
    assert psnr[0] < psnr[1]


def test_script_path_works_from_anywhere_but_module_needs_repo_root(study, tmp_path):
    repo, tree = study
    out = tmp_path / "art" / "dose_500" / "dense" / "test"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = compare(elsewhere, cell_args(tree, out, dose=500, split="test"))
    assert res.returncode != 0 and "No module named 'scripts'" in res.stderr
    res = compare(elsewhere, cell_args(tree, out, dose=500, split="test"), module=False, repo=repo)
    assert res.returncode == 0, res.stderr


def test_needs_studylib_on_pythonpath(study, tmp_path):
    repo, tree = study
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = compare(repo, cell_args(tree, tmp_path / "o" / "dose_500" / "dense" / "train", dose=500), env=env)
    assert res.returncode == 1 and "ModuleNotFoundError: No module named 'ptycho_helpers'" in res.stderr


def test_missing_reconstruction_and_unknown_flag(study, tmp_path):
    repo, tree = study
    args = cell_args(tree, tmp_path / "o" / "dose_500" / "dense" / "train", dose=500, tike=False)
    res = compare(repo, args + ["--tike_recon_path", str(tmp_path / "nope.npz")])
    assert res.returncode == 1 and "FileNotFoundError" in res.stderr
    res = compare(repo, args + ["--no-such-flag"])
    assert res.returncode == 2 and "unrecognized arguments: --no-such-flag" in res.stderr


def test_fail_cells_file_fails_that_cell_only(study, tmp_path):
    repo, tree = study
    (repo / FAIL_FILE).write_text("dose_1000/dense/train\n")
    bad, good = tmp_path / "art" / "dose_1000" / "dense" / "train", tmp_path / "art" / "dose_1000" / "dense" / "test"
    res = compare(repo, cell_args(tree, bad))
    assert res.returncode == 1 and "compare_models: failing on purpose for dose_1000/dense/train" in res.stderr
    assert not (bad / "comparison_metrics.csv").exists()
    assert compare(repo, cell_args(tree, good, split="test")).returncode == 0
    (repo / FAIL_FILE).unlink()
    assert compare(repo, cell_args(tree, bad)).returncode == 0
    assert len(read_runs(bad)) == 2


def test_build_comparison_jobs_order_and_tree(study):
    repo, tree = study
    code = (
        "import json, sys\n"
        "from studies.fly64_dose_overlap.comparison import build_comparison_jobs\n"
        "jobs = build_comparison_jobs(*sys.argv[1:4])\n"
        "print(json.dumps([{k: str(v) for k, v in vars(j).items()} for j in jobs]))\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(tree["phase_c"]), str(tree["phase_e"]), str(tree["phase_f"])],
                         cwd=repo, capture_output=True, text=True, timeout=60, env=studylib_env())
    assert res.returncode == 0, res.stderr
    jobs = json.loads(res.stdout)
    assert [(int(j["dose"]), j["view"], j["split"]) for j in jobs] == [
        (d, v, s) for d in (500, 1000, 2000) for v in ("dense", "sparse") for s in ("train", "test")]
    first, sparse = jobs[0], jobs[2]
    assert first["phase_c_npz"] == str(tree["phase_c"] / "dose_500" / "patched_train.npz")
    assert sparse["phase_c_npz"] == str(tree["phase_c"] / "dose_500" / "sparse" / "sparse_train.npz")
    assert first["pinn_checkpoint"] == str(tree["phase_e"] / "dose_500" / "dense" / "gs2" / "wts.h5.zip")
    assert first["baseline_checkpoint"] == str(tree["phase_e"] / "dose_500" / "baseline" / "gs1" / "wts.h5.zip")
    assert (first["ms_ssim_sigma"], first["skip_registration"], first["register_ptychi_only"]) == ("1.0", "False", "True")
    for j in jobs:
        manifest = json.loads(Path(j["phase_f_manifest"]).read_text())
        assert (manifest["dose"], manifest["view"], manifest["split"]) == (int(j["dose"]), j["view"], j["split"])
        out = Path(manifest["output_dir"])
        assert out.is_absolute() and (out / "ptychi_reconstruction.npz").is_file()
        assert Path(j["phase_c_npz"]).is_file() and Path(j["pinn_checkpoint"]).is_file()
    assert not (repo / "scripts" / "__init__.py").exists()
