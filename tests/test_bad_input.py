"""Bad input: exit 2, one message naming the file and the key, nothing run or overwritten."""

import json
import os

import pytest
import yaml

from conftest import run_cli
from gridsubmit.demo.generate import make_study


@pytest.fixture
def study(tmp_path):
    return make_study(tmp_path / "study", doses=(1000,))


def edit(path, **changes):
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data))
    return path


def profile(tmp_path, text):
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return path


CASES = {
    "malformed YAML": (lambda tmp, study: ["--study", study, "--cluster", profile(tmp, "backend: local\ntime: [1\n")],
                       ["cluster.yaml", "malformed YAML at line"]),
    "unknown key": (lambda tmp, study: ["--study", study, "--cluster", profile(tmp, "backend: local\ntime: 5\nmax_paralel: 2\n")],
                    ["cluster.yaml", "key 'max_paralel'", "unknown key"]),
    "wrong type": (lambda tmp, study: ["--study", study, "--cluster", profile(tmp, "backend: local\ntime: 5\nmax_parallel: two\n")],
                   ["cluster.yaml", "key 'max_parallel'", "expected an integer"]),
    "negative time": (lambda tmp, study: ["--study", study, "--cluster", profile(tmp, "backend: local\ntime: -5\n")],
                      ["cluster.yaml", "key 'time'", "positive time"]),
    "missing time": (lambda tmp, study: ["--study", study, "--cluster", profile(tmp, "backend: local\n")],
                     ["cluster.yaml", "key 'time'", "missing"]),
    "slurm key in a local profile": (lambda tmp, study: ["--study", study, "--cluster", profile(tmp, "backend: local\ntime: 5\npartition: gpu\n")],
                                     ["key 'partition'", "applies to backend 'slurm' only"]),
    "unknown study key": (lambda tmp, study: ["--study", edit(study, dose=[1])], ["study.yaml", "key 'dose'", "unknown key"]),
    "study wrong type": (lambda tmp, study: ["--study", edit(study, views="dense")], ["study.yaml", "key 'views'", "expected a list"]),
    "unknown placeholder": (lambda tmp, study: ["--study", edit(study, output_dir="{artefact_root}/x")],
                            ["study.yaml", "key 'output_dir'", "unknown placeholder {artefact_root}"]),
    "missing study root": (lambda tmp, study: ["--study", study, "--phase-f-root", tmp / "nowhere"],
                           ["key 'roots.phase_f'", "folder does not exist", "nowhere"]),
    "filter matches nothing": (lambda tmp, study: ["--study", study, "--dose", "123"],
                               ["study.yaml", "--dose 123 matches nothing", "1000"]),
    "missing study file": (lambda tmp, study: ["--study", tmp / "nope.yaml"], ["nope.yaml", "file not found"]),
    "repeated dose": (lambda tmp, study: ["--study", edit(study, doses=[1000, 1000])],
                      ["study.yaml", "key 'doses[1]'", "1000 is listed twice"]),
    "path and json": (lambda tmp, study: ["--study", edit(study, inputs={"reconstruction": {"path": "x.npz"}})],
                      ["study.yaml", "key 'inputs.reconstruction'", "either 'path' or 'json'"]),
    "pointer without field": (lambda tmp, study: ["--study", edit(study, inputs={"reconstruction": {"field": None}})],
                              ["study.yaml", "key 'inputs.reconstruction.field'", "expected the JSON field"]),
    "views mixed with path": (lambda tmp, study: ["--study", edit(study, inputs={"phase_c_npz": {"path": "x.npz"}})],
                              ["study.yaml", "key 'inputs.phase_c_npz.", "per-view templates go under 'path'"]),
    "unknown when": (lambda tmp, study: ["--study", edit(study, command=["{python}", {"flag": "--x", "when": "nothing"}])],
                     ["study.yaml", "key 'command[1].when'", "option or of an input"]),
    "bad capture_env": (lambda tmp, study: ["--study", edit(study, capture_env=["NOT A NAME"])],
                        ["study.yaml", "key 'capture_env[0]'", "environment variable name"]),
    "absolute expected output": (lambda tmp, study: ["--study", edit(study, expected_outputs=["/etc/passwd"])],
                                 ["study.yaml", "key 'expected_outputs[0]'", "relative to the output folder"]),
    "shared output folder": (lambda tmp, study: ["--study", edit(study, output_dir="{artifact_root}/dose_{dose}/{view}")],
                             ["study.yaml", "key 'output_dir'", "would both write to"]),
    "missing workdir": (lambda tmp, study: ["--study", study, "--workdir", tmp / "nowhere"],
                        ["study.yaml", "key 'workdir'", "nowhere", "does not exist"]),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_naming_file_and_key_with_nothing_run(case, tmp_path, study, capsys):
    make_args, expected = CASES[case]
    root = tmp_path / "run"
    code = run_cli("submit", "--artifact-root", root, *make_args(tmp_path, study))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("gridsubmit: error: ") and err.count("\n") == 1
    for text in expected:
        assert text in err
    assert not root.exists()


def test_an_artifact_root_holding_a_foreign_manifest_is_refused_and_left_alone(tmp_path, study, capsys):
    root = tmp_path / "run"
    root.mkdir()
    seed = {"n_jobs": 12, "execution_results": [], "n_executed": 0, "n_success": 0, "n_failed": 0}
    (root / "comparison_manifest.json").write_text(json.dumps(seed))
    assert run_cli("submit", "--study", study, "--artifact-root", root) == 2
    err = capsys.readouterr().err
    assert "comparison_manifest.json" in err and "was not written by gridsubmit" in err
    assert json.loads((root / "comparison_manifest.json").read_text()) == seed
    assert sorted(p.name for p in root.iterdir()) == ["comparison_manifest.json"]


def test_a_manifest_of_a_newer_schema_is_refused(tmp_path, study, capsys):
    root = tmp_path / "run"
    root.mkdir()
    (root / "comparison_manifest.json").write_text(json.dumps({"tool": "gridsubmit", "schema_version": 99}))
    assert run_cli("wait", root) == 2
    assert "'schema_version' is 99" in capsys.readouterr().err


def test_strict_makes_a_blocked_cell_an_error_and_runs_nothing(tmp_path, study, capsys):
    (tmp_path / "study" / "phase_c" / "dose_1000" / "patched_test.npz").unlink()
    root = tmp_path / "run"
    assert run_cli("submit", "--study", study, "--artifact-root", root, "--strict") == 2
    err = capsys.readouterr().err
    assert "dose_1000/dense/test: phase_c_npz:" in err and "patched_test.npz does not exist" in err
    assert not root.exists()


def test_gpus_per_job_beyond_the_visible_gpus_is_an_error(tmp_path, study, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    cluster = profile(tmp_path, "backend: local\ntime: 5\ngpus_per_job: 2\n")
    assert run_cli("submit", "--study", study, "--cluster", cluster, "--artifact-root", tmp_path / "run") == 2
    assert "key 'gpus_per_job'" in capsys.readouterr().err


def _damaged(root, how):
    path = root / "comparison_manifest.json"
    text = path.read_text()
    data = json.loads(text)
    if how == "truncated":
        path.write_text(text[: len(text) // 2])
    elif how == "newer schema":
        path.write_text(json.dumps({**data, "schema_version": 99}))
    elif how == "unknown state":
        data["jobs"][0]["state"] = "WEIRD"
        path.write_text(json.dumps(data))
    elif how == "attempts missing":
        del data["jobs"][1]["attempts"]
        path.write_text(json.dumps(data))
    elif how == "attempt without its folder":
        del data["jobs"][2]["attempts"][0]["dir"]
        path.write_text(json.dumps(data))
    return path


COMMANDS = {
    "status": lambda root, study: ["status", root], "status --json": lambda root, study: ["status", root, "--json"],
    "status CELL": lambda root, study: ["status", root, "dose_1000/dense/train"],
    "logs": lambda root, study: ["logs", root, "dose_1000/dense/train"], "wait": lambda root, study: ["wait", root],
    "cancel": lambda root, study: ["cancel", root], "report": lambda root, study: ["report", root],
    "submit": lambda root, study: ["submit", "--study", study, "--artifact-root", root, "--quiet"],
}  # fmt: skip


@pytest.mark.parametrize("how", ["truncated", "newer schema", "unknown state", "attempts missing", "attempt without its folder"])
def test_every_command_refuses_a_damaged_manifest_with_one_line_and_leaves_it_as_it_is(tmp_path, study, capsys, how):
    root = tmp_path / "run"
    assert run_cli("submit", "--study", study, "--artifact-root", root, "--quiet") == 0
    path = _damaged(root, how)
    before = path.read_bytes()
    capsys.readouterr()
    for name, args in COMMANDS.items():
        code = run_cli(*args(root, study))
        err = capsys.readouterr().err
        assert code == 2, (name, err)
        assert err.startswith("gridsubmit: error: ") and "comparison_manifest.json" in err, (name, err)
        assert path.read_bytes() == before, name


def test_an_artifact_root_that_is_a_file_is_refused_by_every_command(tmp_path, study, capsys):
    root = tmp_path / "a-file"
    root.write_text("not a folder\n")
    for name, args in COMMANDS.items():
        assert run_cli(*args(root, study)) == 2, name
        assert "is a file, not an artifact root folder" in capsys.readouterr().err, name
    assert root.read_text() == "not a folder\n"


@pytest.mark.parametrize("name", ["run%A_%a", "run\\x", "run\nx"])
def test_a_slurm_artifact_root_that_sbatch_would_misread_is_refused_before_anything_is_written(tmp_path, study, capsys, name):
    root = tmp_path / name
    assert run_cli("submit", "--study", study, "--cluster", profile(tmp_path, "backend: slurm\ntime: 5\n"),
                   "--artifact-root", root) == 2  # fmt: skip
    assert "an artifact root cannot contain" in capsys.readouterr().err
    assert not root.exists()


def test_a_profile_interpreter_with_a_space_is_quoted_in_the_sbatch_script(tmp_path):
    from gridsubmit.backends.base import Submission
    from gridsubmit.backends.slurm import SlurmBackend
    from gridsubmit.cluster import parse_profile

    backend = SlurmBackend(parse_profile({"backend": "slurm", "time": 5, "python": "/opt/my env/bin/python",
                                          "max_array_size": 10}, "p.yaml"), tmp_path, tmp_path, {}, "r")  # fmt: skip
    sub = Submission("dose_1/dense/train", 1, ["true"], tmp_path / "out", tmp_path / "a", backend.profile.resources)
    assert "'/opt/my env/bin/python' -m gridsubmit.task" in backend.commit.executor([[sub]], "n")._submitit_command_str


def test_cells_that_cannot_be_written_for_the_node_are_a_clear_error_before_sbatch(tmp_path, study, capsys, monkeypatch):
    spy = tmp_path / "bin"
    spy.mkdir()
    (spy / "sbatch").write_text(f"#!/bin/sh\ntouch {tmp_path}/sbatch-called\necho 'Submitted batch job 7'\n")
    (spy / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{spy}:{os.environ['PATH']}")
    root = tmp_path / "run"
    (root / ".gridsubmit").mkdir(parents=True)
    (root / ".gridsubmit" / "tasks").write_text("in the way")  # where the node's cells go
    assert run_cli("submit", "--study", study, "--cluster", profile(tmp_path, "backend: slurm\ntime: 5\nmax_array_size: 10\n"),
                   "--artifact-root", root, "--no-wait") == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "cannot write the cells of 4 job(s) under" in err and "Not a directory" in err
    assert not (tmp_path / "sbatch-called").exists()
    assert all(c["attempts"] == [] and c["state"] == "PLANNED" for c in json.loads((root / "comparison_manifest.json").read_text())["jobs"])
