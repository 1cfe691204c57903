"""The operator's day on the local backend: why a cell failed, its logs, following a run,
timeouts, filters that match nothing, and read-only views of a run."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cells, gridsubmit_process, load_manifest, run_cli, wait_for
from gridsubmit.fileio import read_json


def test_a_failed_cells_reason_is_its_last_stderr_line_in_the_summary_status_and_logs(scripted, capsys):
    study, profile, root = scripted({"dose_1000/dense/train": "exit:3"}, doses=(1000,))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root) == 1
    why = "exit code 3: cellcmd: failing on purpose with 3"
    assert why in capsys.readouterr().out  # the progress lines and the final table
    assert cells(root)["dose_1000/dense/train"]["attempts"][0]["error"] == why
    assert why in (root / "comparison_summary.txt").read_text()
    assert run_cli("status", root) == 0 and why in capsys.readouterr().out
    assert run_cli("status", root, "dose_1000/dense/train") == 0
    out = capsys.readouterr().out
    assert "attempt 1: FAILED" in out and f"why: {why}" in out and "cellcmd.py" in out
    assert run_cli("logs", root, "dose_1000/dense/train", "--stderr") == 0
    assert capsys.readouterr().out == "cellcmd: failing on purpose with 3\n"
    assert run_cli("logs", root, "dose_1000/dense/train") == 0
    assert "doing exit:3" in capsys.readouterr().out
    assert run_cli("logs", root, "dose_1000/dense/train", "--attempt", 2) == 2
    assert "attempts 1 to 1, not 2" in capsys.readouterr().err


def test_cancel_with_a_value_the_run_does_not_have_exits_2_listing_the_values_and_changes_nothing(scripted, capsys):
    study, profile, root = scripted({}, doses=(1000,))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    before = (root / "comparison_manifest.json").read_bytes()
    capsys.readouterr()
    assert run_cli("cancel", root, "--view", "Dense") == 2
    assert "--view Dense matches no cell of this run; it has: dense, sparse" in capsys.readouterr().err
    assert run_cli("cancel", root, "--dose", 999) == 2
    assert (root / "comparison_manifest.json").read_bytes() == before


def test_a_local_submit_no_wait_is_followed_by_wait_to_the_end(scripted):
    study, profile, root = scripted({"*": "sleep-ok:0.5"}, doses=(1000,))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--no-wait") == 0
    assert run_cli("wait", root, "--quiet") == 0
    assert {c["state"] for c in cells(root).values()} == {"COMPLETED"}
    assert all(len(c["attempts"]) == 1 for c in cells(root).values())


def test_wait_with_a_timeout_returns_3_and_the_run_goes_on(scripted, capsys):
    study, profile, root = scripted({"*": "sleep-ok:2"}, doses=(1000,))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--no-wait") == 0
    assert run_cli("wait", root, "--quiet", "--timeout", 0.5) == 3
    assert "the run goes on" in capsys.readouterr().err
    assert run_cli("wait", root, "--quiet") == 0
    assert all(len(c["attempts"]) == 1 for c in cells(root).values())


def test_status_logs_and_report_work_on_a_read_only_view_of_a_run(scripted, tmp_path, capsys):
    study, profile, root = scripted({}, doses=(1000,))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    view = tmp_path / "view"
    view.mkdir()
    if subprocess.run(["mount", "--bind", str(root), str(view)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here (needs root)")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        assert run_cli("status", view) == 0
        assert run_cli("status", view, "--json") == 0
        assert run_cli("logs", view, "dose_1000/sparse/test") == 0
        assert run_cli("report", view) == 0
        assert "dose_1000/sparse/test" in capsys.readouterr().out
    finally:
        subprocess.run(["umount", str(view)], capture_output=True)
    assert load_manifest(root)["n_success"] == 4


def test_the_demo_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine\n")
    assert run_cli("demo", "--artifact-root", tmp_path, "--quiet") == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_profile_python_expands_home_and_variables_and_refuses_an_unset_one(tmp_path, monkeypatch):
    from gridsubmit.cluster import parse_profile
    from gridsubmit.errors import ConfigError
    from gridsubmit.gpus import resolve

    monkeypatch.setenv("STUDY_ENV", "/opt/study-env")
    profile = parse_profile({"backend": "local", "time": 5, "python": "$STUDY_ENV/bin/python"}, "p.yaml")
    assert profile.python == "/opt/study-env/bin/python" and resolve(profile).resources.gpus_per_job in (0, 1)
    assert parse_profile({"backend": "local", "time": 5, "python": "~/py"}, "p.yaml").python.startswith("/")
    with pytest.raises(ConfigError, match="key 'python'.*not set"):
        parse_profile({"backend": "local", "time": 5, "python": "$NOPE_NOT_SET/python"}, "p.yaml")


def test_ctrl_c_in_a_local_wait_detaches_and_the_run_goes_on_to_the_end(scripted, tmp_path):
    study, profile, root = scripted({"*": "sleep-ok:5"}, doses=(1000,))
    with open(tmp_path / "submit.log", "w") as log:  # killed right after its job ids are on disk
        subprocess.run([sys.executable, "-m", "gridsubmit", "submit", "--study", str(study), "--cluster", str(profile),
                        "--artifact-root", str(root), "--quiet"], stdout=log, stderr=log,
                       env={**os.environ, "GRIDSUBMIT_CRASH_AT": "handles-saved"}, timeout=60)  # fmt: skip
    assert (root / ".gridsubmit" / "holder.json").exists()  # left by the crashed submit: no sign of `wait`
    saved = load_manifest(root)["updated_at"]
    waiter = gridsubmit_process("wait", root, "--quiet")

    def attached() -> bool:  # it holds the run, and its runner has saved the manifest once it took the cells over
        holder = read_json(root / ".gridsubmit" / "holder.json") or {}
        return holder.get("pid") == waiter.pid and load_manifest(root)["updated_at"] > saved

    wait_for(attached, what="wait to take the run over")
    waiter.send_signal(signal.SIGINT)
    out, _ = waiter.communicate(timeout=60)
    assert waiter.returncode == 130 and "detached; a background runner goes on" in out and "Traceback" not in out, out
    assert run_cli("wait", root, "--quiet") == 0
    for cell in cells(root).values():
        assert cell["state"] == "COMPLETED" and len(cell["attempts"]) == 1
        assert len((Path(cell["output_dir"]) / "runs.log").read_text().splitlines()) == 1


# Python started with this sitecustomize gets Ctrl-C the moment it first imports $INTERRUPT_AT_IMPORT
INTERRUPT_AT_IMPORT = ("import os, signal, sys\n"
                       "class Interrupt:\n"
                       "    def find_spec(self, name, path=None, target=None):\n"
                       "        if name == os.environ.get('INTERRUPT_AT_IMPORT'):\n"
                       "            os.kill(os.getpid(), signal.SIGINT)\n"
                       "sys.meta_path.insert(0, Interrupt())\n")  # fmt: skip


@pytest.mark.parametrize("module", ["gridsubmit.cli", "gridsubmit.api", "gridsubmit.study"])
def test_ctrl_c_while_the_command_starts_exits_130_with_one_line_and_no_traceback(tmp_path, module):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(INTERRUPT_AT_IMPORT)
    env = {**os.environ, "INTERRUPT_AT_IMPORT": module,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}  # fmt: skip
    script = Path(sys.executable).with_name("gridsubmit")  # the console script, where it is installed
    for command in [[sys.executable, "-m", "gridsubmit"], *([[str(script)]] if script.exists() else [])]:
        out = subprocess.run([*command, "status", str(tmp_path / "run")], capture_output=True, text=True, env=env,
                             timeout=60)  # fmt: skip
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode == 130 and "Traceback" not in out.stderr and len(lines) <= 1, (command, out.stderr)
        assert lines == ["gridsubmit: interrupted"] and out.stdout == ""


def test_quiet_submit_and_wait_print_only_the_closing_summary(scripted, capsys):
    study, profile, root = scripted({}, doses=(1000,))
    submit = ["submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet"]
    assert run_cli(*submit) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == ["4 cells: 4 completed, 0 failed, 0 cancelled, 0 blocked",
                                "ran now: 4 (4 COMPLETED); ended before this command: 0"] and err == ""  # fmt: skip
    assert run_cli(*submit) == 0  # nothing to run: no status table either
    out, err = capsys.readouterr()
    assert [line.split(":")[0] for line in out.splitlines()] == ["nothing to run", "4 cells", "ran now"] and err == ""
    assert run_cli("wait", root, "--quiet") == 0
    assert capsys.readouterr().out.splitlines() == ["4 cells: 4 completed, 0 failed, 0 cancelled, 0 blocked",
                                                    "ran now: 0; ended before this command: 4"]  # fmt: skip
    assert run_cli("wait", root) == 0  # without --quiet: the table, then the same lines
    out = capsys.readouterr().out
    assert "dose_1000/dense/train" in out and out.endswith("ran now: 0; ended before this command: 4\n")


def test_plan_argv_without_an_artifact_root_says_its_output_folders_are_placeholders(scripted, tmp_path, capsys,
                                                                                    monkeypatch):  # fmt: skip
    study, profile, root = scripted({}, doses=(1000,))
    monkeypatch.chdir(tmp_path)
    assert run_cli("plan", "--study", study, "--argv") == 0
    out = capsys.readouterr().out.splitlines()
    note = next(i for i, line in enumerate(out) if "placeholders" in line)
    assert "runs/plan" in out[note] and "--artifact-root" in out[note]
    assert note < next(i for i, line in enumerate(out) if line.startswith("dose_1000/dense/train"))
    assert run_cli("plan", "--study", study, "--argv", "--artifact-root", root) == 0
    out = capsys.readouterr().out
    assert "placeholders" not in out and str(root / "dose_1000/dense/train") in out
    assert not (tmp_path / "runs").exists() and not root.exists()


def test_logs_of_a_failed_attempt_show_both_streams_under_labels_and_a_completed_one_its_stdout(scripted, capsys):
    study, profile, root = scripted({"dose_1000/dense/train": "exit:3"}, doses=(1000,))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 1
    capsys.readouterr()
    assert run_cli("logs", root, "dose_1000/dense/train") == 0
    assert capsys.readouterr().out == ("==> stdout.log <==\ncell dose_1000/dense/train doing exit:3\n\n"
                                       "==> stderr.log <==\ncellcmd: failing on purpose with 3\n")  # fmt: skip
    assert run_cli("logs", root, "dose_1000/dense/train", "--stdout") == 0
    assert capsys.readouterr().out == "cell dose_1000/dense/train doing exit:3\n"
    assert run_cli("logs", root, "dose_1000/dense/test") == 0
    assert capsys.readouterr().out == "cell dose_1000/dense/test doing ok\n"


def test_logs_of_an_attempt_that_never_started_say_so_on_stderr_and_exit_1(scripted, capsys):
    study, profile, root = scripted({"*": "sleep-ok:2"}, doses=(1000,), max_parallel=1)
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--no-wait") == 0
    key = "dose_1000/sparse/test"  # the last cell: its attempt waits for the one slot
    wait_for(lambda: cells(root)[key]["state"] == "PENDING", what="the last cell to be queued")
    capsys.readouterr()
    assert run_cli("logs", root, key) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"gridsubmit: attempt 1 of {key} has not started yet: PENDING")
    assert run_cli("cancel", root, "--view", "sparse", "--split", "test") == 0
    assert run_cli("wait", root, "--quiet") == 1
    attempt = cells(root)[key]["attempts"][-1]
    assert attempt["state"] == "CANCELLED" and not (root / attempt["stdout"]).exists()
    capsys.readouterr()
    for stream in ((), ("--stderr",), ("--follow",)):
        assert run_cli("logs", root, key, *stream) == 1
        out, err = capsys.readouterr()
        assert out == "" and err.startswith(f"gridsubmit: attempt 1 of {key} never started: CANCELLED"), err


def test_status_and_report_show_only_the_cells_their_filters_and_states_select(scripted, tmp_path, capsys):
    study, profile, root = scripted({"dose_1000/sparse/test": "exit:3"}, doses=(1000, 10000))
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 1
    capsys.readouterr()
    table = lambda out: [line.split()[0] for line in out.splitlines() if line.startswith("dose_")]  # noqa: E731
    assert run_cli("status", root, "--dose", 1000, "--view", "sparse") == 0
    out = capsys.readouterr().out
    assert table(out) == ["dose_1000/sparse/train", "dose_1000/sparse/test"]
    assert "\n2 cells of 8 selected: COMPLETED 1, FAILED 1" in out
    assert run_cli("status", root, "--state", "failed") == 0
    out = capsys.readouterr().out
    assert table(out) == ["dose_1000/sparse/test"] and "1 cells of 8 selected: FAILED 1" in out
    assert run_cli("status", root, "--state", "RUNNING") == 0
    assert "0 cells of 8 selected: none" in capsys.readouterr().out
    assert run_cli("status", root, "--split", "test", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert [c["key"] for c in data["jobs"]] == [f"dose_{d}/{v}/test" for d in (1000, 10000) for v in ("dense", "sparse")]
    assert data["n_jobs"] == 4 and data["counts"] == {"COMPLETED": 3, "FAILED": 1} and data["n_failed"] == 1
    with pytest.raises(SystemExit) as exc:
        run_cli("status", root, "--state", "DONE")
    assert exc.value.code == 2 and "COMPLETED" in capsys.readouterr().err
    assert run_cli("status", root, "--view", "Dense") == 2
    assert "--view Dense matches no cell of this run; it has: dense, sparse" in capsys.readouterr().err
    assert run_cli("report", root, "--dose", 1000, "--csv", tmp_path / "m.csv", "--require-complete") == 1
    out = capsys.readouterr().out
    assert "3 of 4 cells contribute metrics" in out and "dose_10000" not in out
    assert {line.split(",")[0] for line in (tmp_path / "m.csv").read_text().splitlines()[1:]} == {"1000"}
    assert run_cli("report", root, "--dose", 10000, "--require-complete") == 0
    assert "4 of 4 cells contribute metrics" in capsys.readouterr().out
    assert run_cli("report", root, "--split", "train ") == 2
