"""Headless Chromium driven through the DevTools protocol over a pipe (`--remote-debugging-pipe`:
JSON messages ended by a NUL byte on file descriptors 3 and 4): open a page, read its text and
address, take a screenshot. Standard library only; Debian's `chromium` package is the browser."""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The browser's path; None when none of the usual names is on PATH."""
    for name in BINARIES:
        if path := shutil.which(name):
            return path
    return None


def _above(fd: int, low: int) -> int:
    """`fd` moved to the lowest free descriptor >= `low`."""
    import fcntl

    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, low)
    os.close(fd)
    return moved


class BrowserError(RuntimeError):
    """The browser stopped, did not answer in time, or answered a command with an error."""


class Chromium:
    """One headless browser with one page (a tab) of `width` x `height` pixels."""

    def __init__(self, binary: str, profile: Path, width: int = 1600, height: int = 1000):
        to_browser, self._in = os.pipe()  # we write, the browser reads on fd 3
        self._out, from_browser = os.pipe()  # the browser writes on fd 4, we read
        # the browser's ends above 4, so that moving them to 3 and 4 cannot overwrite one another
        to_browser, from_browser = (_above(fd, 10) for fd in (to_browser, from_browser))
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
        args += ["--remote-debugging-pipe", f"--user-data-dir={profile}", f"--window-size={width},{height}"]
        self._log = open(profile.parent / f"{profile.name}.log", "ab")  # the browser's own messages
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser} 4>&{from_browser}', binary, *args, "about:blank"],
            pass_fds=(to_browser, from_browser),
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buf, self._next = b"", 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.resize(width, height)

    def resize(self, width: int, height: int) -> None:
        """The page's viewport (a tall one shows a long page whole in a screenshot)."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, timeout: float = 30, **params) -> dict:
        """Send one command (to the page once attached) and wait for its answer."""
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params}
        if getattr(self, "_session", None):
            msg["sessionId"] = self._session
        os.write(self._in, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            reply = self._read(deadline - time.time(), method)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})

    def _read(self, timeout: float, method: str) -> dict:
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._out], [], [], max(timeout, 0))
            chunk = os.read(self._out, 1 << 20) if ready else b""
            if not chunk:
                raise BrowserError(
                    f"{method}: no answer from the browser (exit code {self.proc.poll()}; see {self._log.name})"
                )
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def location(self) -> str:
        return self.evaluate("location.href") or ""

    def wait_for(self, ready: Callable[[str], bool], timeout: float = 60) -> str:
        """The page's text once `ready(text)` holds; BrowserError with the text's start when it
        never does within `timeout` seconds."""
        deadline, text = time.time() + timeout, ""
        while time.time() < deadline:
            text = self.text()
            if ready(text):
                return text
            time.sleep(0.5)
        raise BrowserError(f"the page ({self.location()}) never got ready; it shows: {text[:500]!r}")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self._session = None  # Browser.close is the browser's command, not the page's
        try:
            if self.proc.poll() is None:
                self.call("Browser.close", timeout=5)
        except BrowserError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._in)
        os.close(self._out)
        self._log.close()
