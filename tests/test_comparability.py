"""Can the cells be compared? What each ran on, factor by factor, and report --require-consistent."""

import json
import os

import jsonschema
import pytest

from conftest import cells, load_manifest, run_cli
from gridsubmit import comparability
from test_real_study import SCHEMA

MODELS = {"0": "NVIDIA H100 80GB HBM3", "1": "NVIDIA A100-SXM4-40GB"}


def fake_nvidia_smi(bindir, names: dict[str, str]) -> None:
    """An nvidia-smi that lists GPUs 0 and 1 with these models (``--query-gpu``) and, called
    plainly, prints the header that names the CUDA version."""
    bindir.mkdir(exist_ok=True)
    lines = "\n".join(f"echo '{i}, GPU-{i}{i}{i}{i}, {name}, 550.54.15'" for i, name in names.items())
    smi = bindir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n"
                   'if [ $# -eq 0 ]; then\n'
                   "  echo '| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4     |'\n"
                   "  exit 0\nfi\n" + lines + "\n")  # fmt: skip
    smi.chmod(0o755)


def test_two_gpu_models_are_named_with_their_cells_and_fail_require_consistent(scripted, tmp_path, monkeypatch, capsys):
    bindir = tmp_path / "bin"
    fake_nvidia_smi(bindir, MODELS)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")  # captured at submit, seen by every task
    study, profile, root = scripted({}, doses=(1000,), gpus=[0, 1], gpus_per_job=1)
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    manifest = load_manifest(root)
    jsonschema.validate(manifest, SCHEMA)
    on = {}
    for key, cell in cells(root).items():
        attempt = cell["attempts"][-1]
        assert attempt["gpu_name"] == MODELS[attempt["gpus"]] and attempt["cuda_version"] == "12.4"
        on.setdefault(attempt["gpu_name"], []).append(key)
        assert attempt["env_fingerprint"] in manifest["environments"]  # the list once per fingerprint, not per attempt
    assert set(on) == set(MODELS.values())  # one slot per GPU: both were used
    [environment] = manifest["environments"].values()
    assert any(d.startswith("numpy==") for d in environment["distributions"]) and environment["python"]

    capsys.readouterr()
    assert run_cli("report", root) == 0
    out = capsys.readouterr().out
    section = out[out.index("comparability:"):]
    assert section.startswith("comparability: GPU model varies across the 4 contributing cells")
    for model, keys in on.items():
        line = next(line for line in section.splitlines() if line.strip().startswith(model))
        assert all(key in line for key in keys) and f"({len(keys)} cell(s))" in line
    assert "driver: 550.54.15 (all cells)" in section and "CUDA: 12.4 (all cells)" in section

    assert run_cli("report", root, "--require-consistent") == 1
    assert "--require-consistent: gpu vary" in capsys.readouterr().err
    assert run_cli("report", root, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["comparability"]["varying"] == ["gpu"] and not data["comparability"]["consistent"]
    groups = {g["value"]: set(g["cells"]) for g in data["comparability"]["factors"][0]["groups"]}
    assert groups == {model: set(keys) for model, keys in on.items()}

    # the same grid where both GPUs are one model: consistent
    fake_nvidia_smi(bindir, {"0": MODELS["0"], "1": MODELS["0"]})
    same = tmp_path / "same"
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", same, "--quiet") == 0
    capsys.readouterr()
    assert run_cli("report", same, "--require-consistent") == 0
    assert "comparability: the 4 contributing cell(s) share every factor (GPU model NVIDIA H100 80GB HBM3" in capsys.readouterr().out


def _cell(key, **attempt):
    return {"key": key, "dose": 1000, "view": "dense", "split": key, "state": "COMPLETED", "options": {"s": 1},
            "attempts": [{"attempt": 1, "state": "COMPLETED", "options": {"s": 1}, **attempt}]}  # fmt: skip


def test_an_environment_that_differs_names_the_distributions_only_it_has():
    manifest = {"jobs": [_cell("a", env_fingerprint="f1"), _cell("b", env_fingerprint="f2"), _cell("c", env_fingerprint="f1")],
                "environments": {"f1": {"distributions": ["numpy==1.26.4", "scipy==1.11.0"]},
                                 "f2": {"distributions": ["numpy==2.0.0", "scipy==1.11.0"]}}}  # fmt: skip
    judged = comparability.judge(manifest, ["a", "b", "c"])
    assert judged["varying"] == ["environment"]
    assert judged["environments"] == {"f1": ["numpy==1.26.4"], "f2": ["numpy==2.0.0"]}
    text = comparability.text(judged)
    assert "f1 (2 cell(s)): a, c  [only here: numpy==1.26.4]" in text and "f2 (1 cell(s)): b  [only here: numpy==2.0.0]" in text
    # only the cells that contribute count
    assert comparability.judge(manifest, ["a", "c"])["consistent"]


@pytest.mark.parametrize("factor, attempt, expected", [
    ("code", {"code": {"script": {"path": "scripts/compare_models.py", "sha256": "ab"}}}, "scripts/compare_models.py@ab"),
    ("code", {"submission": 1}, "git 0123456789ab (dirty)"),
    ("gpu", {}, "none seen"),
    ("gridsubmit", {"submission": 1}, "0.2.0"),
])  # fmt: skip
def test_factor_values(factor, attempt, expected):
    manifest = {"submissions": [{"n": 1, "git": {"commit": "0123456789abcdef", "dirty": True}, "versions": {"gridsubmit": "0.2.0"}}]}
    assert comparability.value(manifest, _cell("a", **attempt), factor) == expected
