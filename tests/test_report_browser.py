"""The report and the MLflow UI in headless Chromium, driven over the DevTools protocol.

Needs Debian's `chromium` (/usr/bin/chromium, or the browser named by STAGETUNE_CHROMIUM); skipped with the
install command when it is absent.
"""

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from stagetune.ci_summary import mlflow_run_page, mlflow_version_url
from stagetune.cli import closing_lines
from tests.conftest import uses_a_server
from tests.report_cdp import CHROMIUM, Page, chromium_page, console_errors, is_blank, requested_urls
from tests.report_fixtures import ReportedRun, reported_regression_run, reported_run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.usefixtures("prefect_server"),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"no {CHROMIUM}: install Debian's browser with `apt-get install -y chromium chromium-driver` "
        "or name a Chromium-based browser in STAGETUNE_CHROMIUM",
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
# The sidebar's links: MLflow 3.17's model-training view lists Runs, Models, Model registry; its GenAI
# view lists Overview, Training runs, Traces, Judges, Evaluation runs, ... (and no Model registry).
SIDEBAR_LINKS = "[...document.querySelectorAll('aside nav a')].map(a => a.textContent.trim())"
# A registered version's page: label -> (text, alias tags, link targets) of each "descriptions" row.
VERSION_FIELDS = """Object.fromEntries([...document.querySelectorAll('[data-testid="descriptions-item"]')].map(row => {
  const content = row.querySelector('[data-testid="descriptions-item-content"]');
  const aliases = [...content.querySelectorAll('[data-component-type="tag"][title]')].map(t => t.title);
  const links = [...content.querySelectorAll('a')].map(a => a.getAttribute('href'));
  return [row.querySelector('[data-testid="descriptions-item-label"]').textContent.trim(),
          [content.textContent.trim(), aliases, links]];
}))"""


@pytest.fixture(scope="module")
@uses_a_server
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
@uses_a_server
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


def test_mlflow_ui_shows_the_model_training_view_the_logged_model_and_the_champion(
    reported_run: ReportedRun, mlflow_ui: str, page: Page
) -> None:
    result = reported_run.result
    assert result.final is not None
    assert result.final.mlflow_run_id is not None
    experiment, registry = result.mlflow_experiment_id, result.final.registry
    version = MlflowClient(result.tracking_uri).get_model_version(registry.model_name, str(registry.version))
    model_id = version.source.removeprefix("models:/")
    shots = Path(os.environ.get("STAGETUNE_UI_SHOTS", reported_run.workdir / "ui-shots"))
    shots.mkdir(parents=True, exist_ok=True)

    # 1. The address a run prints opens the model-training view; its "Runs" link, the experiment's runs.
    printed = closing_lines(result.model_copy(update={"tracking_uri": mlflow_ui}), None)[-1]
    page.navigate(printed.removeprefix("MLflow UI: open "))
    page.wait_for(f"{SIDEBAR_LINKS}.includes('Model registry')", timeout=45)
    page.evaluate("[...document.querySelectorAll('aside nav a')].find(a => a.textContent.trim() == 'Runs').click()")
    page.wait_for(f"!!document.querySelector('a[href$=\"/runs/{result.mlflow_parent_run_id}\"]')", timeout=30)
    assert page.evaluate("location.hash").startswith(f"#/experiments/{experiment}/runs?workflowType=machine_learning")
    links = set(page.evaluate(SIDEBAR_LINKS))
    assert {"Runs", "Models", "Model registry"} <= links
    assert not {"Overview", "Judges", "Evaluation runs"} & links  # the GenAI view's
    _save_viewport(page, shots / "experiment.png")

    # 2. The final run's page lists its logged model, linked to the registered version.
    page.navigate(f"{mlflow_ui}/{mlflow_run_page(experiment, result.final.mlflow_run_id)}")
    page.wait_for("document.body.innerText.includes('Logged models (1)')", timeout=30)
    # The count is drawn before the table's rows (CI at 2f5fe99 read the link while it was missing).
    model_anchor = f"document.querySelector('a[href$=\"/models/{model_id}\"]')"
    page.wait_for(f"!!{model_anchor}", timeout=30)
    model_link = page.evaluate(f"{model_anchor}.textContent")
    assert model_link == "model"
    version_href = f"#/models/{registry.model_name}/versions/{registry.version}"
    assert page.evaluate(f"!!document.querySelector('a[href=\"{version_href}\"]')")
    page.evaluate(f"document.querySelector('a[href$=\"/models/{model_id}\"]').scrollIntoView()")
    _save_viewport(page, shots / "final-run.png")

    # 3. The registered version's page: its alias, the final run and the logged model as its sources.
    version_url = mlflow_version_url(mlflow_ui, registry.model_name, registry.version)  # as the CI summary links it
    assert version_url is not None
    page.navigate(version_url)
    source_model = f'[data-testid="descriptions-item-content"] a[href$="/models/{model_id}"]'
    page.wait_for(f"!!document.querySelector('{source_model}')", timeout=30)  # the last field to load
    fields = page.evaluate(VERSION_FIELDS)
    assert fields["Aliases"][1] == [registry.alias] == ["champion"], fields
    assert fields["Source Run"][2] == [f"#/experiments/{experiment}/runs/{result.final.mlflow_run_id}"], fields
    assert fields["Source Model"][2] == [f"#/experiments/{experiment}/models/{model_id}"], fields
    assert "Model registry" in page.evaluate(SIDEBAR_LINKS)  # still the model-training view
    _save_viewport(page, shots / "version.png")


def _save_viewport(page: Page, path: Path) -> None:
    """Write what the page shows now as a PNG (a check that something was drawn)."""
    png = base64.b64decode(page.send("Page.captureScreenshot", {"format": "png"})["data"])
    assert not is_blank(np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))), path.name
    path.write_bytes(png)
