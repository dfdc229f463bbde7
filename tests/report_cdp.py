"""A small Chrome DevTools Protocol client for the report's browser tests (headless Debian Chromium).

One browser process per `Chromium` context, one page target driven over the browser's websocket
with a flat session. Every event is kept, so a test can ask afterwards which requests were made and
which errors were logged. No third-party driver: `websockets` (already installed) and the stdlib.
"""

import base64
import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from websockets.sync.client import connect
from websockets.sync.connection import Connection

# Debian's Chromium (.ci/run installs it); STAGETUNE_CHROMIUM names another Chromium-based browser speaking
# the same protocol, e.g. the Google Chrome of a hosted CI runner (.github/workflows/ci.yml).
CHROMIUM = Path(os.environ.get("STAGETUNE_CHROMIUM") or "/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--remote-debugging-port=0",
)


class Page:
    """One page target: send commands, keep events, evaluate JavaScript, take screenshots."""

    def __init__(self, socket: Connection, session_id: str) -> None:
        self._socket = socket
        self._session = session_id
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """Send one command and return its result (events that arrive meanwhile are kept)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}, "sessionId": self._session}
        self._socket.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline - time.monotonic())
            if reply is None:
                raise TimeoutError(f"no reply to {method} within {timeout} s")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return dict(reply.get("result", {}))

    def wait_event(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        """The first kept event named `method`, waiting for it if it has not arrived yet."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["method"] == method:
                    return event
            if self._receive(deadline - time.monotonic()) is None:
                raise TimeoutError(f"no {method} event within {timeout} s")

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression (awaited when it is a promise)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0, poll: float = 0.25) -> Any:
        """Poll `expression` until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            self._receive(poll)
        raise TimeoutError(f"{expression[:120]!r} stayed falsy for {timeout} s")

    def navigate(self, url: str, timeout: float = 30.0) -> None:
        """Open `url` and wait for its load event."""
        self.events = [e for e in self.events if e["method"] != "Page.loadEventFired"]
        result = self.send("Page.navigate", {"url": url})
        if "errorText" in result:
            raise RuntimeError(f"could not open {url}: {result['errorText']}")
        if "loaderId" in result:  # omitted for a same-document (#fragment) navigation: no load event then
            self.wait_event("Page.loadEventFired", timeout)

    def screenshot(self, selector: str, max_height: int = 4000) -> np.ndarray:
        """An RGB array of the element matching `selector`, scrolled into view first."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView();"
            " const r = e.getBoundingClientRect();"
            " return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height}; })()"
        )
        clip = {**box, "height": min(box["height"], max_height), "scale": 1}
        shot = self.send("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True})
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB"))

    def pump(self, seconds: float) -> None:
        """Keep receiving events for `seconds`."""
        deadline = time.monotonic() + seconds
        while self._receive(deadline - time.monotonic()) is not None:
            pass

    def _receive(self, timeout: float) -> dict[str, Any] | None:
        if timeout <= 0:
            return None
        try:
            message = json.loads(self._socket.recv(timeout=timeout))
        except TimeoutError:
            return None
        if "method" in message:
            self.events.append(message)
        return dict(message)


@contextmanager
def chromium_page(user_data_dir: Path, width: int = 1280, height: int = 900) -> Iterator[Page]:
    """A headless Chromium with one blank page whose Page, Runtime, Log and Network domains are on."""
    process = subprocess.Popen(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = _devtools_endpoint(user_data_dir, process)
        with connect(endpoint, proxy=None, max_size=None, open_timeout=30) as socket:
            target = _command(socket, "Target.createTarget", {"url": "about:blank"})["targetId"]
            session = _command(socket, "Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            page = Page(socket, session)
            for domain in ("Page", "Runtime", "Log", "Network"):
                page.send(f"{domain}.enable")
            metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
            page.send("Emulation.setDeviceMetricsOverride", metrics)
            yield page
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def console_errors(page: Page) -> list[str]:
    """Console errors, uncaught exceptions and error log entries seen so far."""
    errors = []
    for event in page.events:
        params = event.get("params", {})
        if event["method"] == "Runtime.consoleAPICalled" and params.get("type") == "error":
            errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif event["method"] == "Runtime.exceptionThrown":
            errors.append(str(params.get("exceptionDetails", {}).get("text")))
        elif event["method"] == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            errors.append(str(params["entry"].get("text")))
    return errors


def requested_urls(page: Page) -> list[str]:
    """Every URL the page asked the network for, in order."""
    return [e["params"]["request"]["url"] for e in page.events if e["method"] == "Network.requestWillBeSent"]


def is_blank(image: np.ndarray) -> bool:
    """True for an image of one colour (or nearly): nothing was drawn."""
    differs = (image != image[0, 0]).any(axis=-1)  # pixels not of the corner's colour
    return float(differs.mean()) < 0.001 or float(image.std()) < 2.0


def _devtools_endpoint(user_data_dir: Path, process: subprocess.Popen[bytes], timeout: float = 30.0) -> str:
    # With --remote-debugging-port=0 Chromium picks a free port and writes it (and the browser's
    # websocket path) to DevToolsActivePort in the profile folder.
    marker = user_data_dir / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with code {process.returncode} before it opened DevTools")
        lines = marker.read_text().split() if marker.is_file() else []
        if len(lines) >= 2:
            return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        time.sleep(0.1)
    raise TimeoutError(f"chromium wrote no {marker} within {timeout} s")


def _command(socket: Connection, method: str, params: dict[str, Any]) -> dict[str, Any]:
    # Browser-level commands, before the page session exists; events in between are not needed.
    socket.send(json.dumps({"id": 0, "method": method, "params": params}))
    while True:
        reply = json.loads(socket.recv(timeout=30))
        if reply.get("id") == 0:
            if "error" in reply:
                raise RuntimeError(f"{method} failed: {reply['error']}")
            return dict(reply["result"])
