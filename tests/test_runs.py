"""`gridsubmit runs`: every run under a folder at a glance, read-only."""

import json
import os

import yaml

from conftest import CELLCMD, cells, load_manifest, rewrite_npz, run_cli, wait_for
from gridsubmit.demo.generate import make_study


def _study(tmp_path, name, behaviours):
    spec = tmp_path / f"{name}.json"
    spec.write_text(json.dumps(behaviours))
    command = ["{python}", str(CELLCMD), str(spec), "dose_{dose}/{view}/{split}", "{output_dir}"]
    return make_study(tmp_path / f"tree-{name}", doses=(1000,), views=("dense",), command=command)


def test_runs_lists_a_finished_a_running_and_a_failed_run_each_as_it_is(tmp_path, capsys):
    profile = tmp_path / "local.yaml"
    profile.write_text(yaml.safe_dump({"backend": "local", "time": "5:00", "max_parallel": 2}))
    base = tmp_path / "runs"
    done, going, failed = base / "done", base / "proj" / "going", base / "proj" / "deep" / "failed"
    assert run_cli("submit", "--study", _study(tmp_path, "ok", {}), "--cluster", profile, "--artifact-root", done, "--quiet") == 0
    assert run_cli("submit", "--study", _study(tmp_path, "bad", {"dose_1000/dense/test": "exit:3"}), "--cluster", profile,
                   "--artifact-root", failed, "--quiet") == 1  # fmt: skip
    assert run_cli("submit", "--study", _study(tmp_path, "slow", {"*": "sleep:60"}), "--cluster", profile,
                   "--artifact-root", going, "--no-wait") == 0  # a background runner drives it  # fmt: skip
    try:
        wait_for(lambda: {c["state"] for c in cells(going).values()} == {"RUNNING"}, what="the cells to run")
        (base / "unreadable").mkdir()
        os.chmod(base / "unreadable", 0)
        (base / "proj" / "deep" / "a" / "b" / "c").mkdir(parents=True)  # deeper than runs looks: never listed
        capsys.readouterr()
        assert run_cli("runs", base, "--json") == 0
        listing = json.loads(capsys.readouterr().out)
        rows = {r["root"]: r for r in listing["runs"]}
        assert sorted(rows) == ["done", "proj/deep/failed", "proj/going"]
        assert rows["done"]["counts"] == {"COMPLETED": 2} and rows["done"]["finished"] and rows["done"]["runner"] is None
        assert rows["proj/deep/failed"]["counts"] == {"COMPLETED": 1, "FAILED": 1} and rows["proj/deep/failed"]["runner"] is None
        assert rows["proj/going"]["counts"] == {"RUNNING": 2} and not rows["proj/going"]["finished"]
        assert rows["proj/going"]["runner"]["command"] == "wait" and rows["proj/going"]["runner"]["pid"] > 0
        for name, row in rows.items():
            manifest = load_manifest(base / name)
            assert row["study"] == "fly64-synthetic" and row["backend"] == "local" and row["cells"] == 2
            assert row["created_at"] == manifest["created_at"] and row["run_id"] == manifest["run_id"]
            assert row["gpu_hours"] is None  # no ledger in these manifests
        if os.geteuid() != 0:  # root reads any folder
            assert any("unreadable" in line for line in listing["unreadable"])
        assert run_cli("runs", base) == 0
        table = capsys.readouterr().out
        lines = {line.split()[0]: line for line in table.splitlines()[2:] if line and not line.startswith("skipped")}
        assert "COMPLETED 2" in lines["done"] and lines["done"].rstrip().endswith("-")
        assert "FAILED 1" in lines["proj/deep/failed"]
        assert "RUNNING 2" in lines["proj/going"] and "wait pid" in lines["proj/going"]
        assert table.splitlines()[0].split() == ["root", "study", "backend", "created", "updated", "cells", "states",
                                                 "gpu_h", "runner"]  # fmt: skip
    finally:
        os.chmod(base / "unreadable", 0o755) if (base / "unreadable").exists() else None
        run_cli("cancel", going)


def test_runs_counts_the_stale_cells_that_status_shows(finished, tmp_path, capsys):
    _, root = finished
    rewrite_npz(cells(root)["dose_1000/dense/train"]["inputs"]["phase_c_npz"])  # one input changed on disk
    capsys.readouterr()
    assert run_cli("status", root) == 0
    assert "12 cells: COMPLETED 12 (1 of them stale" in capsys.readouterr().out
    assert run_cli("runs", tmp_path) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("run "))
    assert "COMPLETED 12 (1 stale)" in line, line
    assert run_cli("runs", tmp_path, "--json") == 0
    [row] = json.loads(capsys.readouterr().out)["runs"]
    assert row["counts"] == {"COMPLETED": 12} and row["stale"] == 1


def test_runs_shows_gpu_hours_once_a_manifest_has_a_ledger(tmp_path, capsys):
    from gridsubmit.runs import describe, runs_table

    root = tmp_path / "r"
    profile = tmp_path / "local.yaml"
    profile.write_text(yaml.safe_dump({"backend": "local", "time": "5:00"}))
    assert run_cli("submit", "--study", _study(tmp_path, "ok", {}), "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    manifest = load_manifest(root)
    manifest["ledger"] = {"gpu_hours": 1.25}
    (root / "comparison_manifest.json").write_text(json.dumps(manifest))
    row = describe(root, tmp_path)
    assert row["gpu_hours"] == 1.25
    assert "1.25" in runs_table({"folder": str(tmp_path), "depth": 3, "runs": [row], "unreadable": []})


def test_runs_of_a_folder_that_does_not_exist_is_a_usage_error(tmp_path, capsys):
    assert run_cli("runs", tmp_path / "nowhere") == 2
    assert "not a folder" in capsys.readouterr().err


def test_runs_defaults_to_the_current_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli("runs") == 0
    assert "no artifact roots" in capsys.readouterr().out
