"""Metrics files, the report built from a manifest, and the synthetic study with its reference comparison."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import run_cli
from gridsubmit import report
from gridsubmit.demo import compare
from gridsubmit.demo.generate import make_study
from gridsubmit.errors import UsageError
from gridsubmit.metrics import MAX_ROWS, TIDY_FIELDS, read_metrics

TIDY = """\
model,metric,amplitude,phase,value
PtychoPINN,mae,0.081234,0.301122,
PtychoPINN,psnr,63.412000,58.100000,
PtychoPINN,registration_offset_dy,,,1.000000
Baseline,psnr,61.900000,55.300000,
"""


def row(model, metric, amplitude=None, phase=None, value=None):
    return {"model": model, "metric": metric, "amplitude": amplitude, "phase": phase, "value": value}


def cell(dose, view="dense", split="test", metrics=None, error=None, state="COMPLETED"):
    return {"key": f"dose_{dose}/{view}/{split}", "dose": dose, "view": view, "split": split, "state": state,
            "attempts": [], "missing": [], "metrics": metrics, "metrics_error": error}  # fmt: skip


def manifest(*cells):
    return {"study": {"name": "fly64-test"}, "jobs": list(cells)}


def tuple_rows(model, psnr, ssim):
    return [row(model, "psnr", psnr, psnr - 5), row(model, "ssim", ssim, ssim - 0.1), row(model, "computation_time_s", value=1.5)]


# --- reading a cell's metrics file ------------------------------------------------------------


def test_the_study_tidy_csv_becomes_one_row_per_model_and_metric_with_amplitude_phase_or_value(tmp_path):
    (tmp_path / "m.csv").write_text(TIDY)
    rows, problem, _ = read_metrics(tmp_path / "m.csv")
    assert problem is None
    assert rows == [row("PtychoPINN", "mae", 0.081234, 0.301122), row("PtychoPINN", "psnr", 63.412, 58.1),
                    row("PtychoPINN", "registration_offset_dy", value=1.0), row("Baseline", "psnr", 61.9, 55.3)]  # fmt: skip
    assert all(tuple(r) == TIDY_FIELDS for r in rows)


def test_an_older_wide_csv_becomes_tidy_rows_with_values_and_its_text_columns_are_ignored(tmp_path):
    (tmp_path / "m.csv").write_text("model,psnr,ssim,note\npinn,30.5,0.91,ok\nbaseline,,0.8,\n")
    rows, problem, _ = read_metrics(tmp_path / "m.csv")
    assert problem is None
    assert rows == [row("pinn", "psnr", value=30.5), row("pinn", "ssim", value=0.91),
                    row("baseline", "psnr", value=None), row("baseline", "ssim", value=0.8)]  # fmt: skip


def test_nan_and_infinity_are_stored_as_none_so_the_manifest_stays_plain_json(tmp_path):
    (tmp_path / "m.csv").write_text("model,metric,amplitude,phase,value\nPtychoPINN,psnr,nan,inf,\nBaseline,psnr,30,-Infinity,\n")
    rows, problem, warning = read_metrics(tmp_path / "m.csv")
    assert problem is None
    assert rows == [row("PtychoPINN", "psnr"), row("Baseline", "psnr", 30.0)]
    assert warning == "3 value(s) NaN or infinite: PtychoPINN psnr amplitude, PtychoPINN psnr phase, Baseline psnr phase"
    (tmp_path / "w.csv").write_text("model,psnr\npinn,NaN\n")
    assert read_metrics(tmp_path / "w.csv") == ([row("pinn", "psnr")], None, "1 value(s) NaN or infinite: pinn psnr")


@pytest.mark.parametrize("content, warning", [
    ("model,name,amplitude,phase,value\npinn,psnr,30,25,\npinn,ssim,0.9,0.8,\n",
     "neither tidy nor wide: columns amplitude, phase, value without a 'metric' column, read as metrics named amplitude, phase"),
    ("model,metric_name,score\npinn,psnr,30\npinn,ssim,0.9\n",
     "neither tidy nor wide: model pinn on 2 rows without a 'metric' column (the wide form has one row per model)"),
    ("model,metric,score\npinn,psnr,30\n",
     "neither tidy nor wide: a 'metric' column but no amplitude, phase or value column (header model,metric,score): "
     "no values read"),
])  # fmt: skip
def test_a_csv_that_is_neither_tidy_nor_wide_is_read_with_a_warning_saying_so(tmp_path, content, warning):
    (tmp_path / "m.csv").write_text(content)
    rows, problem, said = read_metrics(tmp_path / "m.csv")
    assert problem is None and rows and said == warning
    (tmp_path / "m.csv").write_text("model,psnr,ssim\npinn,30,0.9\nbaseline,28,\n")  # the wide form itself: no warning
    assert read_metrics(tmp_path / "m.csv")[2] is None


def test_a_missing_file_is_no_metrics_and_a_header_alone_is_an_empty_list(tmp_path):
    assert read_metrics(tmp_path / "absent.csv") == (None, None, None)
    (tmp_path / "m.csv").write_text("model,metric,amplitude,phase,value\n")
    assert read_metrics(tmp_path / "m.csv") == ([], None, "no rows")


@pytest.mark.parametrize("content, why", [
    (b"", "empty file"),
    (b"name,psnr\npinn,30\n", "no 'model' column"),
    (b"model,metric,amplitude,phase,value\nPtychoPINN,psnr,high,55,\n", "amplitude of PtychoPINN psnr is not a number"),
    (b"model,metric,amplitude,phase,value\nPtychoPINN,,1,2,\n", "line 2: no metric name"),
    (b'model,metric,amplitude\n"PtychoPINN,psnr,1\n' + b"x" * 200_000, "not a CSV file"),
])  # fmt: skip
def test_an_unparseable_file_yields_a_problem_naming_the_file_and_never_raises(tmp_path, content, why):
    path = tmp_path / "comparison_metrics.csv"
    path.write_bytes(content)
    rows, problem, _ = read_metrics(path)
    assert rows is None
    assert problem.startswith(f"{path}: ") and why in problem


def test_a_folder_in_place_of_the_file_is_a_problem_too(tmp_path):
    (tmp_path / "comparison_metrics.csv").mkdir()
    rows, problem, _ = read_metrics(tmp_path / "comparison_metrics.csv")
    assert rows is None and str(tmp_path / "comparison_metrics.csv") in problem


def test_bytes_that_are_not_utf8_are_replaced_and_rows_are_bounded(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"model,metric,amplitude,phase,value\n" + b"".join(b"m\xff%d,psnr,1,2,\n" % i for i in range(MAX_ROWS + 50)))
    rows, problem, _ = read_metrics(path)
    assert problem is None and len(rows) == MAX_ROWS
    assert rows[0] == row("m\ufffd0", "psnr", 1.0, 2.0)


# --- the report -------------------------------------------------------------------------------


def two_dose_manifest():
    return manifest(
        cell(1000, metrics=tuple_rows("PtychoPINN", 30.0, 0.8) + tuple_rows("Baseline", 28.0, 0.7)),
        cell(10000, metrics=tuple_rows("PtychoPINN", 40.0, 0.9) + tuple_rows("Baseline", 35.0, 0.85)),
        cell(10000, view="sparse", error="/run/dose_10000/sparse/test/comparison_metrics.csv: empty file: no header"),
        cell(1000, view="sparse", state="BLOCKED"),
    )


def test_metric_rows_carry_the_cell_axes_on_every_model_and_metric():
    rows = report.metric_rows(two_dose_manifest())
    assert len(rows) == 12
    assert rows[0] == {"dose": 1000, "view": "dense", "split": "test", "model": "PtychoPINN", "metric": "psnr",
                       "amplitude": 30.0, "phase": 25.0, "value": None}  # fmt: skip


def test_the_csv_has_one_row_per_cell_model_and_metric_with_empty_cells_for_none(tmp_path):
    path = tmp_path / "metrics.csv"
    assert report.write_csv(two_dose_manifest(), path) == 12
    lines = path.read_text().splitlines()
    assert lines[0] == "dose,view,split,model,metric,amplitude,phase,value"
    assert lines[1] == "1000,dense,test,PtychoPINN,psnr,30.0,25.0,"
    assert lines[3] == "1000,dense,test,PtychoPINN,computation_time_s,,,1.5"
    keys = [(r["dose"], r["model"], r["metric"]) for r in csv.DictReader(path.open())]
    assert len(keys) == len(set(keys)) == 12
    assert report.write_csv(manifest(cell(1000)), path) == 0
    assert path.read_text().strip() == "dose,view,split,model,metric,amplitude,phase,value"


def test_the_table_shows_a_line_per_cell_and_model_with_amplitude_phase_pairs_and_names_unreadable_files():
    text = report.metrics_table(two_dose_manifest())
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("dose"))
    assert header.split() == ["dose", "view", "split", "model", "psnr", "ssim", "computation_time_s"]
    assert any(line.split() == ["1000", "dense", "test", "PtychoPINN", "30/25", "0.8/0.7", "1.5"] for line in lines)
    assert sum(1 for line in lines if line.startswith(("1000 ", "10000 "))) == 4
    assert "dose_10000/sparse/test" in text and "/run/dose_10000/sparse/test/comparison_metrics.csv" in text


def test_tuple_metrics_come_in_the_preferred_order_with_four_significant_digits():
    metrics = [row("pty-chi", name, 0.123456, 1234.5678) for name in ("frc50", "zeta", "psnr", "mae")]
    text = report.metrics_table(manifest(cell(1000, metrics=metrics)))
    header = next(line for line in text.splitlines() if line.startswith("dose"))
    assert header.split()[4:] == ["mae", "psnr", "frc50", "zeta"]
    assert "0.1235/1235" in text


def test_a_cell_in_full_says_an_absent_optional_input_is_absent_not_none():
    c = {**cell(1000), "argv": ["python", "-m", "x"], "output_dir": "/run/dose_1000/dense/test",
         "inputs": {"phase_c_npz": "/data/c.npz", "reconstruction": None, "pinn_checkpoint": None},
         "missing": ["pinn_checkpoint: found through phase_e_manifest, which is absent"]}  # fmt: skip
    text = report.cell_text(c, Path("/run"))
    assert "  input reconstruction: absent (optional)" in text.splitlines()
    assert "  input pinn_checkpoint: absent" in text.splitlines()  # required: the blocked line says why
    assert "  input phase_c_npz: /data/c.npz" in text.splitlines()
    assert "None" not in text


def test_without_metrics_the_table_says_so_in_one_line():
    assert report.metrics_table(manifest(cell(1000), cell(1000, state="FAILED"))).count("\n") == 0
    assert "no metrics" in report.metrics_table(manifest(cell(1000)))


def test_a_report_of_a_run_whose_cells_are_all_stale_says_so_where_the_metrics_would_be(finished, tmp_path, capsys):
    study, root = finished
    data = yaml.safe_load(study.read_text())
    data["options"] = {"ms_ssim_sigma": 2.0}  # the study file edited after the run: every cell stale
    study.write_text(yaml.safe_dump(data, sort_keys=False))
    capsys.readouterr()
    assert run_cli("report", root, "--html", tmp_path / "r.html", "--require-complete") == 1
    out, err = capsys.readouterr()
    said = "the 12 completed cell(s) are stale and excluded; `submit --rerun-stale` runs them again"
    assert out.splitlines()[0] == f"(no metrics: {said})" and "comparison_metrics.csv" not in out
    assert f"No metrics: {said}." in (tmp_path / "r.html").read_text()
    assert all(line.startswith("gridsubmit: ") and line.count("gridsubmit: ") == 1 for line in err.splitlines()), err
    assert err.count("changed since the last submit") == 1 and err.endswith("12 cell(s) do not contribute\n")
    assert run_cli("report", root, "--plot", tmp_path / "p.png") == 2
    assert "nothing to plot: no cell contributes metrics" in capsys.readouterr().err


def test_a_manifest_written_before_the_tidy_format_still_reports():
    rows = report.metric_rows(manifest(cell(1000, metrics=[{"model": "pinn", "psnr": 30.5, "note": "ok"}])))
    assert rows == [{"dose": 1000, "view": "dense", "split": "test", **row("pinn", "psnr", value=30.5)}]


def test_the_plot_has_a_line_per_model_and_view_in_amplitude_and_phase_panels(tmp_path):
    import matplotlib  # noqa: F401  (a test dependency: never skipped)
    path = tmp_path / "metrics.png"
    m = two_dose_manifest()
    m["jobs"].append(cell(1000, split="train", metrics=tuple_rows("PtychoPINN", 10.0, 0.1)))  # not drawn: test split wins
    fig = report.plot(m, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["PSNR (dB), amplitude", "PSNR (dB), phase", "SSIM, amplitude", "SSIM, phase"]
    for ax in fig.axes:
        assert sorted(line.get_label() for line in ax.lines) == ["Baseline (dense)", "PtychoPINN (dense)"]
        assert all(list(line.get_xdata()) == [1000, 10000] for line in ax.lines)
    assert "fly64-test" in fig.get_suptitle()


def test_the_plot_breaks_a_line_at_a_dose_without_a_result_and_marks_that_dose(tmp_path):
    import matplotlib  # noqa: F401  (a test dependency: never skipped)
    m = manifest(*(cell(dose, metrics=tuple_rows("PtychoPINN", psnr, 0.5)) for dose, psnr in ((1000, 20.0), (100000, 40.0))),
                 *(cell(dose, view="sparse", metrics=tuple_rows("PtychoPINN", psnr, 0.4)) for dose, psnr in
                   ((1000, 18.0), (10000, 25.0), (100000, 35.0))))  # fmt: skip
    m["jobs"].insert(1, cell(10000, state="FAILED"))  # dense has no result at 10000
    fig = report.plot(m, tmp_path / "p.png", doses=[1000, 10000, 100000, 1000000])  # and nobody at 1e6 (blocked)
    psnr = fig.axes[0]
    drawn = {line.get_label(): line for line in psnr.lines}
    dense, sparse = drawn["PtychoPINN (dense)"], drawn["PtychoPINN (sparse)"]
    assert list(dense.get_xdata()) == [1000, 10000, 100000, 1000000]
    y = list(dense.get_ydata())
    assert y[0] == 20.0 and math.isnan(y[1]) and y[2] == 40.0 and math.isnan(y[3])  # no straight line 1000 -> 100000
    assert list(sparse.get_ydata())[:3] == [18.0, 25.0, 35.0] and math.isnan(list(sparse.get_ydata())[3])
    marks = [line for line in psnr.lines if line.get_label() == "_no result"]
    assert sorted(x for line in marks for x in line.get_xdata()) == [10000, 1000000, 1000000]
    assert all(line.get_marker() == "x" and list(line.get_ydata()) == [0.0] * len(line.get_xdata()) for line in marks)
    assert psnr.get_xlim()[1] > 1000000  # the dose nobody has stays on the axis
    assert "no result at this dose" in [t.get_text() for t in fig.legends[0].get_texts()]
    full = report.plot(manifest(*m["jobs"][3:]), tmp_path / "q.png")  # sparse alone: every dose has a result
    assert not [line for ax in full.axes for line in ax.lines if line.get_label() == "_no result"]
    assert "no result at this dose" not in [t.get_text() for t in full.legends[0].get_texts()]


def test_wide_values_are_plotted_in_the_amplitude_column(tmp_path):
    import matplotlib  # noqa: F401  (a test dependency: never skipped)
    m = manifest(cell(1000, split="train", metrics=[row("pinn", "psnr", value=20.0)]),
                 cell(10000, split="train", metrics=[row("pinn", "psnr", value=30.0)]))  # fmt: skip
    fig = report.plot(m, tmp_path / "p.png")
    amplitude, phase = fig.axes
    assert [list(line.get_ydata()) for line in amplitude.lines] == [[20.0, 30.0]]
    assert amplitude.lines[0].get_label() == "pinn (dense, train)" and not phase.lines


def test_plotting_nothing_is_a_usage_error(tmp_path):
    import matplotlib  # noqa: F401  (a test dependency: never skipped)
    with pytest.raises(UsageError, match="nothing to plot"):
        report.plot(manifest(cell(1000)), tmp_path / "p.png")
    with pytest.raises(UsageError, match="nothing to plot"):
        report.plot(manifest(cell(1000, metrics=[row("pinn", "mae", 0.1, 0.2)])), tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


def test_the_report_module_imports_without_matplotlib():
    code = "import sys; sys.modules['matplotlib'] = None; import gridsubmit.report"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- the synthetic study and the reference comparison -----------------------------------------


def test_the_generated_tree_has_the_real_study_layout(tmp_path):
    study = make_study(tmp_path / "study", doses=(500, 1000))
    root = study.parent
    spec = yaml.safe_load(study.read_text())
    assert spec["name"] == "fly64-synthetic" and "inputs" not in spec
    assert spec["roots"] == {"phase_c": "phase_c", "phase_e": "phase_e", "phase_f": "phase_f"}
    assert "gridsubmit.demo.compare" in spec["command"]
    for dose in (500, 1000):
        assert (root / f"phase_e/dose_{dose}/baseline/gs1/wts.h5.zip").is_file()
        for split in ("train", "test"):
            assert (root / f"phase_c/dose_{dose}/patched_{split}.npz").is_file()
        for view in ("dense", "sparse"):
            assert (root / f"phase_e/dose_{dose}/{view}/gs2/wts.h5.zip").is_file()
            for split in ("train", "test"):
                assert (root / f"phase_c/dose_{dose}/{view}/{view}_{split}.npz").is_file()
                job = json.loads((root / f"phase_f/dose_{dose}_{view}_{split}/manifest.json").read_text())
                assert {k: job[k] for k in ("dose", "view", "split")} == {"dose": dose, "view": view, "split": split}
                output_dir = Path(job["output_dir"])
                assert output_dir.is_absolute()
                assert output_dir == root.absolute() / f"phase_f/dose_{dose}_{view}_{split}/dose_{dose}/{view}/{split}"
                assert (output_dir / "ptychi_reconstruction.npz").is_file()
    assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) < 400_000


def compare_args(root: Path, dose: int, view: str, split: str, out: Path, data: str = "") -> list[str]:
    """The comparison's flags for one cell; ``data``: test data under phase_c/dose_<dose> (default the dense data)."""
    return ["--pinn_dir", str(root / f"phase_e/dose_{dose}/{view}/gs2"),
            "--baseline_dir", str(root / f"phase_e/dose_{dose}/baseline/gs1"),
            "--test_data", str(root / f"phase_c/dose_{dose}" / (data or f"patched_{split}.npz")),
            "--output_dir", str(out), "--ms-ssim-sigma", "1.0"]  # fmt: skip


def test_the_reference_comparison_writes_the_study_tidy_csv(tmp_path):
    root = make_study(tmp_path / "study", doses=(1000,)).parent
    recon = json.loads((root / "phase_f/dose_1000_dense_test/manifest.json").read_text())["output_dir"]
    out = tmp_path / "out" / "dose_1000" / "dense" / "test"
    args = compare_args(root, 1000, "dense", "test", out) + ["--tike_recon_path", f"{recon}/ptychi_reconstruction.npz",
                                                             "--register-ptychi-only"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "gridsubmit.demo.compare", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = (out / "comparison_metrics.csv").read_text()
    assert text.startswith("model,metric,amplitude,phase,value\nPtychoPINN,mae,")
    rows, problem, _ = read_metrics(out / "comparison_metrics.csv")
    assert problem is None
    by = {(r["model"], r["metric"]): r for r in rows}
    for model in ("PtychoPINN", "Baseline", "pty-chi"):
        for metric in ("mae", "mse", "psnr", "ssim", "ms_ssim", "frc50"):
            assert by[model, metric]["value"] is None
            assert isinstance(by[model, metric]["amplitude"], float) and isinstance(by[model, metric]["phase"], float)
        assert by[model, "computation_time_s"]["value"] >= 0
        assert 0 < by[model, "ms_ssim"]["amplitude"] <= 1 and 0 < by[model, "ssim"]["phase"] <= 1
    assert by["pty-chi", "computation_time_s"]["value"] == 1.5  # as the reconstruction's metadata recorded it
    # the generator shifts the reconstruction; registration finds it (only pty-chi is registered here)
    assert (by["pty-chi", "registration_offset_dy"]["value"], by["pty-chi", "registration_offset_dx"]["value"]) == (-2.0, 1.0)
    assert ("PtychoPINN", "registration_offset_dy") not in by
    assert all(len(field.split(".")[1]) == 6 for line in text.splitlines()[1:] for field in line.split(",")[2:] if field)


def test_the_comparison_fails_naming_a_reconstruction_that_does_not_exist(tmp_path):
    root = make_study(tmp_path / "study", doses=(1000,)).parent
    missing = tmp_path / "nowhere" / "ptychi_reconstruction.npz"
    args = compare_args(root, 1000, "dense", "test", tmp_path / "out") + ["--tike_recon_path", str(missing)]
    proc = subprocess.run([sys.executable, "-m", "gridsubmit.demo.compare", *args], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "FileNotFoundError" in proc.stderr and str(missing) in proc.stderr
    assert not (tmp_path / "out" / "comparison_metrics.csv").exists()


def test_without_a_reconstruction_only_the_two_networks_are_scored(tmp_path):
    root = make_study(tmp_path / "study", doses=(1000,)).parent
    assert compare.main(compare_args(root, 1000, "dense", "train", tmp_path / "out")) == 0
    rows, _, _ = read_metrics(tmp_path / "out" / "comparison_metrics.csv")
    assert {r["model"] for r in rows} == {"PtychoPINN", "Baseline"}


def test_more_photons_give_a_better_psnr_for_every_model_view_and_channel(tmp_path):
    doses = (1000, 10000, 100000)
    root = make_study(tmp_path / "study", doses=doses).parent
    psnr: dict[tuple, list[float]] = {}
    for view in ("dense", "sparse"):
        for dose in doses:
            out = tmp_path / "out" / f"{dose}_{view}"
            recon = json.loads((root / f"phase_f/dose_{dose}_{view}_test/manifest.json").read_text())["output_dir"]
            args = compare_args(root, dose, view, "test", out, data=f"{view}/{view}_test.npz")  # the view's own data
            assert compare.main(args + ["--tike_recon_path", f"{recon}/ptychi_reconstruction.npz", "--register-ptychi-only"]) == 0
            for r in read_metrics(out / "comparison_metrics.csv")[0]:
                if r["metric"] == "psnr":
                    psnr.setdefault((r["model"], view, "amplitude"), []).append(r["amplitude"])
                    psnr.setdefault((r["model"], view, "phase"), []).append(r["phase"])
    assert len(psnr) == 12
    for key, values in psnr.items():
        assert values == sorted(values) and values[0] + 5 < values[-1], (key, values)
        assert all(math.isfinite(v) for v in values)


def test_ms_ssim_is_one_for_identical_images_and_drops_with_noise():
    rng = np.random.default_rng(0)
    img = rng.uniform(size=(32, 32))
    assert compare.ms_ssim(img, img, 1.0, 1.0) == pytest.approx(1.0)
    noisy = img + 0.1 * rng.normal(size=img.shape)
    noisier = img + 0.3 * rng.normal(size=img.shape)
    assert 0 < compare.ms_ssim(noisier, img, 1.0, 1.0) < compare.ms_ssim(noisy, img, 1.0, 1.0) < 1


def test_status_of_a_packed_cell_shows_its_own_figures_and_its_jobs_as_the_packs():
    from gridsubmit.report import cell_text

    attempt = {"attempt": 1, "state": "COMPLETED", "job_id": "41_0", "returncode": 0, "elapsed_s": 5.0, "cpu_s": 4.9,
               "max_rss_bytes": 10**8, "stdout": "logs/a/stdout.log", "stderr": "logs/a/stderr.log",
               "pack": {"size": 3, "position": 1, "scheduler_state": "OUT_OF_MEMORY", "elapsed": "00:02:00", "max_rss": "7G"}}  # fmt: skip
    cell = {"key": "dose_1000/dense/train", "state": "COMPLETED", "argv": ["true"], "output_dir": "/o", "inputs": {},
            "missing": [], "attempts": [attempt]}  # fmt: skip
    lines = cell_text(cell, Path("/r")).splitlines()
    assert "attempt 1: COMPLETED  job_id=41_0, returncode=0, elapsed_s=5.0, cpu_s=4.9, max_rss_bytes=100000000" in lines[3]
    assert lines[4] == ("    pack: job 41_0 ran 3 cells in turn, this cell #2; the whole job's scheduler_state=OUT_OF_MEMORY, "
                        "elapsed=00:02:00, max_rss=7G")  # fmt: skip
    alone = {**attempt, "pack": None, "elapsed": "00:00:05"}  # a job of one cell: sacct's figures are the cell's
    assert "elapsed=00:00:05" in cell_text({**cell, "attempts": [alone]}, Path("/r")) and "pack:" not in cell_text(
        {**cell, "attempts": [alone]}, Path("/r"))
