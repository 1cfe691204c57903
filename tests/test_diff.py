"""`gridsubmit diff`'s engine on real runs of the synthetic study (local backend).

Every run reads the demo study (2 doses x dense/sparse x train/test = 8 cells) and runs the
reference comparison. Its metrics are deterministic, except PtychoPINN's
``computation_time_s``, which the comparison measures anew each time: the diff reports that
timing but does not count it as a change.
"""

import copy
import csv
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from gridsubmit import Filters, GridExecutor, Run, load_study
from gridsubmit.demo.generate import ground_truth, make_study, noisy
from gridsubmit.diff import CSV_FIELDS, HASH_HINT, diff_runs, diff_text, write_diff_csv
from gridsubmit.errors import UsageError

DOSES = (1000, 10000)
ORDER = [f"dose_{d}/{v}/{s}" for d in DOSES for v in ("dense", "sparse") for s in ("train", "test")]
CHANGED = "dose_1000/dense/train"  # the only cell that reads phase_c/dose_1000/patched_train.npz
ONE_CELL = Filters(doses=(1000,), views=("dense",), splits=("test",))


def run(root: Path, study: Path, workdir: Path, filters: Filters = Filters(), hash_inputs: bool = False) -> dict:
    executor = GridExecutor(root)
    grid = executor.plan(load_study(study), filters=filters, workdir=workdir)
    executor.submit(grid, wait=True, timeout=180, hash_inputs=hash_inputs)
    manifest = Run(root).manifest
    assert {c["state"] for c in manifest["jobs"]} == {"COMPLETED"}
    return manifest


def copy_study(src: Path, dst: Path) -> Path:
    """The study tree copied elsewhere, sizes and modification times kept."""
    shutil.copytree(src.parent, dst)
    return dst / src.name


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("diff")
    work = base / "work"  # the cells' working directory: not in a git repository
    work.mkdir()
    study = make_study(base / "study", doses=DOSES)
    return {"base": base, "work": work, "study": study}


@pytest.fixture(scope="module")
def run_a(lab):
    return run(lab["base"] / "a", lab["study"], lab["work"], hash_inputs=True)


@pytest.fixture(scope="module")
def run_changed(lab, run_a):
    """The study copied to another folder, one cell's test data rewritten with other data and
    another cell's touched (same content, new mtime): run with sha256s recorded."""
    study = copy_study(lab["study"], lab["base"] / "study-changed")
    data = study.parent / "phase_c" / "dose_1000" / "patched_train.npz"
    truth = ground_truth()
    np.savez_compressed(data, objectGuess=truth, measurement=noisy(truth, 1000, np.random.default_rng(99)), dose=1000)
    touched = study.parent / "phase_c" / "dose_10000" / "patched_test.npz"
    os.utime(touched, (touched.stat().st_atime, touched.stat().st_mtime + 3600))
    return run(lab["base"] / "changed", study, lab["work"], hash_inputs=True)


def changed_keys(d: dict) -> list[str]:
    return [c["key"] for c in d["cells"] if c["changed"]]


def counted(cell: dict) -> list[dict]:
    """The cell's metric rows that are not timings."""
    return [m for m in cell["metrics"] if not m["timing"]]


def test_two_runs_of_the_same_study_differ_in_nothing_but_timings(lab, run_a):
    run_b = run(lab["base"] / "b", lab["study"], lab["work"], hash_inputs=True)
    d = diff_runs(run_a, run_b)
    assert d["a"] == {"run_id": run_a["run_id"], "artifact_root": run_a["artifact_root"]}
    assert d["b"]["artifact_root"] == run_b["artifact_root"] != d["a"]["artifact_root"]
    assert d["only_in_a"] == d["only_in_b"] == []
    assert [c["key"] for c in d["cells"]] == ORDER
    assert changed_keys(d) == []
    assert d["summary"] == {"cells": 8, "changed": 0, "identical": 8, "only_in_a": 0, "only_in_b": 0,
                            "not_finished_a": 0, "not_finished_b": 0}  # fmt: skip
    assert d["warnings"] == [] and d["not_finished_a"] == d["not_finished_b"] == []
    for cell in d["cells"]:
        assert cell["provenance"] == []  # different artifact roots, same command
        assert (cell["state_a"], cell["state_b"]) == ("COMPLETED", "COMPLETED")
        assert len(cell["metrics"]) == 23  # 3 models: 6 tuple metrics, computation time, pty-chi's 2 offsets
        for m in counted(cell):
            deltas = [m[f"d_{k}"] for k in ("amplitude", "phase", "value")]
            assert not m["differs"] and all(x in (0, None) for x in deltas), m
            # null when a side has no such value: tuple metrics have no value, scalars no pair
            assert (m["a_value"] is None) == (m["d_value"] is None)
    # what is measured anew each run is reported as a timing, never as a change
    timings = [m for cell in d["cells"] for m in cell["metrics"] if m["timing"]]
    assert {m["metric"] for m in timings} == {"computation_time_s"}
    assert all(m["d_value"] == pytest.approx(m["b_value"] - m["a_value"]) for m in timings)
    text = diff_text(d)
    assert "0 of 8 cells differ; 8 identical" in text
    assert not any(key in text for key in ORDER)
    assert all(key in diff_text(d, all_cells=True) for key in ORDER)


def test_a_rewritten_input_changes_exactly_its_cell_and_names_the_input(run_a, run_changed):
    d = diff_runs(run_a, run_changed)
    assert changed_keys(d) == [CHANGED]
    cells = {c["key"]: c for c in d["cells"]}
    cell = cells[CHANGED]
    assert [p["what"] for p in cell["provenance"]] == ["input phase_c_npz"]
    entry = cell["provenance"][0]
    assert entry["a"]["sha256"] != entry["b"]["sha256"] and "sha256" in entry["detail"]
    assert entry["a"]["path"] != entry["b"]["path"]  # another copy of the study; only its content counts
    psnr = {m["model"]: m for m in cell["metrics"] if m["metric"] == "psnr"}
    for model in ("PtychoPINN", "Baseline"):  # both score the rewritten measurement
        assert psnr[model]["d_amplitude"] == pytest.approx(psnr[model]["b_amplitude"] - psnr[model]["a_amplitude"])
        assert psnr[model]["d_amplitude"] != 0 and psnr[model]["differs"]
    # the others read the same content from another folder (one of them touched since): unchanged
    for key in ORDER:
        if key != CHANGED:
            assert cells[key]["provenance"] == [], cells[key]["provenance"]
            assert all(not m["differs"] for m in counted(cells[key]))
    text = diff_text(d)
    assert CHANGED in text and "input phase_c_npz:" in text and "psnr" in text
    assert not any(key in text for key in ORDER if key != CHANGED)
    assert "1 of 8 cells differ; 7 identical" in text


def test_same_size_and_a_new_mtime_without_hashes_is_reported_as_unknown_content(lab):
    first = run(lab["base"] / "mtime-1", lab["study"], lab["work"], filters=ONE_CELL)
    study = copy_study(lab["study"], lab["base"] / "study-touched")
    data = study.parent / "phase_c" / "dose_1000" / "patched_test.npz"
    os.utime(data, (data.stat().st_atime, data.stat().st_mtime + 60))
    second = run(lab["base"] / "mtime-2", study, lab["work"], filters=ONE_CELL)
    d = diff_runs(first, second)
    [cell] = d["cells"]
    assert cell["changed"]
    assert [(p["what"], p["detail"]) for p in cell["provenance"]] == [
        ("input phase_c_npz", f"same size, modified at different times ({HASH_HINT})")]
    assert all(not m["differs"] for m in counted(cell))  # same content after all
    assert "dose_1000/dense/test: changed (COMPLETED); metrics identical" in diff_text(d)


def test_a_changed_option_shows_on_every_cell_and_filtered_runs_list_the_cells_of_one_run_only(lab, run_a):
    overlay = yaml.safe_load(lab["study"].read_text())
    overlay["options"] = {"ms_ssim_sigma": 1.5}
    sigma = lab["study"].parent / "study-sigma.yaml"
    sigma.write_text(yaml.safe_dump(overlay))
    run_f = run(lab["base"] / "sigma", sigma, lab["work"], filters=Filters(doses=(1000,)))
    d = diff_runs(run_a, run_f)
    assert d["only_in_a"] == [k for k in ORDER if k.startswith("dose_10000/")]
    assert d["only_in_b"] == []
    assert [c["key"] for c in d["cells"]] == [k for k in ORDER if k.startswith("dose_1000/")]
    assert changed_keys(d) == [c["key"] for c in d["cells"]]
    for cell in d["cells"]:
        # the argv differs by --ms-ssim-sigma too: that is the option's difference, not another one
        assert [(p["what"], p["a"], p["b"]) for p in cell["provenance"]] == [("option ms_ssim_sigma", 1.0, 1.5)]
        moved = {(m["model"], m["metric"]) for m in counted(cell) if m["differs"]}
        assert moved == {(model, "ms_ssim") for model in ("PtychoPINN", "Baseline", "pty-chi")}
    reverse = diff_runs(run_f, run_a)
    assert reverse["only_in_b"] == d["only_in_a"] and reverse["only_in_a"] == []
    text = diff_text(d)
    assert "only in run A (4): dose_10000/dense/train" in text
    assert "in every cell of both runs (4):\n  option ms_ssim_sigma: 1.0 -> 1.5" in text
    assert "4 of 4 cells differ; 0 identical (4 only in A, 0 only in B)" in text


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_another_commit_and_working_directory_are_named(lab):
    repo = lab["base"] / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "analysis.py").write_text("VERSION = 1\n")
    git(repo, "add", "analysis.py")
    git(repo, "commit", "-q", "-m", "one")
    first = run(lab["base"] / "git-1", lab["study"], repo, filters=ONE_CELL)
    clone = lab["base"] / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    (clone / "analysis.py").write_text("VERSION = 2\n")
    git(clone, "commit", "-q", "-am", "two")
    second = run(lab["base"] / "git-2", lab["study"], clone, filters=ONE_CELL)
    [cell] = diff_runs(first, second)["cells"]
    found = {p["what"]: p for p in cell["provenance"]}
    assert list(found) == ["workdir", "code version"]
    assert (found["workdir"]["a"], found["workdir"]["b"]) == (str(repo), str(clone))
    assert found["code version"]["a"] == {"commit": git(repo, "rev-parse", "HEAD"), "dirty": False}
    assert found["code version"]["b"] == {"commit": git(clone, "rev-parse", "HEAD"), "dirty": False}
    assert cell["changed"] and all(not m["differs"] for m in counted(cell))


def test_csv_has_one_row_per_cell_model_and_metric(tmp_path, run_a, run_changed):
    d = diff_runs(run_a, run_changed)
    path = tmp_path / "diff.csv"
    assert write_diff_csv(d, path) == 8 * 23
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 * 23 and tuple(rows[0]) == CSV_FIELDS
    psnr = next(r for r in rows if (r["dose"], r["view"], r["split"], r["model"], r["metric"])
                == ("1000", "dense", "train", "PtychoPINN", "psnr"))  # fmt: skip
    assert float(psnr["d_amplitude"]) != 0 and psnr["a_value"] == psnr["b_value"] == psnr["d_value"] == ""
    same = next(r for r in rows if (r["dose"], r["view"], r["split"], r["model"], r["metric"])
                == ("10000", "sparse", "test", "pty-chi", "psnr"))  # fmt: skip
    assert float(same["d_amplitude"]) == 0 and same["a_amplitude"] == same["b_amplitude"]
    bad = tmp_path / "no-such-folder" / "diff.csv"
    with pytest.raises(UsageError, match=str(bad)):
        write_diff_csv(d, bad)


def test_attempts_recorded_before_provenance_are_compared_by_what_the_cells_planned(run_a, run_changed):
    old = copy.deepcopy(run_a)
    old.pop("submissions")
    for cell in old["jobs"]:
        for attempt in cell["attempts"]:
            for key in ("argv", "command", "workdir", "options", "inputs", "fingerprint", "submission"):
                attempt.pop(key)
    d = diff_runs(old, run_changed)
    assert [c["key"] for c in d["cells"]] == ORDER
    # without sizes or hashes the rewritten input cannot be told apart: only its metrics show it
    assert changed_keys(d) == [CHANGED]
    assert all(c["provenance"] == [] for c in d["cells"])
    assert any(note.startswith("run A: 8 cells without a record") for note in d["notes"])
    assert any(note.startswith("run A: 8 cells without a submission record") for note in d["notes"])
    assert "note: run A: 8 cells without a record" in diff_text(d)


def test_a_run_still_going_is_warned_about_and_its_unfinished_cells_are_counted_apart_not_as_differences(lab, run_a):
    executor = GridExecutor(lab["base"] / "going")
    going = executor.submit(executor.plan(load_study(lab["study"]), workdir=lab["work"]))  # returns at once
    try:
        b = going.manifest
        unfinished = [c["key"] for c in b["jobs"] if c["state"] not in ("COMPLETED", "FAILED")]
        assert unfinished  # the reference comparison takes longer than handing the grid over
        d = diff_runs(run_a, b)
        assert d["not_finished_b"] == unfinished and d["not_finished_a"] == []
        assert [c["key"] for c in d["cells"]] == [k for k in ORDER if k not in unfinished]  # compared: the ended ones
        assert d["summary"]["cells"] == 8 - len(unfinished) and d["summary"]["not_finished_b"] == len(unfinished)
        assert changed_keys(d) == []  # an unfinished cell is not a difference
        [warning] = d["warnings"]
        assert warning.startswith(f"run B is not finished: {len(unfinished)} of 8 cells have not ended (")
        text = diff_text(d)
        assert f"warning: {warning}" in text.splitlines()
        assert text.splitlines()[-1].endswith("not finished in B: not compared")
        assert f"0 of {8 - len(unfinished)} cells differ" in text and "-/-" not in text
    finally:
        going.wait(timeout=180)


def test_a_run_against_itself_is_warned_about_and_shows_no_code_note(run_a, capsys):
    d = diff_runs(run_a, run_a)
    assert changed_keys(d) == [] and d["notes"] == []
    [warning] = d["warnings"]
    assert warning.startswith(f"A and B are the same run (run {run_a['run_id']}, artifact root {run_a['artifact_root']})")
    assert "nothing can differ" in warning
    from conftest import run_cli

    assert run_cli("diff", run_a["artifact_root"], run_a["artifact_root"]) == 0
    assert f"warning: {warning}" in capsys.readouterr().out
    assert run_cli("diff", run_a["artifact_root"], run_a["artifact_root"], "--json") == 0
    assert "gridsubmit: warning: A and B are the same run" in capsys.readouterr().err
