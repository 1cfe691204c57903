"""The study's answer at a glance: report --compare, its CSV, and the HTML page a user opens."""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import load_manifest
from gridsubmit import compare
from gridsubmit.errors import UsageError
from study_layout import FAIL_FILE, build_study_tree, make_study_repo, studylib_env

GRIDSUBMIT = [sys.executable, "-m", "gridsubmit"]
FAILED = "dose_1000/sparse/test"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
SHOTS = os.environ.get("GRIDSUBMIT_SCREENSHOTS")  # a folder to keep the screenshots in, to look at them


def gridsubmit(*args, cwd):
    return subprocess.run([*GRIDSUBMIT, *map(str, args)], cwd=cwd, env=studylib_env(), capture_output=True, text=True,
                          timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    """The stand-in study over doses 500 and 1000 (PtychoPINN, Baseline, pty-chi), one cell failing."""
    tmp = tmp_path_factory.mktemp("compare")
    roots = build_study_tree(tmp / "artifacts", doses=(500, 1000))
    repo = make_study_repo(tmp / "PtychoPINN")
    (repo / FAIL_FILE).write_text(FAILED + "\n")
    flags = [f"--{name.replace('_', '-')}-root={path}" for name, path in roots.items()]
    root = tmp / "run"
    proc = gridsubmit("submit", *flags, "--artifact-root", root, "--quiet", cwd=repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return root, tmp


def values(root, metric, part):
    """(dose, view, split) -> model -> value, from the manifest's own metrics."""
    out = {}
    for cell in load_manifest(root)["jobs"]:
        for row in cell["metrics"] or []:
            if row["metric"] == metric:
                out.setdefault((cell["dose"], cell["view"], cell["split"]), {})[row["model"]] = row[part]
    return out


def test_report_compare_puts_the_models_side_by_side_with_the_best_marked_and_missing_cells_shown(study_run):
    root, tmp = study_run
    proc = gridsubmit("report", root, "--compare", "psnr:phase", "--compare", "mae", "--reference", "Baseline", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    psnr = text[text.index("psnr (phase): higher is better"):text.index("mae (amplitude)")]
    lines = psnr.splitlines()
    assert lines[1].split() == ["dose", "view", "split", "PtychoPINN", "Baseline", "pty-chi", "PtychoPINN-Baseline", "pty-chi-Baseline"]
    rows = {tuple(line.split()[:3]): line.split()[3:] for line in lines[3:] if line.strip()}
    assert len(rows) == 8
    assert rows[("1000", "sparse", "test")] == ["missing", "(failed)"]
    for (dose, view, split), by_model in values(root, "psnr", "phase").items():
        shown = rows[(str(dose), view, split)]
        best = max(by_model, key=by_model.get)
        marked = [m for m, v in zip(("PtychoPINN", "Baseline", "pty-chi"), shown) if v.endswith("*")]
        assert marked == [best]
        assert float(shown[3]) == pytest.approx(by_model["PtychoPINN"] - by_model["Baseline"], abs=1e-3)
    mae = text[text.index("mae (amplitude): lower is better"):]
    rows = {tuple(line.split()[:3]): line.split()[3:] for line in mae.splitlines()[3:] if line.strip()}
    for (dose, view, split), by_model in values(root, "mae", "amplitude").items():
        assert [m for m, v in zip(("PtychoPINN", "Baseline", "pty-chi"), rows[(str(dose), view, split)]) if v.endswith("*")] == [
            min(by_model, key=by_model.get)]

    out = tmp / "compare.csv"
    proc = gridsubmit("report", root, "--compare", "ssim:amplitude", "--reference", "Baseline", "--csv", out, cwd=tmp)
    assert proc.returncode == 0 and f"wrote 8 row(s) to {out}" in proc.stdout
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0]) == ["dose", "view", "split", "metric", "part", "PtychoPINN", "Baseline", "pty-chi", "best", "missing",
                             "PtychoPINN-Baseline", "pty-chi-Baseline"]  # fmt: skip
    failed = next(r for r in rows if (r["dose"], r["view"], r["split"]) == ("1000", "sparse", "test"))
    assert failed["missing"] == "failed" and failed["PtychoPINN"] == "" and failed["best"] == ""
    ssim = values(root, "ssim", "amplitude")
    for r in rows:
        if not r["missing"]:
            by_model = ssim[(int(r["dose"]), r["view"], r["split"])]
            assert r["best"] == max(by_model, key=by_model.get) and float(r["Baseline"]) == pytest.approx(by_model["Baseline"])

    data = json.loads(gridsubmit("report", root, "--json", "--compare", "frc50:phase", cwd=tmp).stdout)
    [table] = data["compare"]
    assert table["metric"] == "frc50" and table["better"] == "higher" and len(table["rows"]) == 8
    bad = gridsubmit("report", root, "--compare", "psnr:both", cwd=tmp)
    assert bad.returncode == 2 and "METRIC[:amplitude|phase]" in bad.stderr
    bad = gridsubmit("report", root, "--compare", "psnr", "--reference", "Tike", cwd=tmp)
    assert bad.returncode == 2 and "no such model" in bad.stderr and "PtychoPINN" in bad.stderr


def test_a_single_value_metric_has_no_amplitude_or_phase_label_and_takes_no_part(study_run):
    root, tmp = study_run
    proc = gridsubmit("report", root, "--compare", "computation_time_s", "--reference", "Baseline", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    title = next(line for line in proc.stdout.splitlines() if line.startswith("computation_time_s"))
    assert title == "computation_time_s: no known better direction; differences from Baseline"
    times = values(root, "computation_time_s", "value")
    rows = {tuple(line.split()[:3]): line.split()[3:] for line in proc.stdout[proc.stdout.index(title):].splitlines()[3:]}
    assert float(rows[("500", "dense", "train")][1]) == pytest.approx(times[(500, "dense", "train")]["Baseline"], abs=1e-3)
    out = tmp / "time.csv"
    assert gridsubmit("report", root, "--compare", "computation_time_s", "--csv", out, cwd=tmp).returncode == 0
    assert {r["part"] for r in csv.DictReader(open(out))} == {"value"}
    data = json.loads(gridsubmit("report", root, "--json", "--compare", "registration-offset-dy", cwd=tmp).stdout)
    assert [(t["metric"], t["part"]) for t in data["compare"]] == [("registration_offset_dy", "value")]
    bad = gridsubmit("report", root, "--compare", "computation_time_s:phase", cwd=tmp)
    assert bad.returncode == 2 and bad.stdout == ""
    assert "computation_time_s is a single value, not an amplitude/phase pair" in bad.stderr


def test_compare_of_a_metric_the_run_does_not_have_exits_2_naming_it_and_the_runs_metrics(study_run):
    root, tmp = study_run
    bad = gridsubmit("report", root, "--compare", "nosuch", "--compare", "psnr", cwd=tmp)
    assert bad.returncode == 2 and bad.stdout == "", bad.stdout
    assert "no metric 'nosuch'" in bad.stderr
    listed = bad.stderr.split("its metrics: ")[1].strip().split(", ")
    assert {"psnr", "ssim", "computation_time_s", "registration_offset_dy"} <= set(listed), listed


def test_a_metric_of_no_known_direction_marks_nothing():
    manifest = {"jobs": [{"key": "a", "dose": 1, "view": "v", "split": "s", "state": "COMPLETED", "attempts": [{}],
                          "metrics": [{"model": "m", "metric": "registration_offset_dy", "amplitude": None, "phase": None,
                                       "value": 1.0}]}]}  # fmt: skip
    t = compare.table(manifest, ["a"], "registration_offset_dy")
    assert t["better"] is None and t["rows"][0]["best"] == [] and t["rows"][0]["values"] == {"m": 1.0}
    with pytest.raises(UsageError):
        compare.parse_spec("psnr:magnitude")


@pytest.mark.skipif(not CHROMIUM, reason="no chromium on PATH")
def test_the_html_page_opens_with_the_answer_as_a_user_sees_it(study_run):
    from PIL import Image

    root, tmp = study_run
    page = tmp / "report.html"
    proc = gridsubmit("report", root, "--html", page, "--reference", "Baseline", "--colour-by", "gpu", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    shot = tmp / "report.png"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp / 'profile'}"]
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,1500", page.as_uri()],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    # the answer first: PSNR, SSIM and MS-SSIM, amplitude beside phase, above the grid and the raw metrics
    titles = [f'<h3 class="answer">{m}</h3>' for m in ("PSNR", "SSIM", "MS-SSIM")]
    positions = [dom.index(t) for t in titles]
    assert positions == sorted(positions) and positions[-1] < dom.index('id="grid"') < dom.index('id="metrics"')
    assert dom.count("<table class=\"answer\">") == 3 and dom.count("Δ PtychoPINN") == 6
    assert dom.count(">amplitude</th>") == 3 and dom.count(">phase</th>") == 3
    assert dom.count("missing (failed)") == 3  # the failed cell in every table
    assert dom.index('id="comparability"') < dom.index('id="gpu-hours"') < dom.index('id="metrics"')
    assert "Coloured by GPU model" in dom
    with Image.open(shot) as image:
        assert image.size == (1200, 1500)
        rgb = image.convert("RGB")
        top = rgb.crop((0, 0, 1200, 700))  # what a user sees first
        best = sum(n for n, colour in top.getcolors(1 << 20) if colour == (0xD9, 0xF2, 0xDC))
        assert best > 2000  # the best cells' green, in the tables at the top of the page
    if SHOTS:
        shutil.copy(shot, os.path.join(SHOTS, "report.png"))
