"""A tiny Chrome DevTools Protocol client: headless Chromium driven over its websocket, for the
tests that use a page as a person would (upload a file, read the page, take a screenshot)."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import subprocess
import tempfile
import time
import urllib.request

from bench.gallery import chromium


class Browser:
    """One page of a headless Chromium: `call(method, **params)` -> the result."""

    def __init__(self, ws):
        self.ws, self.ids = ws, itertools.count(1)

    def call(self, method: str, **params):
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:   # events arrive in between: skip them
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0):
        """The first truthy value of `expression`, polled."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"{expression} stayed falsy for {timeout} s")

    def open(self, url: str) -> None:
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

    def set_files(self, selector: str, paths: list[str]) -> None:
        """Put files into an <input type=file> (Chromium fires its change event)."""
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", nodeId=node, files=[os.path.abspath(p) for p in paths])

    def screenshot(self, path: str) -> bytes:
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        with open(path, "wb") as handle:
            handle.write(data)
        return data


@contextlib.contextmanager
def headless_page(width: int = 1000, height: int = 700):
    """A Browser on a blank page; Chromium is stopped afterwards."""
    from websockets.sync.client import connect

    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                                 "--no-first-run", "--disable-dev-shm-usage",
                                 f"--window-size={width},{height}", "--remote-debugging-port=0",
                                 f"--user-data-dir={profile}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port = _devtools_port(profile, proc)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                page = next(t for t in json.load(r) if t["type"] == "page")
            with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
                yield Browser(ws)
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def _devtools_port(profile: str, proc, timeout: float = 60.0) -> int:
    """The port Chromium chose, from the DevToolsActivePort file it writes in its profile."""
    marker = os.path.join(profile, "DevToolsActivePort")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}")
        with contextlib.suppress(OSError, ValueError, IndexError), open(marker) as handle:
            return int(handle.read().split()[0])
        time.sleep(0.1)
    raise TimeoutError("chromium did not open its DevTools port")
