"""Progress from Python, and knobs that override the profile for one run."""

import json
import logging
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import CELLCMD, cells, load_manifest, run_cli
from gridsubmit import Run, execute_comparison_jobs
from gridsubmit.demo.generate import make_study
from gridsubmit.progress import ProgressEvent
from studyrepo.studies.fly64_dose_overlap.comparison import ComparisonJob  # the study's own job


def comparison_jobs(tree: Path, doses) -> list[ComparisonJob]:
    return [ComparisonJob(dose, view, split,
                          tree / f"phase_c/dose_{dose}" / (f"patched_{split}.npz" if view == "dense" else f"{view}/{view}_{split}.npz"),
                          tree / f"phase_e/dose_{dose}/{view}/gs2/wts.h5.zip", tree / f"phase_e/dose_{dose}/baseline/gs1/wts.h5.zip",
                          tree / f"phase_f/dose_{dose}_{view}_{split}/manifest.json")
            for dose in doses for view in ("dense", "sparse") for split in ("train", "test")]  # fmt: skip

SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "manifest.schema.json").read_text())


def test_execute_comparison_jobs_tells_a_progress_callback_of_every_cells_end(tmp_path, caplog):
    tree = make_study(tmp_path / "tree", doses=(1000, 10000)).parent
    jobs = comparison_jobs(tree, doses=(1000, 10000))
    events: list[ProgressEvent] = []
    with caplog.at_level(logging.INFO, logger="gridsubmit"):
        manifest = execute_comparison_jobs(jobs=jobs, artifact_root=tmp_path / "out", study=tree / "study.yaml",
                                           cluster={"backend": "local", "time": "5:00", "max_parallel": 2},
                                           progress=events.append)  # fmt: skip
    assert manifest["n_success"] == len(jobs) == 8
    ended = [e for e in events if e.kind == "ended"]
    assert sorted(e.key for e in ended) == sorted(f"dose_{j.dose}/{j.view}/{j.split}" for j in jobs)
    assert {e.state for e in ended} == {"COMPLETED"} and {e.attempt for e in ended} == {1}
    summaries = [e for e in events if e.kind == "summary"]
    assert summaries and summaries[-1].counts == {"COMPLETED": 8} and summaries[-1].total == 8
    # the default reader: the `gridsubmit` logger, one line per end
    logged = [r.getMessage() for r in caplog.records if r.name == "gridsubmit"]
    assert sum(": COMPLETED (rc 0" in line for line in logged) == 8 and logged[-1] == "8 cells: COMPLETED 8"

    # called again into the same root: nothing ran, nothing is reported as if it had
    again: list[ProgressEvent] = []
    execute_comparison_jobs(jobs=jobs, artifact_root=tmp_path / "out", study=tree / "study.yaml",
                            cluster={"backend": "local", "time": "5:00"}, progress=again.append)  # fmt: skip
    assert not [e for e in again if e.kind == "ended"]


def test_run_wait_takes_a_progress_callable(tmp_path):
    from gridsubmit import GridExecutor, load_study

    study = make_study(tmp_path / "tree", doses=(1000,))
    executor = GridExecutor(tmp_path / "run", {"backend": "local", "time": "5:00", "max_parallel": 2})
    seen: list[ProgressEvent] = []
    run = executor.submit(executor.plan(load_study(study)), wait=True, progress=seen.append)
    assert sorted(e.key for e in seen if e.kind == "ended") == sorted(c["key"] for c in run.manifest["jobs"])
    later: list[ProgressEvent] = []
    Run(tmp_path / "run").wait(progress=later.append)  # finished: nothing new
    assert not [e for e in later if e.kind == "ended"] and later[-1].kind == "summary"


def _scripted(tmp_path, behaviours, **profile):
    spec = tmp_path / "behaviours.json"
    spec.write_text(json.dumps(behaviours))
    command = ["{python}", str(CELLCMD), str(spec), "dose_{dose}/{view}/{split}", "{output_dir}"]
    study = make_study(tmp_path / "tree", doses=(1000,), command=command)
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump({"backend": "local", "time": "5:00", "max_parallel": 4, **profile}))
    return study, path


def _intervals(root: Path) -> list[tuple[float, float]]:
    return sorted((a["started_at"], a["ended_at"]) for c in load_manifest(root)["jobs"] for a in c["attempts"])


def test_max_parallel_1_on_the_command_line_runs_one_command_at_a_time_and_is_recorded(tmp_path, capsys):
    study, profile = _scripted(tmp_path, {"*": "sleep-ok:0.4"})  # the profile allows 4 at once
    root = tmp_path / "run"
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--max-parallel", "1",
                   "--quiet") == 0  # fmt: skip
    spans = _intervals(root)
    assert len(spans) == 4
    assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:])), spans  # never two at once
    manifest = load_manifest(root)
    jsonschema.validate(manifest, SCHEMA)
    assert manifest["submissions"][-1]["knobs"] == {"max_parallel": 1}
    assert manifest["cluster"]["max_parallel"] == 4  # the profile as written
    assert all(not c["stale"] for c in cells(root).values())
    # how, not what: a later submit without the knob leaves every cell as it is
    capsys.readouterr()
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    assert "nothing to run" in capsys.readouterr().out and not Run(root).stale()


def test_time_on_the_command_line_is_every_cells_limit_and_wait_records_its_knobs(tmp_path):
    study, profile = _scripted(tmp_path, {"dose_1000/dense/train": "sleep:30"})
    root = tmp_path / "run"
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--time", "0:02",
                   "--quiet") == 1  # fmt: skip
    c = cells(root)
    assert c["dose_1000/dense/train"]["state"] == "TIMEOUT"
    assert c["dose_1000/dense/train"]["attempts"][0]["resources"]["time_s"] == 2
    assert load_manifest(root)["submissions"][-1]["knobs"] == {"time": "0:02"}
    assert run_cli("wait", root, "--max-parallel", "1", "--quiet") == 1  # nothing left to run; recorded all the same
    assert load_manifest(root)["submissions"][-1]["knobs"] == {"time": "0:02", "max_parallel": 1}


@pytest.mark.parametrize("flag, value", [("--partition", "gpu"), ("--cells-per-job", "4")])
def test_a_knob_the_local_backend_does_not_have_is_refused_naming_it(tmp_path, capsys, flag, value):
    study, profile = _scripted(tmp_path, {})
    root = tmp_path / "run"
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, flag, value) == 2
    err = capsys.readouterr().err
    assert flag in err and "slurm backend only" in err
    assert not root.exists()


def test_max_parallel_on_a_slurm_profile_is_refused(tmp_path, capsys):
    from gridsubmit.knobs import Knobs, apply
    from gridsubmit.cluster import parse_profile
    from gridsubmit.errors import UsageError

    slurm = parse_profile({"backend": "slurm", "time": "10", "partition": "cpu",
                           "overrides": [{"match": {"dose": 1000}, "set": {"time": "20", "partition": "big"}}]}, "p.yaml")  # fmt: skip
    with pytest.raises(UsageError, match="--max-parallel applies to the local backend only"):
        apply(slurm, Knobs(max_parallel=2))
    from gridsubmit.jobs import JobKey

    over = apply(slurm, Knobs(time="5", partition="short", cells_per_job=3))
    res = over.resources_for(JobKey(1000, "dense", "train"))
    assert (res.time_s, res.partition, over.cells_per_job) == (300, "short", 3)  # over the profile's overrides too
    with pytest.raises(UsageError, match="--time"):
        apply(slurm, Knobs(time="soon"))
