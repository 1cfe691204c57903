"""The HTML report: one self-contained page for a real run of the synthetic study."""

import base64
import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import pytest

from gridsubmit import report_html
from gridsubmit.api import GridExecutor, Run
from gridsubmit.demo.generate import make_study
from gridsubmit.errors import UsageError
from gridsubmit.study import load_study

ORDER = [f"dose_{d}/{v}/{s}" for d in (1000, 10000, 100000) for v in ("dense", "sparse") for s in ("train", "test")]
FAILED = "dose_1000/sparse/test"
BLOCKED = "dose_10000/sparse/train"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Page(HTMLParser):
    """The page as parsed: tag balance problems, ids, links, images, and its text."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.tags: dict[str, int] = {}
        self.ids: list[str] = []
        self.hrefs: list[str] = []
        self.srcs: list[str] = []
        self.chunks: list[str] = []
        self.classes: dict[str, str] = {}  # id -> class, for sections
        self.feed(text)
        self.close()
        if self.stack:
            self.problems.append(f"never closed: {self.stack}")
        self.text = " ".join(self.chunks)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag not in VOID:
            self.stack.append(tag)
        if "id" in attrs:
            self.ids.append(attrs["id"])
            self.classes[attrs["id"]] = attrs.get("class") or ""
        if "href" in attrs:
            self.hrefs.append(attrs["href"])
        if "src" in attrs:
            self.srcs.append(attrs["src"])

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in VOID:
            self.problems.append(f"end tag for void <{tag}>")
        elif not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}>")
        else:
            self.stack.pop()

    def handle_data(self, data):
        if data.strip():
            self.chunks.append(" ".join(data.split()))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real local run of the 12-cell synthetic study: one cell fails (its test data is not an
    npz file), one is BLOCKED (its test data is gone), the other ten complete."""
    tmp = tmp_path_factory.mktemp("html")
    study = make_study(tmp / "study")
    (tmp / "study/phase_c/dose_1000/sparse/sparse_test.npz").write_bytes(b"not an npz file")
    (tmp / "study/phase_c/dose_10000/sparse/sparse_train.npz").unlink()
    executor = GridExecutor(tmp / "run")
    grid = executor.plan(load_study(study), workdir=tmp)
    executor.submit(grid, wait=True, timeout=300)
    manifest = Run(tmp / "run").manifest
    assert manifest["counts"] == {"COMPLETED": 10, "FAILED": 1, "BLOCKED": 1}
    return manifest


@pytest.fixture(scope="module")
def page(run):
    return report_html.render_html(run)


def cells(manifest):
    return {c["key"]: c for c in manifest["jobs"]}


def test_the_page_shows_every_cell_and_embeds_its_plot(run, page):
    parsed = Page(page)
    for key in ORDER:
        assert key in parsed.text
    assert parsed.text.count("COMPLETED") >= 10
    header = parsed.text[: parsed.text.index("Grid")]
    for fact in (run["run_id"], run["artifact_root"], "local", "COMPLETED 10", "FAILED 1", "BLOCKED 1", "fly64-synthetic"):
        assert fact in header
    [image] = [s for s in parsed.srcs if s.startswith("data:image/png;base64,")]
    assert base64.b64decode(image.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # the metrics table: a line per completed cell and model, amplitude/phase pairs
    assert "<th>ms_<wbr>ssim</th>" in page and "pty-chi" in parsed.text  # long names may wrap at underscores
    psnr = next(r for r in cells(run)["dose_1000/dense/test"]["metrics"] if r["model"] == "pty-chi" and r["metric"] == "psnr")
    assert f"{psnr['amplitude']:.4g} {psnr['phase']:.4g}" in parsed.text  # amplitude above phase


def test_the_pages_plot_marks_the_dose_of_the_failed_cell_instead_of_bridging_it(run, monkeypatch):
    from gridsubmit import report

    figures = []
    drawn = report.plot
    monkeypatch.setattr(report, "plot", lambda *args, **kw: figures.append(drawn(*args, **kw)) or figures[-1])
    report_html.render_html(run)
    gone = copy.deepcopy(run)  # and a dose no cell has a result for
    for cell in gone["jobs"]:
        if cell["dose"] == 100000:
            cell["state"] = "FAILED"
    report_html.render_html(gone)
    for fig, expected in zip(figures, ({1000}, {1000, 100000})):
        psnr = fig.axes[0]  # FAILED is dose_1000/sparse/test: the sparse lines have no point at 1000
        sparse = [line for line in psnr.lines if line.get_label().endswith("(sparse)")]
        assert sparse and all(float(line.get_ydata()[0]) != float(line.get_ydata()[0]) for line in sparse)  # NaN
        marks = [line for line in psnr.lines if line.get_label() == "_no result"]
        assert {x for line in marks for x in line.get_xdata()} == expected


def test_the_page_fetches_nothing_from_anywhere(page):
    parsed = Page(page)
    assert "http://" not in page and "https://" not in page
    assert all(h.startswith("#") for h in parsed.hrefs)
    assert all(s.startswith("data:image/png;base64,") for s in parsed.srcs)
    assert not {"script", "link", "iframe", "object", "embed"} & set(parsed.tags)
    assert "@import" not in page and "url(" not in page


def test_the_page_is_well_formed_and_every_link_lands_on_the_page(page):
    parsed = Page(page)
    assert parsed.problems == []
    assert page.startswith("<!DOCTYPE html>")
    assert {t: parsed.tags[t] for t in ("html", "head", "body", "title", "style")} == dict.fromkeys(
        ("html", "head", "body", "title", "style"), 1)  # fmt: skip
    assert len(parsed.ids) == len(set(parsed.ids))
    assert {h[1:] for h in parsed.hrefs} <= set(parsed.ids)
    # the grid links each cell to its section, which is coloured by its state
    for key in ORDER:
        assert f'href="#cell-{key.replace("/", "-")}"' in page
    assert "ok" in parsed.classes["cell-dose_1000-dense-train"].split()
    assert "bad" in parsed.classes["cell-dose_1000-sparse-test"].split()
    assert "blocked" in parsed.classes["cell-dose_10000-sparse-train"].split()


def test_the_failed_cell_shows_its_stderr_tail_logs_and_command_and_the_blocked_one_why(run, page):
    parsed = Page(page)
    failed = cells(run)[FAILED]
    last = failed["attempts"][-1]
    assert "ValueError" in last["stderr_tail"]
    section = parsed.text[parsed.text.index(f"{FAILED} FAILED"):]
    section = section[: section.index("dose_10000/dense/train COMPLETED")]
    assert " ".join(last["stderr_tail"].split()) in section
    root = Path(run["artifact_root"])
    assert str(root / last["stderr"]) in section and str(root / last["stdout"]) in section
    assert " ".join(shlex.join(failed["argv"]).split()) in section
    assert run["context"]["workdir"] in section and failed["output_dir"] in section
    blocked = cells(run)[BLOCKED]
    assert blocked["missing"] and all(why in parsed.text for why in blocked["missing"])
    # a completed cell's section has no stderr tail
    ok = parsed.text[parsed.text.index("dose_1000/dense/train COMPLETED"):parsed.text.index("dose_1000/dense/test COMPLETED")]
    assert "Last lines of stderr" not in ok


def test_completeness_counts_the_cells_with_metrics_and_lists_the_others_with_why(run, page):
    text = Page(page).text
    assert "10 of 12 cells contribute metrics" in text
    part = text[text.index("Completeness"):text.index("Metrics")]
    assert FAILED in part and BLOCKED in part
    assert "does not exist" in part and "FAILED" in part
    stale_key = "dose_1000/dense/train"
    given = Page(report_html.render_html(run, {stale_key: ["input <gone> & more"]})).text
    part = given[given.index("Completeness"):given.index("Metrics")]
    assert "9 of 12 cells contribute metrics" in part and "stale: input <gone> & more" in part
    metrics = given[given.index("Metrics"):given.index("Submissions")]
    assert "1000 dense train" not in " ".join(metrics.split())  # a stale cell's figures are not shown


def test_everything_from_the_manifest_is_escaped(run):
    m = copy.deepcopy(run)
    cell = cells(m)[FAILED]
    cell["attempts"][-1]["stderr_tail"] = "boom <script>alert(1)</script> & <b>bold</b>"
    cell["argv"] = ["python", "-c", "print('<img src=x onerror=alert(1)>')"]
    m["run_id"] = '"><script>alert(2)</script>'
    html = report_html.render_html(m, {"dose_1000/dense/train": ["<i>why</i>"]})
    parsed = Page(html)
    assert "<script" not in html and "<img src=x" not in html and "<i>why" not in html
    assert "boom <script>alert(1)</script> & <b>bold</b>" in parsed.text
    assert shlex.join(cell["argv"]) in parsed.text
    assert parsed.problems == [] and "<b>bold" not in html


def test_optional_attempt_fields_submissions_input_identities_and_stale_are_shown(run):
    m = copy.deepcopy(run)
    cell = cells(m)["dose_1000/dense/train"]
    attempt = cell["attempts"][-1]
    attempt.update(gpu_name="NVIDIA H100 80GB HBM3", gpu_driver="550.54.15", elapsed="00:01:07", max_rss="1234K",
                   scheduler_state="COMPLETED", fingerprint="f1ng3rpr1nt", submission=2,
                   inputs={"phase_c_npz": {"path": cell["inputs"]["phase_c_npz"], "size": 15412, "mtime": 1.7e9,
                                           "sha256": "ab" * 32}})  # fmt: skip
    cell["stale"] = ["phase_c_npz changed since it ran", "the command changed"]
    m["submissions"] = [{"at": 1.7e9, "user": "alice"},
                        {"at": 1.7e9 + 60, "user": "bob", "host": "login1", "versions": {"gridsubmit": "9.9"},
                         "git": {"commit": "c0ffee1234", "dirty": True}, "future_key": {"x": [1, 2]}}]  # fmt: skip
    cells(m)["dose_1000/dense/test"]["attempts"][-1]["submission"] = 7  # no such record
    text = Page(report_html.render_html(m, {cell["key"]: cell["stale"]})).text
    for shown in ("NVIDIA H100 80GB HBM3", "550.54.15", "00:01:07", "1234K", "f1ng3rpr1nt", "ab" * 32, "15.0 KiB",
                  "stale: phase_c_npz changed since it ran; the command changed", "bob", "login1", "gridsubmit: 9.9",
                  "c0ffee1234 (dirty)", "future_key", "x: 1, 2", "submission 7 (not recorded in this manifest)"):  # fmt: skip
        assert shown in text, shown
    assert report_html._when(1.7e9) in text
    assert "1 attempt · stale" in text  # the grid marks it too


def test_write_html_writes_the_page_and_names_a_path_it_cannot_write(run, tmp_path):
    path = report_html.write_html(run, tmp_path / "report.html")
    assert path == tmp_path / "report.html"
    assert "dose_100000/sparse/test" in path.read_text(encoding="utf-8")
    with pytest.raises(UsageError, match="cannot write the HTML report"):
        report_html.write_html(run, tmp_path / "no" / "such" / "report.html")


def test_without_matplotlib_the_page_says_there_is_no_plot(run, tmp_path):
    (tmp_path / "m.json").write_text(json.dumps(run))
    code = ("import json, sys; sys.modules['matplotlib'] = None; from gridsubmit import report_html; "
            f"print(report_html.render_html(json.load(open({str(tmp_path / 'm.json')!r}))))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "no plot: matplotlib not installed" in out and "data:image/png" not in out
    assert FAILED in out


def test_the_template_ships_with_the_package():
    assert resources.files("gridsubmit").joinpath("templates/report.html.j2").is_file()
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert re.search(r'^gridsubmit = \[.*"templates/\*\.j2".*\]$', pyproject, re.M)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(not CHROMIUM, reason="no chromium on PATH (scripts/test installs Debian's chromium when run as root)")
def test_a_headless_browser_renders_the_page(run, tmp_path):
    from PIL import Image  # pillow comes with matplotlib, a test dependency

    path = report_html.write_html(run, tmp_path / "report.html")
    shot = tmp_path / "report.png"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,2000", path.as_uri()],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    dom = subprocess.run([*flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    for key in ORDER:
        assert key in dom
    assert "data:image/png;base64," in dom
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    with Image.open(shot) as image:
        assert image.size == (1200, 2000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 50  # text, badges and the state colours, not a blank page


def test_report_html_from_the_command_line(run, tmp_path, capsys):
    from conftest import run_cli

    path = tmp_path / "page.html"
    assert run_cli("report", run["artifact_root"], "--html", path) == 0
    html = path.read_text(encoding="utf-8")
    parsed = Page(html)
    assert parsed.problems == [] and "data:image/png;base64," in html
    assert all(cell["key"] in parsed.text for cell in run["jobs"])
    assert " ".join(cells(run)[FAILED]["attempts"][-1]["stderr_tail"].split()) in parsed.text
    assert f"wrote {path}" in capsys.readouterr().out


def test_a_packed_attempt_shows_its_jobs_figures_as_the_whole_packs(run):
    m = copy.deepcopy(run)
    attempt = cells(m)["dose_1000/dense/train"]["attempts"][-1]
    attempt.update(job_id="41_0", pack={"size": 3, "position": 0, "scheduler_state": "COMPLETED", "elapsed": "00:02:00",
                                        "max_rss": "7G"})  # fmt: skip
    text = Page(report_html.render_html(m)).text
    assert "pack job 41_0 ran 3 cells in turn, this cell #1; the whole job's scheduler_state=COMPLETED, elapsed=00:02:00, " \
           "max_rss=7G" in text
