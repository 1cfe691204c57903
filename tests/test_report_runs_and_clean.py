"""Several runs in one report, and clean of superseded attempts."""

import csv
import json
import os
from pathlib import Path

import jsonschema
import yaml

from conftest import CELLCMD, cells, load_manifest, run_cli
from gridsubmit import Run
from gridsubmit.demo.generate import make_study
from gridsubmit.provenance import local_time

SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "manifest.schema.json").read_text())


def test_report_of_two_runs_writes_one_csv_with_a_run_column_and_one_plot(tmp_path, capsys):
    study = make_study(tmp_path / "tree", doses=(1000, 10000, 100000))  # the reference comparison: real metrics
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("submit", "--study", study, "--artifact-root", a, "--quiet") == 0
    assert run_cli("submit", "--study", study, "--artifact-root", b, "--dose", 1000, "--dose", 10000, "--quiet") == 0
    capsys.readouterr()
    out_csv, out_png = tmp_path / "both.csv", tmp_path / "both.png"
    assert run_cli("report", a, b, "--csv", out_csv, "--plot", out_png) == 0
    text = capsys.readouterr().out
    assert f"== run {a}:" in text and f"== run {b}:" in text
    rows = list(csv.DictReader(out_csv.open()))
    assert list(rows[0]) == ["run", "study", "created", "dose", "view", "split", "model", "metric", "amplitude", "phase", "value"]
    by_run = {run: [r for r in rows if r["run"] == run] for run in (str(a), str(b))}
    assert by_run[str(a)] and by_run[str(b)] and len(rows) == len(by_run[str(a)]) + len(by_run[str(b)])
    assert {r["dose"] for r in by_run[str(a)]} == {"1000", "10000", "100000"}
    assert {r["dose"] for r in by_run[str(b)]} == {"1000", "10000"}
    assert {r["study"] for r in rows} == {"fly64-synthetic"}
    for run in (a, b):
        assert {r["created"] for r in by_run[str(run)]} == {local_time(load_manifest(run)["created_at"])}
    # the same rows as each run's own CSV, with the run's columns in front
    single = tmp_path / "a.csv"
    assert run_cli("report", a, "--csv", single) == 0
    assert [{k: r[k] for k in r if k not in ("run", "study", "created")} for r in by_run[str(a)]] == list(csv.DictReader(single.open()))
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from gridsubmit import report

    fig = report.plot(None, tmp_path / "again.png", runs=[(str(a), Run.open(a).manifest), (str(b), Run.open(b).manifest)])
    styles = {}
    for line in fig.axes[0].lines:
        if line.get_label().startswith("_"):
            continue
        styles.setdefault(line.get_label().rsplit(" · ", 1)[1], set()).add(line.get_linestyle())
    assert styles == {str(a): {"-"}, str(b): {"--"}}  # one line style per run
    capsys.readouterr()
    assert run_cli("report", a, b, "--html", tmp_path / "x.html") == 2
    assert "--html: one run only" in capsys.readouterr().err
    for flags in (["--json"], ["--compare", "psnr"], ["--reference", "Baseline"], ["--require-consistent"]):
        assert run_cli("report", a, b, *flags) == 2, flags  # never silently left out
        assert f"{flags[0]}: one run only" in capsys.readouterr().err


def test_report_of_the_same_run_given_twice_exits_2_naming_it_and_writes_nothing(finished, tmp_path, capsys):
    _, root = finished
    (tmp_path / "link").symlink_to(root)
    out_csv = tmp_path / "both.csv"
    capsys.readouterr()
    assert run_cli("report", root, root, "--csv", out_csv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"gridsubmit: error: {root} is given twice: give each run once\n"
    assert run_cli("report", root, tmp_path / "link", "--csv", out_csv) == 2
    assert f"{tmp_path / 'link'} and {root} are the same run ({root})" in capsys.readouterr().err
    assert not out_csv.exists()


def test_clean_removes_superseded_attempts_freeing_what_the_dry_run_said_and_every_view_still_works(tmp_path, capsys):
    spec = tmp_path / "behaviours.json"
    spec.write_text(json.dumps({"dose_1000/dense/train": "big:200000", "dose_1000/sparse/test": "sleep-ok:0.2"}))
    command = ["{python}", str(CELLCMD), str(spec), "dose_{dose}/{view}/{split}", "{output_dir}"]
    study = make_study(tmp_path / "tree", doses=(1000,), command=command)
    profile = tmp_path / "local.yaml"
    profile.write_text(yaml.safe_dump({"backend": "local", "time": "5:00", "max_parallel": 2}))
    root = tmp_path / "run"
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 1
    spec.write_text("{}")  # fixed: the failed cell runs again; one COMPLETED cell is rerun too
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--rerun-failed",
                   "--rerun", "dose_1000/sparse/test", "--quiet") == 0  # fmt: skip
    old_dirs = [root / cells(root)[k]["attempts"][0]["dir"] for k in ("dose_1000/dense/train", "dose_1000/sparse/test")]
    kept = [root / a["dir"] for c in cells(root).values() for a in c["attempts"][-1:]]
    assert all(d.is_dir() for d in old_dirs + kept)

    def logs_bytes() -> int:  # the attempt folders (the manifest grows by the clean's record)
        return sum(os.lstat(os.path.join(here, f)).st_size for here, _, files in os.walk(root / "logs") for f in files)

    capsys.readouterr()
    assert run_cli("clean", root, "--dry-run", "--json") == 0
    dry = json.loads(capsys.readouterr().out)
    assert sorted((x["cell"], x["attempt"]) for x in dry["attempts"]) == [("dose_1000/dense/train", 1), ("dose_1000/sparse/test", 1)]
    assert dry["bytes"] > 200000 and all(d.is_dir() for d in old_dirs)  # the failed attempt's big stdout, still there
    before = logs_bytes()
    assert run_cli("clean", root, "--json") == 0
    done = json.loads(capsys.readouterr().out)
    assert done["bytes"] == dry["bytes"] == before - logs_bytes()
    assert not any(d.exists() for d in old_dirs) and all(d.is_dir() for d in kept)
    manifest = load_manifest(root)
    jsonschema.validate(manifest, SCHEMA)
    assert manifest["cleanups"][-1]["bytes"] == dry["bytes"] and len(manifest["cleanups"][-1]["attempts"]) == 2
    c = cells(root)
    assert c["dose_1000/dense/train"]["attempts"][0]["cleaned_at"] and "cleaned_at" not in c["dose_1000/dense/train"]["attempts"][1]
    assert c["dose_1000/dense/train"]["attempts"][0]["stderr_tail"] == manifest["jobs"][0]["attempts"][0]["stderr_tail"]
    # every view still works
    assert run_cli("status", root) == 0 and run_cli("report", root) == 0 and run_cli("diff", root, root) == 0
    assert run_cli("status", root, "dose_1000/dense/train") == 0
    assert "removed by `gridsubmit clean`" in capsys.readouterr().out
    assert run_cli("logs", root, "dose_1000/dense/train", "--attempt", "1") == 1
    assert "`gridsubmit clean` removed" in capsys.readouterr().err
    assert run_cli("clean", root, "--dry-run") == 0
    assert "nothing to remove" in capsys.readouterr().out


def test_clean_while_a_runner_holds_the_root_removes_only_what_nothing_uses_and_the_runner_records_it(tmp_path, capsys):
    spec = tmp_path / "behaviours.json"
    spec.write_text(json.dumps({"dose_1000/dense/train": "exit:1"}))
    command = ["{python}", str(CELLCMD), str(spec), "dose_{dose}/{view}/{split}", "{output_dir}"]
    study = make_study(tmp_path / "tree", doses=(1000,), views=("dense",), command=command)
    profile = tmp_path / "local.yaml"
    profile.write_text(yaml.safe_dump({"backend": "local", "time": "5:00", "max_parallel": 2}))
    root = tmp_path / "run"
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 1
    spec.write_text(json.dumps({"*": "sleep:60"}))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--rerun-failed",
                   "--no-wait") == 0  # a background runner holds the root while the rerun sleeps  # fmt: skip
    from conftest import wait_for

    try:
        wait_for(lambda: cells(root)["dose_1000/dense/train"]["state"] == "RUNNING", what="the rerun to run")
        first = root / cells(root)["dose_1000/dense/train"]["attempts"][0]["dir"]
        running = root / cells(root)["dose_1000/dense/train"]["attempts"][1]["dir"]
        capsys.readouterr()
        assert run_cli("clean", root, "--json") == 0
        out = json.loads(capsys.readouterr().out)
        assert [(x["cell"], x["attempt"]) for x in out["attempts"]] == [("dose_1000/dense/train", 1)]
        assert out["recorded"] == "manifest"  # the runner folded it in
        assert not first.exists() and running.is_dir()
        assert cells(root)["dose_1000/dense/train"]["attempts"][0]["cleaned_at"]
        assert load_manifest(root)["cleanups"][-1]["attempts"] == [{"cell": "dose_1000/dense/train", "attempt": 1}]
    finally:
        run_cli("cancel", root)
    assert len(load_manifest(root)["cleanups"]) == 1  # folded in once
