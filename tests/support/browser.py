"""Headless Chromium driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``:
JSON messages separated by NUL bytes on file descriptors 3 and 4), so tests need no WebSocket
client or driver package, only the ``chromium`` binary.

    with Browser() as b:
        page = b.open(Path("report.html").resolve().as_uri(), width=1280)
        page.eval("document.title")
        page.click("table.glance th button")
        page.screenshot(tmp_path / "top.png")
        assert page.errors() == []
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
SKIP_REASON = "chromium is not installed (CI installs it with apt-get install chromium)"

# no network, no first-run noise, nothing started in the background that could log errors
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--mute-audio", "--hide-scrollbars"]


class BrowserError(RuntimeError):
    pass


class Browser:
    """One Chromium process; ``open`` gives a ``Page`` attached to a new tab."""

    def __init__(self, timeout: float = 60.0):
        if CHROMIUM is None:
            raise BrowserError(SKIP_REASON)
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="harness-chromium-")
        self._log = tempfile.TemporaryFile()  # a file, not a pipe: a chatty browser never blocks on it
        to_child, self._write = os.pipe()   # we write commands, Chromium reads them on fd 3
        self._read, from_child = os.pipe()  # Chromium writes answers on fd 4
        # place the child's ends at 3 and 4 through bash (dash takes no fd above 9); copies at 10+
        # first, so that the redirections cannot overwrite one another whatever numbers the pipes got
        hi_in, hi_out = fcntl.fcntl(to_child, fcntl.F_DUPFD, 10), fcntl.fcntl(from_child, fcntl.F_DUPFD, 10)
        os.close(to_child)
        os.close(from_child)
        cmd = [CHROMIUM, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self.profile}", "about:blank"]
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{hi_in} 4>&{hi_out} {hi_in}<&- {hi_out}>&-', "bash", *cmd],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
            pass_fds=(hi_in, hi_out))
        os.close(hi_in)
        os.close(hi_out)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict] = []

    # -- protocol
    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._write, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._receive(self.timeout, f"answer to {method}")
            if m.get("id") == msg["id"]:
                if "error" in m:
                    raise BrowserError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str, session: str | None, timeout: float | None = None) -> dict:
        """The first event ``method`` of ``session`` not yet waited for (events seen earlier count)."""
        for i, e in enumerate(self.events):
            if e.get("method") == method and e.get("sessionId") == session and not e.get("_taken"):
                e["_taken"] = True
                return e
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            m = self._receive(deadline - time.monotonic(), method)
            self.events.append(m)
            if m.get("method") == method and m.get("sessionId") == session:
                m["_taken"] = True
                return m

    def _receive(self, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._read], [], [], max(left, 0))
            if not ready:
                raise BrowserError(f"no {what} from Chromium within {timeout:.0f} s")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium closed the pipe while waiting for {what}: {self.log()[-2000:]}")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def log(self) -> str:
        """What Chromium printed on stderr so far."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    # -- pages
    def open(self, url: str, width: int = 1280, height: int = 1000) -> "Page":
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log"):
            page.send(f"{domain}.enable")
        page.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        page.goto(url)
        return page

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close")
                except BrowserError:
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            for fd in (self._write, self._read):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._log.close()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Page:
    def __init__(self, browser: Browser, session: str):
        self.browser, self.session = browser, session

    def send(self, method: str, params: dict | None = None) -> dict:
        return self.browser.send(method, params, self.session)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})
        self.browser.wait_event("Page.loadEventFired", self.session)

    def eval(self, expression: str):
        """The value of a JavaScript expression in the page (JSON-serialisable values only)."""
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise BrowserError(f"{expression[:80]}: {r['exceptionDetails'].get('exception', r['exceptionDetails'])}")
        return r["result"].get("value")

    def click(self, selector: str, index: int = 0) -> None:
        """A real mouse click (pressed and released) at the centre of the element."""
        box = self.eval(f"""(function () {{
            var el = document.querySelectorAll({json.dumps(selector)})[{index}];
            if (!el) {{ return null; }}
            el.scrollIntoView({{block: 'center'}});
            var r = el.getBoundingClientRect();
            return {{x: r.left + r.width / 2, y: r.top + r.height / 2}};
        }})()""")
        if box is None:
            raise BrowserError(f"no element {selector!r} [{index}]")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent",
                      {"type": kind, "x": box["x"], "y": box["y"], "button": "left", "clickCount": 1})

    def set_value(self, selector: str, value: str) -> None:
        """Sets a form control as a user would and fires its input and change events."""
        ok = self.eval(f"""(function () {{
            var el = document.querySelector({json.dumps(selector)});
            if (!el) {{ return false; }}
            el.value = {json.dumps(value)};
            el.dispatchEvent(new Event('input', {{bubbles: true}}));
            el.dispatchEvent(new Event('change', {{bubbles: true}}));
            return el.value === {json.dumps(value)};
        }})()""")
        if not ok:
            raise BrowserError(f"could not set {selector!r} to {value!r}")

    def screenshot(self, path: Path, selector: str | None = None, max_height: int = 4000) -> Path:
        """A PNG of the viewport, or of the element ``selector`` (cut at ``max_height`` px)."""
        params: dict = {"format": "png"}
        if selector:
            box = self.eval(f"""(function () {{
                var r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();
                return {{x: r.left + window.scrollX, y: r.top + window.scrollY, w: r.width, h: r.height}};
            }})()""")
            params.update(captureBeyondViewport=True, clip={
                "x": 0, "y": box["y"], "width": self.eval("document.documentElement.clientWidth"),
                "height": max(1, min(box["h"], max_height)), "scale": 1})
        data = self.send("Page.captureScreenshot", params)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors (CSP violations among them)."""
        out = []
        for e in self.browser.events:
            if e.get("sessionId") != self.session:
                continue
            p = e.get("params", {})
            if e.get("method") == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
            elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif e.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append("log: " + p["entry"].get("text", ""))
        return out


def is_png(path: Path) -> bool:
    data = Path(path).read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG header."""
    data = Path(path).read_bytes()
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
