"""notify: one command per event (end, first-failure, stuck), never twice, never in the run's way."""

import json
import subprocess
import sys

import jsonschema
import pytest

from conftest import gridsubmit_process, load_manifest, run_cli, wait_for
from gridsubmit.cluster import parse_profile
from gridsubmit.errors import ConfigError
from test_real_study import SCHEMA

APPEND = ("import json, os, sys; payload = json.load(sys.stdin); "
          "open(sys.argv[1], 'a').write(json.dumps({'event': os.environ['GRIDSUBMIT_EVENT'], "
          "'root': os.environ['GRIDSUBMIT_ROOT'], 'payload': payload}) + '\\n')")  # fmt: skip


def events(log):
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def appender(tmp_path):
    log = tmp_path / "events.jsonl"
    return log, [sys.executable, "-c", APPEND, str(log)]


def test_one_end_and_one_first_failure_and_none_again_after_wait(scripted, tmp_path):
    log, notify = appender(tmp_path)
    study, profile, root = scripted({"dose_1000/sparse/test": "exit:3", "dose_1000/dense/test": "exit:4"}, doses=(1000,),
                                    notify=notify)  # fmt: skip
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 1
    got = events(log)
    assert [e["event"] for e in got] == ["first-failure", "end"]
    assert {e["root"] for e in got} == {str(root)}
    failure, end = got[0]["payload"], got[1]["payload"]
    assert failure["cell"]["key"] in ("dose_1000/sparse/test", "dose_1000/dense/test") and failure["cell"]["state"] == "FAILED"
    assert end["n_jobs"] == 4 and end["n_success"] == 2 and end["n_failed"] == 2 and end["run_id"] == load_manifest(root)["run_id"]
    assert {f["key"] for f in end["failed"]} == {"dose_1000/sparse/test", "dose_1000/dense/test"}
    assert end["gpu_hours"]["used"] >= 0 and end["gpu_hours"]["cells_to_run"] == 0
    manifest = load_manifest(root)
    jsonschema.validate(manifest, SCHEMA)
    assert [(n["event"], n["state"], n["submission"]) for n in manifest["notifications"]] == [
        ("first-failure", "sent", 1), ("end", "sent", 1)]

    assert run_cli("wait", root, "--quiet") == 1  # re-attached: nothing is sent again
    assert run_cli("wait", root, "--quiet") == 1
    assert [e["event"] for e in events(log)] == ["first-failure", "end"]


def test_a_runner_that_re_attaches_after_a_crash_sends_the_end_once(scripted, tmp_path):
    log, notify = appender(tmp_path)
    study, profile, root = scripted({"*": "sleep-ok:0.5"}, doses=(1000,), notify=notify)
    proc = gridsubmit_process("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet",
                              env={"GRIDSUBMIT_CRASH_AT": "handles-saved"})  # killed right after submitting
    proc.communicate(timeout=120)
    assert proc.returncode != 0 and events(log) == []
    assert run_cli("wait", root, "--quiet") == 0
    assert [e["event"] for e in events(log)] == ["end"]
    assert run_cli("wait", root, "--quiet") == 0
    assert [e["event"] for e in events(log)] == ["end"]


def test_the_background_runner_of_a_local_no_wait_submit_sends_the_end(scripted, tmp_path):
    log, notify = appender(tmp_path)
    study, profile, root = scripted({}, doses=(1000,), notify=notify)
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet", "--no-wait") == 0
    wait_for(lambda: events(log), timeout=120, what="the end event")
    assert run_cli("wait", root, "--quiet") == 0
    assert [e["event"] for e in events(log)] == ["end"]


@pytest.mark.parametrize("notify, state", [
    (["sh", "-c", "cat > /dev/null; echo no mail server >&2; exit 1"], "failed"),
    (["sh", "-c", "sleep 60"], "timed out"),
    (["/nonexistent/notifier"], "could not start"),
])  # fmt: skip
def test_a_notifier_that_fails_or_hangs_changes_nothing_but_its_record(scripted, tmp_path, notify, state):
    study, profile, root = scripted({}, doses=(1000,), notify=notify, notify_timeout=1)
    assert run_cli("submit", "--study", study, "--cluster", profile, "--artifact-root", root, "--quiet") == 0
    manifest = load_manifest(root)
    assert {c["state"] for c in manifest["jobs"]} == {"COMPLETED"}
    [entry] = manifest["notifications"]
    assert entry["event"] == "end" and entry["state"] == state
    if state == "failed":
        assert entry["returncode"] == 1 and entry["error"] == "exit 1: no mail server"
    if state == "timed out":
        assert "notify_timeout" in entry["error"]
    assert run_cli("wait", root, "--quiet") == 0 and len(load_manifest(root)["notifications"]) == 1  # not retried


def test_the_notify_key_is_an_argv_of_strings():
    base = {"backend": "local", "time": "5:00"}
    assert parse_profile({**base, "notify": ["mail", "-s", "grid done", "me@example.org"]}, "p.yaml").notify == (
        "mail", "-s", "grid done", "me@example.org")
    for bad, key in ((["mail", 3], "notify[1]"), ("mail -s done me", "notify"), ([], "notify"),
                     (["mail", "-s", "a\nb"], "notify[2]"), (["mail"], "notify_timeout")):  # fmt: skip
        extra = {"notify_timeout": 0} if key == "notify_timeout" else {}
        with pytest.raises(ConfigError, match=key.replace("[", r"\[")):
            parse_profile({**base, "notify": bad, **extra}, "p.yaml")
