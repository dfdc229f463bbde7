"""The report and the MLflow UI in headless Chromium, driven over the DevTools protocol.

Needs Debian's `chromium` (/usr/bin/chromium); skipped with the install command when it is absent.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.report_cdp import CHROMIUM, Page, chromium_page, console_errors, is_blank, requested_urls
from tests.report_fixtures import ReportedRun, reported_regression_run, reported_run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("prefect_server"),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"no {CHROMIUM}: install Debian's browser with `apt-get install -y chromium chromium-driver`",
    ),
]
__all__ = ["reported_regression_run", "reported_run"]  # the shared session fixtures, imported for pytest

DOM_NUMBERS = (
    "Object.fromEntries([...document.querySelectorAll('[data-key]')].map(e => [e.dataset.key, e.textContent]))"
)
RUN_LINKS = (
    "[...document.querySelectorAll('a[href*=\"/runs/\"]')]"
    ".map(a => [a.getAttribute('href').split('/runs/')[1], a.getBoundingClientRect().left])"
)
# Nested runs start collapsed: click every "expand" (+) button of the runs table; returns how many.
EXPAND_ROWS = """(() => {
  const buttons = [...document.querySelectorAll('button[data-component-id$="runnamecellrenderer.tsx_46"]')]
    .filter(b => b.querySelector('path[d^="M7.25 7.25V4.5"]'));
  buttons.forEach(b => b.click());
  return buttons.length;
})()"""
TREE_NODE = '[data-testid="artifact-tree-node"][artifact-name="{name}"]'


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """One headless Chromium page for the module."""
    with chromium_page(tmp_path_factory.mktemp("chromium-profile"), width=1280, height=1800) as opened:
        yield opened


def test_report_opens_offline_with_no_errors_and_the_summary_numbers(reported_run: ReportedRun, page: Page) -> None:
    _check_report_page(reported_run, page)


def test_regression_report_opens_offline_with_its_scatter_and_residuals(
    reported_regression_run: ReportedRun, page: Page
) -> None:
    _check_report_page(reported_regression_run, page)
    alts = page.evaluate("[...document.images].map(i => i.alt)")
    for name in ("target0", "target1"):
        assert f"predicted vs actual {name} (test)" in alts
        assert f"residuals of {name} (test)" in alts
    assert "confusion matrix on the test split" not in alts
    shot = page.screenshot("section#final")
    assert not is_blank(shot)


def _check_report_page(reported_run: ReportedRun, page: Page) -> None:
    url = (reported_run.report_dir / "report.html").resolve().as_uri()
    page.events.clear()
    page.navigate(url)
    page.wait_for("[...document.images].every(i => i.complete && i.naturalWidth > 0)", timeout=20)
    page.pump(0.5)  # late console messages, if any
    assert console_errors(page) == []
    assert [u for u in requested_urls(page) if u != url and not u.startswith("data:")] == []

    summary = reported_run.summary
    headings = page.evaluate(
        "[...document.querySelectorAll('main > section')].map(s => [s.id, s.querySelector('h2').textContent])"
    )
    assert headings == [[s["id"], s["title"]] for s in summary["sections"]]
    for section in summary["sections"]:
        shot = page.screenshot(f"section#{section['id']}")
        assert shot.shape[0] > 100, section["id"]
        assert not is_blank(shot), section["id"]

    shown = page.evaluate(DOM_NUMBERS)
    assert shown == summary["texts"]
    for key, value in summary["numbers"].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            assert float(shown[key]) == pytest.approx(value, rel=1e-3, abs=1e-12), key


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_ui(reported_run: ReportedRun, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` (lean: no job workers, one process) on the tiny run's store; yields its URL."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [
        str(mlflow),
        "server",
        "--backend-store-uri",
        reported_run.result.tracking_uri,
        "--artifacts-destination",
        (reported_run.workdir / "mlartifacts").as_uri(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    with (folder / "server.log").open("wb") as log:
        server = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, server, folder / "server.log")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its worker: its own process group
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _wait_healthy(url: str, server: subprocess.Popen[bytes], log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({server.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"mlflow server not healthy after {timeout} s: {log.read_text()[-2000:]}")


def _run_tree_ids(run: ReportedRun) -> tuple[str, list[str], list[str]]:
    """The parent's id, its stage runs' ids and the trial runs' ids, from the tracking store."""
    result = run.result
    client = MlflowClient(result.tracking_uri)
    parent = f"tags.`mlflow.parentRunId` = '{result.mlflow_parent_run_id}'"
    stages = client.search_runs([result.mlflow_experiment_id], filter_string=parent)
    assert sorted(r.data.tags["stagetune.stage"] for r in stages) == ["coarse", "final", "refine", "sample", "sanity"]
    trials = [t.mlflow_run_id or "" for stage in (result.coarse, result.refine) if stage for t in stage.trials]
    return result.mlflow_parent_run_id, [r.info.run_id for r in stages], trials


def _expanded_run_links(page: Page, expected: int) -> dict[str, float]:
    links: dict[str, float] = {}
    for _ in range(6):  # parent -> stages -> trials, with slack for slow rendering
        clicked = page.evaluate(EXPAND_ROWS)
        page.pump(0.8)
        links = dict(page.evaluate(RUN_LINKS))
        if not clicked and len(links) >= expected:
            break
    return links


def test_mlflow_ui_shows_the_nested_run_tree_and_the_report_artifact(
    reported_run: ReportedRun, mlflow_ui: str, page: Page
) -> None:
    parent, stages, trials = _run_tree_ids(reported_run)
    experiment = reported_run.result.mlflow_experiment_id
    page.navigate(f"{mlflow_ui}/#/experiments/{experiment}/runs")
    page.wait_for(f"!!document.querySelector('a[href$=\"/runs/{parent}\"]')", timeout=45)
    links = _expanded_run_links(page, 1 + len(stages) + len(trials))
    missing = [run_id for run_id in [parent, *stages, *trials] if run_id not in links]
    assert not missing, f"runs not shown in the MLflow UI: {missing}"
    # Nesting is drawn as indentation: parent < stage < trial.
    assert all(links[parent] < links[stage] for stage in stages)
    assert all(max(links[s] for s in stages) < links[trial] for trial in trials)

    page.navigate(f"{mlflow_ui}/#/experiments/{experiment}/runs/{parent}/artifacts")
    folder = TREE_NODE.format(name="report")
    page.wait_for(f"!!document.querySelector('{folder}')", timeout=30)
    page.evaluate(f"document.querySelector('{folder}').click()")
    html_node = TREE_NODE.format(name="report.html")
    page.wait_for(f"!!document.querySelector('{html_node}')", timeout=30)
    assert page.evaluate(f"!!document.querySelector('{TREE_NODE.format(name='report.md')}')")
    page.evaluate(f"document.querySelector('{html_node}').click()")
    page.wait_for("document.body.innerText.includes('report/report.html')", timeout=30)
