"""No quiet wrong answers: a typo, an edited study, a stale cell or a rerun never yields a
result that looks right and is not, and every view of a run gives each cell one verdict."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import cells, rewrite_npz, run_cli
from gridsubmit import Run, execute_comparison_jobs
from gridsubmit.demo.generate import make_study
from studyrepo.studies.fly64_dose_overlap.comparison import ComparisonJob  # the study's own job

CELL = "dose_1000/dense/train"


def gridsubmit(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gridsubmit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)  # fmt: skip


def set_option(study: Path, **options) -> None:
    data = yaml.safe_load(study.read_text())
    data["options"] = options
    study.write_text(yaml.safe_dump(data, sort_keys=False))


# --- refuse what cannot be right -----------------------------------------------------------


def test_a_misspelt_option_is_refused_naming_the_key_and_the_options_the_command_uses(tmp_path, capsys):
    study = make_study(tmp_path / "study")
    set_option(study, ms_ssim_sigam=1.5)
    assert run_cli("plan", "--study", study, "--strict") == 2
    err = capsys.readouterr().err
    assert "options.ms_ssim_sigam" in err and "did you mean 'ms_ssim_sigma'" in err
    assert "ms_ssim_sigma, register_ptychi_only, skip_registration" in err
    assert run_cli("submit", "--study", study, "--artifact-root", tmp_path / "run", "--quiet") == 2
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad", ["..", ".", "", "a/b", "tab\there"])
def test_an_axis_value_that_cannot_name_one_folder_is_refused(tmp_path, capsys, bad):
    study = make_study(tmp_path / "study")
    data = yaml.safe_load(study.read_text())
    study.write_text(yaml.safe_dump({**data, "views": ["dense", bad]}))
    assert run_cli("plan", "--study", study) == 2
    assert "views[1]" in capsys.readouterr().err


# --- one judgement of freshness, everywhere ------------------------------------------------


def verdicts(root: Path, tmp_path: Path, study: Path) -> dict[str, set[str]]:
    """The stale cells according to every view of the run."""
    out = {}
    table = gridsubmit("status", root).stdout
    out["table"] = {line.split()[0] for line in table.splitlines() if line.startswith("dose_") and "stale:" in line}
    out["json"] = {c["key"] for c in json.loads(gridsubmit("status", root, "--json").stdout)["jobs"] if c["stale"]}
    out["cell json"] = {key for key in cells(root) if json.loads(gridsubmit("status", root, key, "--json").stdout)["stale"]}
    out["results"] = {f"dose_{r['dose']}/{r['view']}/{r['split']}" for r in Run(root).manifest["execution_results"]
                      if r.get("error", "").startswith("stale: ")}  # fmt: skip
    out["api stale()"] = set(Run(root).stale())
    csv_path, html = tmp_path / "r.csv", tmp_path / "r.html"
    report = gridsubmit("report", root, "--csv", csv_path, "--html", html)
    out["report text"] = {line.split(": ")[1] for line in report.stdout.splitlines() if line.startswith("  not included:")
                          and ": stale: " in line}  # fmt: skip
    with open(csv_path) as fh:
        rows = {f"dose_{r['dose']}/{r['view']}/{r['split']}" for r in csv.DictReader(fh)}
    out["csv (absent)"] = set(cells(root)) - rows
    page = html.read_text()
    grid = {m.group(1): m.group(2) for m in re.finditer(r'title="([^"]+)"><span class="state">\w+</span><span class="tries">([^<]*)<', page)}
    assert set(grid) == set(cells(root))
    out["html"] = {key for key, tries in grid.items() if tries.endswith("· stale")}
    required = gridsubmit("report", root, "--require-complete").returncode
    out["--require-complete"] = set(out["table"]) if required == 1 else set()
    return out


def assert_one_truth(views: dict[str, set[str]], expected: set[str]) -> None:
    wrong = {name: sorted(found) for name, found in views.items() if found != expected}
    assert not wrong, f"expected stale {sorted(expected)}; views that disagree: {wrong}"


def test_truth_table_every_view_gives_each_cell_the_same_verdict(finished, tmp_path):
    study, root = finished
    everything = set(cells(root))
    assert_one_truth(verdicts(root, tmp_path, study), set())

    rewrite_npz(cells(root)[CELL]["inputs"]["phase_c_npz"])  # one input changed on disk
    assert_one_truth(verdicts(root, tmp_path, study), {CELL})

    set_option(study, ms_ssim_sigma=2.0)  # the study file edited after the run
    assert_one_truth(verdicts(root, tmp_path, study), everything)
    note = gridsubmit("status", root).stderr
    assert "changed since the last submit: 12 cell(s) would run with option ms_ssim_sigma: 1.0 -> 2.0" in note
    assert "changed since the last submit: 12 cell(s) would run" in (tmp_path / "r.html").read_text()

    set_option(study, ms_ssim_sigma=1.0)  # the edit reverted: only the changed input is left
    assert_one_truth(verdicts(root, tmp_path, study), {CELL})

    jobs = [ComparisonJob(c["dose"], c["view"], c["split"], **{n: Path(c["inputs"][n]) for n in
            ("phase_c_npz", "pinn_checkpoint", "baseline_checkpoint", "phase_f_manifest")}) for c in cells(root).values()]  # fmt: skip
    manifest = execute_comparison_jobs(jobs, root, study=study, rerun_stale=False)
    failed = {f"dose_{r['dose']}/{r['view']}/{r['split']}" for r in manifest["execution_results"] if r.get("error")}
    assert failed == {CELL} and manifest["n_failed"] == 1 and manifest["n_success"] == 11


def test_a_study_file_given_by_a_relative_path_is_judged_the_same_from_any_directory(tmp_path, monkeypatch):
    study = make_study(tmp_path / "study")
    monkeypatch.chdir(study.parent)
    root = tmp_path / "run"
    assert run_cli("submit", "--study", study.name, "--artifact-root", root, "--quiet") == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / study.name).write_text(study.read_text())  # a file of the same name, unchanged
    set_option(study, ms_ssim_sigma=2.0)
    for cwd in (study.parent, tmp_path, elsewhere):
        status = json.loads(gridsubmit("status", root, "--json", cwd=cwd).stdout)
        assert status["n_stale"] == 12, cwd
        assert gridsubmit("report", root, "--require-complete", cwd=cwd).returncode == 1, cwd


def test_the_api_runs_again_a_job_whose_options_changed_and_never_counts_a_stale_cell_as_success(tmp_path):
    from study_layout import build_study_tree, make_study_repo, studylib_env  # the real study's stand-in

    roots = build_study_tree(tmp_path / "artifacts")
    repo = make_study_repo(tmp_path / "PtychoPINN")
    script = f"""
import json, sys
from dataclasses import replace
from gridsubmit import execute_comparison_jobs
from studies.fly64_dose_overlap.comparison import build_comparison_jobs
jobs = build_comparison_jobs({str(roots['phase_c'])!r}, {str(roots['phase_e'])!r}, {str(roots['phase_f'])!r})
root = {str(tmp_path / 'cmp')!r}
first = execute_comparison_jobs(jobs=jobs, artifact_root=root)
changed = [replace(j, ms_ssim_sigma=1.5) if (j.dose, j.view, j.split) == (1000, "dense", "train") else j for j in jobs]
kept = execute_comparison_jobs(jobs=changed, artifact_root=root, rerun_stale=False)
again = execute_comparison_jobs(jobs=changed, artifact_root=root)
print(json.dumps([[m["n_success"], m["n_failed"], [r.get("error") for r in m["execution_results"] if r.get("error")]]
                  for m in (first, kept, again)]))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=repo, env=studylib_env(), capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    first, kept, again = json.loads(out.stdout.splitlines()[-1])
    assert first == [12, 0, []]
    assert kept == [11, 1, ["stale: option ms_ssim_sigma: 1.0 -> 1.5"]]
    assert again == [12, 0, []]
    manifest = json.loads((tmp_path / "cmp" / "comparison_manifest.json").read_text())
    runs = {c["key"]: len(c["attempts"]) for c in manifest["jobs"]}
    assert runs.pop("dose_1000/dense/train") == 2 and set(runs.values()) == {1}
    [changed_cell] = [c for c in manifest["jobs"] if c["key"] == "dose_1000/dense/train"]
    assert "--ms-ssim-sigma 1.5" in changed_cell["attempts"][1]["command"]


# --- say only what happened ----------------------------------------------------------------


def test_a_rerun_and_a_wait_print_only_the_attempts_that_ended_in_that_command(finished, capsys):
    study, root = finished
    capsys.readouterr()
    assert run_cli("submit", "--study", study, "--artifact-root", root, "--rerun", CELL) == 0
    out = capsys.readouterr().out
    ended_lines = [line for line in out.splitlines() if ": COMPLETED (" in line]
    assert [line.split(":")[0] for line in ended_lines] == [CELL], out
    assert "ran now: 1 (1 COMPLETED); ended before this command: 11" in out
    assert run_cli("wait", root) == 0
    out = capsys.readouterr().out
    assert ": COMPLETED (" not in out and "ran now: 0; ended before this command: 12" in out


def test_cancel_says_what_it_marked_and_status_shows_those_cells_as_cancelling_until_they_end(scripted, capsys):
    study, profile, root = scripted({"*": "sleep-ok:30"}, doses=(1000,))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--no-wait") == 0
    capsys.readouterr()
    assert run_cli("cancel", root, "--view", "dense") == 0
    said = capsys.readouterr().out
    assert "2 cell(s) marked for cancelling" in said
    assert run_cli("status", root) == 0
    table = capsys.readouterr().out
    for line in table.splitlines():
        if line.startswith("dose_1000/dense/"):
            assert "CANCELLED" in line or "cancelling" in line, line
    assert run_cli("cancel", root) == 0
    assert run_cli("wait", root, "--quiet") == 1
    assert {c["state"] for c in cells(root).values()} == {"CANCELLED"}


def test_an_attempt_that_exits_0_without_rewriting_its_outputs_does_not_pass_off_the_earlier_ones(scripted):
    study, profile, root = scripted({"*": "ok"}, doses=(1000,))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet",
                   "--view", "dense") == 0  # fmt: skip
    (study.parent.parent / "behaviours.json").write_text(json.dumps({"*": "nometrics"}))  # exits 0, writes nothing
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet",
                   "--view", "dense", "--rerun-all") == 1  # fmt: skip
    for cell in cells(root).values():
        last = cell["attempts"][-1]
        assert cell["state"] == "FAILED" and len(cell["attempts"]) == 2, cell
        assert last["error"] == "exit 0 but comparison_metrics.csv not rewritten (left by an earlier attempt)", last
        assert cell["metrics"] is None


def test_stale_cells_are_no_success_in_the_exit_status_either(finished, capsys):
    study, root = finished
    rewrite_npz(cells(root)[CELL]["inputs"]["phase_c_npz"])
    assert run_cli("wait", root, "--quiet") == 1
    assert "11 completed, 1 stale" in capsys.readouterr().out
    assert Run(root).exit_status == 1
