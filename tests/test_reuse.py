"""Reuse across artifact roots: what another run computed from the same thing is copied, not run."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import jsonschema
import yaml

from conftest import CELLCMD, cells, load_manifest, run_cli
from gridsubmit import Run
from gridsubmit import provenance as prov
from gridsubmit.demo.generate import make_study
from gridsubmit.diff import diff_runs
from gridsubmit.report_html import render_html

SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "manifest.schema.json").read_text())
SHARED = [f"dose_1000/{v}/{s}" for v in ("dense", "sparse") for s in ("train", "test")]
NEW = [f"dose_2000/{v}/{s}" for v in ("dense", "sparse") for s in ("train", "test")]


def runs_of(root: Path, key: str) -> list[str]:
    """The lines cellcmd.py appended to the cell's runs.log: one per run of the command."""
    log = root / key / "runs.log"
    return log.read_text().splitlines() if log.exists() else []


def two_studies(tmp_path):
    """Study A (dose 1000) and study B (doses 1000 and 2000) over the same input files."""
    spec = tmp_path / "behaviours.json"
    spec.write_text("{}")
    command = ["{python}", str(CELLCMD), str(spec), "dose_{dose}/{view}/{split}", "{output_dir}"]
    study_a = make_study(tmp_path / "tree", doses=(1000,), command=command)
    text_a = study_a.read_text()
    make_study(tmp_path / "tree", doses=(2000,), command=command)  # dose 2000's files; dose 1000's stay as they are
    study_a.write_text(text_a)
    data = yaml.safe_load(text_a)
    data["doses"] = [1000, 2000]
    study_b = tmp_path / "tree" / "study-b.yaml"
    study_b.write_text(yaml.safe_dump(data, sort_keys=False))
    profile = tmp_path / "local.yaml"
    profile.write_text(yaml.safe_dump({"backend": "local", "time": "5:00", "max_parallel": 2}))
    return study_a, study_b, profile


def test_a_second_root_reuses_the_cells_it_shares_and_runs_the_new_dose_then_only_what_read_a_changed_input(tmp_path, capsys):
    study_a, study_b, profile = two_studies(tmp_path)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run_cli("submit", "--study", study_a, "--cluster", profile, "--artifact-root", a, "--quiet") == 0
    assert all(len(runs_of(a, key)) == 1 for key in SHARED)
    capsys.readouterr()

    assert run_cli("submit", "--study", study_b, "--cluster", profile, "--artifact-root", b, "--reuse-from", a, "--quiet") == 0
    out = capsys.readouterr().out
    assert "reused 4 cell(s)" in out and "ran now: 4" in out and "reused from other runs: 4" in out
    cb = cells(b)
    assert {cb[k]["state"] for k in cb} == {"COMPLETED"}
    for key in SHARED:  # not run: no new line anywhere, the copy holds A's one line
        assert len(runs_of(a, key)) == 1
        assert runs_of(b, key) == runs_of(a, key)
        last = cb[key]["attempts"][-1]
        assert last["reused"]["root"] == str(a) and last["reused"]["cell"] == key and last["reused"]["attempt"] == 1
        assert last["job_id"] is None and not (b / last["dir"] / "result.json").exists()
        assert cb[key]["metrics"] == cells(a)[key]["metrics"]
        assert (b / key / "comparison_metrics.csv").read_bytes() == (a / key / "comparison_metrics.csv").read_bytes()
    for key in NEW:  # new: run here, once
        assert len(runs_of(b, key)) == 1 and "reused" not in cb[key]["attempts"][-1]
    manifest_b = load_manifest(b)
    jsonschema.validate(manifest_b, SCHEMA)
    entry = manifest_b["submissions"][-1]["reuse"]
    assert entry["from"] == [str(a)] and sorted(entry["reused"]) == sorted(SHARED) and entry["refused"] == {}
    assert sorted(entry["reused"]) == sorted(set(SHARED))
    assert sorted(manifest_b["submissions"][-1]["submitted"]) == sorted(NEW)

    # every view says which cells were reused
    assert run_cli("status", b) == 0
    status = capsys.readouterr().out
    assert all(f"reused from {a}" in line for line in status.splitlines() if line.startswith("dose_1000/"))
    assert not any("reused" in line for line in status.splitlines() if line.startswith("dose_2000/"))
    assert run_cli("report", b) == 0
    assert "4 of them reused from other runs" in capsys.readouterr().out
    assert "reused from" in render_html(Run.open(b).manifest)
    d = diff_runs(Run.open(a).manifest, Run.open(b).manifest)  # a copy is equal to its source
    assert d["summary"]["changed"] == 0 and {c["reused"] for c in d["cells"]} == {"B reused A"}

    # one input changes: the cell that reads it runs, the others are copied
    changed = tmp_path / "tree" / "phase_c" / "dose_1000" / "patched_test.npz"  # the dense view's test data
    changed.write_bytes(changed.read_bytes() + b"\0")
    capsys.readouterr()
    assert run_cli("submit", "--study", study_b, "--cluster", profile, "--artifact-root", c,
                   "--reuse-from", a, "--reuse-from", b, "--quiet") == 0  # fmt: skip
    cc = cells(c)
    assert {cc[k]["state"] for k in cc} == {"COMPLETED"}
    assert len(runs_of(c, "dose_1000/dense/test")) == 1 and runs_of(c, "dose_1000/dense/test") != runs_of(a, "dose_1000/dense/test")
    assert "reused" not in cc["dose_1000/dense/test"]["attempts"][-1]
    for key in set(SHARED + NEW) - {"dose_1000/dense/test"}:
        assert cc[key]["attempts"][-1]["reused"]["root"] == str(a if key in SHARED else b)
        assert runs_of(c, key) == runs_of(a if key in SHARED else b, key)
    assert len(runs_of(a, "dose_1000/dense/test")) == 1 and len(runs_of(b, "dose_1000/dense/test")) == 1


def test_a_source_whose_output_folder_changed_since_its_attempt_ended_is_run_not_reused_and_says_why(tmp_path, capsys):
    study_a, _, profile = two_studies(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("submit", "--study", study_a, "--cluster", profile, "--artifact-root", a, "--quiet") == 0
    touched = a / "dose_1000/sparse/train" / "comparison_metrics.csv"
    touched.write_text(touched.read_text().replace("30.5", "99.9"))  # edited by hand after the run
    capsys.readouterr()
    assert run_cli("submit", "--study", study_a, "--cluster", profile, "--artifact-root", b, "--reuse-from", a, "--quiet") == 0
    out = capsys.readouterr().out
    assert "dose_1000/sparse/train: " in out and "output folder changed since the attempt ended" in out
    assert "comparison_metrics.csv: content differs" in out
    cb = cells(b)
    assert "reused" not in cb["dose_1000/sparse/train"]["attempts"][-1]
    assert len(runs_of(b, "dose_1000/sparse/train")) == 1 and runs_of(b, "dose_1000/sparse/train") != runs_of(a, "dose_1000/sparse/train")
    assert "99.9" not in (b / "dose_1000/sparse/train" / "comparison_metrics.csv").read_text()
    refused = load_manifest(b)["submissions"][-1]["reuse"]["refused"]
    assert list(refused) == ["dose_1000/sparse/train"] and str(a) in refused["dose_1000/sparse/train"]
    assert all("reused" in cb[k]["attempts"][-1] for k in SHARED if k != "dose_1000/sparse/train")


def test_an_edit_that_keeps_a_source_file_s_size_and_time_is_seen_by_its_content_and_the_cell_runs(tmp_path, capsys):
    """An audit changes a metrics figure in place, at the same size, and puts the file's time
    back as `touch -r` does: the listing is as recorded, the content is not."""
    study_a, _, profile = two_studies(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("submit", "--study", study_a, "--cluster", profile, "--artifact-root", a, "--quiet") == 0
    key = "dose_1000/sparse/train"
    metrics = a / key / "comparison_metrics.csv"
    before = metrics.stat()
    metrics.write_text(metrics.read_text().replace("30.5", "77.5"))
    os.utime(metrics, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.utime(a / "dose_1000/dense/test" / "runs.log")  # touched, not changed: still reused
    recorded = cells(a)[key]["attempts"][-1]["outputs"]
    assert prov.outputs_record(a / key)["digest"] == recorded["digest"]  # the listing: sizes and times as recorded
    capsys.readouterr()
    assert run_cli("submit", "--study", study_a, "--cluster", profile, "--artifact-root", b, "--reuse-from", a, "--quiet") == 0
    out = capsys.readouterr().out
    assert f"{key}: {a} {key} attempt 1: its output folder changed since the attempt ended" in out
    assert "comparison_metrics.csv: content differs" in out
    cb = cells(b)
    assert "reused" not in cb[key]["attempts"][-1] and len(runs_of(b, key)) == 1 and runs_of(b, key) != runs_of(a, key)
    assert "77.5" not in (b / key / "comparison_metrics.csv").read_text() and "77.5" not in json.dumps(cb[key]["metrics"])
    for other in set(SHARED) - {key}:  # unchanged sources are still reused, their copies read back
        last = cb[other]["attempts"][-1]
        assert last["reused"]["root"] == str(a) and len(runs_of(b, other)) == 1
        assert last["outputs"]["sha256"] == cells(a)[other]["attempts"][-1]["outputs"]["sha256"]
        assert sorted(last["outputs"]["sha256"]) == ["comparison_metrics.csv", "runs.log"]


def test_the_outputs_record_holds_each_file_s_content_digest_and_never_opens_a_fifo(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "recon.npz").write_bytes(b"\0" * (5 << 20))  # more than one chunk
    (tmp_path / "comparison_metrics.csv").write_text("model,mae,psnr\npinn,0.1,30.5\n")
    os.symlink("comparison_metrics.csv", tmp_path / "latest.csv")
    os.mkfifo(tmp_path / "pipe")  # opening it would wait for a writer
    record = prov.outputs_record(tmp_path)
    assert record["files"] == 4 and record["sha256"] == {
        "comparison_metrics.csv": hashlib.sha256(b"model,mae,psnr\npinn,0.1,30.5\n").hexdigest()[:16],
        "latest.csv": hashlib.sha256(b"comparison_metrics.csv").hexdigest()[:16],  # a link: its target, as copied
        "pipe": None,  # nothing to confirm: a source holding it is not reused
        "sub/recon.npz": hashlib.sha256(b"\0" * (5 << 20)).hexdigest()[:16]}  # fmt: skip


def test_a_source_recorded_before_content_checks_is_run_not_reused(tmp_path, capsys):
    study_a, _, profile = two_studies(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("submit", "--study", study_a, "--cluster", profile, "--artifact-root", a, "--quiet") == 0
    manifest = load_manifest(a)
    for cell in manifest["jobs"]:  # as an older gridsubmit wrote it: sizes and times only
        for attempt in cell["attempts"]:
            attempt["outputs"].pop("sha256")
    (a / "comparison_manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert run_cli("submit", "--study", study_a, "--cluster", profile, "--artifact-root", b, "--reuse-from", a, "--quiet") == 0
    assert "predates content checks" in capsys.readouterr().out
    refused = load_manifest(b)["submissions"][-1]["reuse"]["refused"]
    assert sorted(refused) == sorted(SHARED) and all("predates content checks" in why for why in refused.values())
    assert all(len(runs_of(b, k)) == 1 and runs_of(b, k) != runs_of(a, k) for k in SHARED)


def test_a_copy_that_is_not_what_the_source_wrote_is_refused_and_the_cell_runs(tmp_path, monkeypatch):
    from gridsubmit import GridExecutor, load_study

    study_a, _, profile = two_studies(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("submit", "--study", study_a, "--cluster", profile, "--artifact-root", a, "--quiet") == 0
    copytree = shutil.copytree

    def bad_copy(src, dst, **kw):  # a copy that goes wrong after the source was confirmed
        copytree(src, dst, **kw)
        with open(Path(dst) / "comparison_metrics.csv", "a") as fh:
            fh.write("pinn,0.1,77.5\n")

    monkeypatch.setattr(shutil, "copytree", bad_copy)
    executor = GridExecutor(b, profile)
    run = executor.submit(executor.plan(load_study(study_a)), wait=True, reuse_from=[a], timeout=120)
    assert run.exit_status == 0
    refused = run.manifest["submissions"][-1]["reuse"]["refused"]
    assert sorted(refused) == sorted(SHARED)
    assert all("the copy is not what the attempt wrote (comparison_metrics.csv: content differs)" in why for why in refused.values())
    for key in SHARED:
        assert len(runs_of(b, key)) == 1 and "77.5" not in (b / key / "comparison_metrics.csv").read_text()


def test_a_stale_source_cell_is_not_reused(tmp_path, capsys):
    """Run A's study file gets another command after A ran: A's cells are stale there, and a run
    of the old study (the command they ran, the same inputs) does not take them."""
    study_a, _, profile = two_studies(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    original = study_a.read_text()
    assert run_cli("submit", "--study", study_a, "--cluster", profile, "--artifact-root", a, "--quiet") == 0
    old = tmp_path / "tree" / "study-old.yaml"
    old.write_text(original)
    data = yaml.safe_load(original)
    data["command"] = [*data["command"], "--extra"]
    study_a.write_text(yaml.safe_dump(data, sort_keys=False))
    assert Run.open(a).stale()  # judged stale where it lives
    capsys.readouterr()
    assert run_cli("submit", "--study", old, "--cluster", profile, "--artifact-root", b, "--reuse-from", a, "--quiet") == 0
    refused = load_manifest(b)["submissions"][-1]["reuse"]["refused"]
    assert sorted(refused) == sorted(SHARED) and all("stale in its run" in why for why in refused.values())
    assert all(len(runs_of(b, k)) == 1 and runs_of(b, k) != runs_of(a, k) for k in SHARED)


def test_reuse_from_the_python_api_and_a_root_without_a_run_is_refused(tmp_path):
    from gridsubmit import GridExecutor, UsageError, load_study

    study_a, study_b, profile = two_studies(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("submit", "--study", study_a, "--cluster", profile, "--artifact-root", a, "--quiet") == 0
    executor = GridExecutor(b, profile)
    grid = executor.plan(load_study(study_b))
    try:
        executor.submit(grid, wait=True, reuse_from=[tmp_path / "nothing"])
        raise AssertionError("a root without a run was accepted")
    except UsageError as exc:
        assert "nothing" in str(exc)
    assert not (b / "comparison_manifest.json").exists()
    run = executor.submit(grid, wait=True, reuse_from=[a], timeout=120)
    assert run.exit_status == 0
    assert sum(1 for c in run.manifest["jobs"] if c["attempts"][-1].get("reused")) == 4
    assert os.path.samefile(Path(run.manifest["jobs"][0]["attempts"][-1]["reused"]["root"]), a)
