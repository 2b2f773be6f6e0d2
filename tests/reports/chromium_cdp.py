"""Load a page in headless Chromium and record what the browser saw, over the DevTools protocol.

A tiny stdlib WebSocket client (RFC 6455: masked client frames, 16/64-bit lengths, fragments,
ping/pong) speaks CDP to the page target, so the browser tests need no extra Python package.
``load_page`` returns every network request, console message, log entry and uncaught exception,
the result of a JavaScript probe, and a full-page PNG screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class WebSocket:
    """Just enough of a WebSocket client for CDP's JSON text messages."""

    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urlparse(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout_s)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket handshake refused: {head[:200]!r}")

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("websocket closed")
            buf += chunk
        return bytes(buf)

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        head = bytearray([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head.append(0x80 | n)
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes(head) + mask + masked)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def recv(self) -> str:
        message = bytearray()
        while True:
            b0, b1 = self._read(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(n)
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the browser")
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode in (0x1, 0x2, 0x0):
                message += payload
                if b0 & 0x80:
                    return message.decode()

    def close(self) -> None:
        self.sock.close()


@dataclass
class PageLoad:
    """What happened while the page loaded."""

    requests: list[str] = field(default_factory=list)
    console: list[dict[str, Any]] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    exceptions: list[dict[str, Any]] = field(default_factory=list)
    probe: Any = None
    screenshot_png: bytes = b""
    pdf: bytes = b""

    @property
    def errors(self) -> list[str]:
        """Console errors, error log entries (failed loads, CSP violations) and exceptions."""
        out = [
            f"console.{c['type']}: {c.get('args')}" for c in self.console if c["type"] in ("error", "assert")
        ]
        out += [
            f"log {e['level']}: {e.get('text')} {e.get('url', '')}" for e in self.log if e["level"] == "error"
        ]
        out += [f"exception: {e.get('exceptionDetails', {}).get('text')}" for e in self.exceptions]
        return out


class _Cdp:
    def __init__(self, ws: WebSocket, timeout_s: float) -> None:
        self.ws, self.timeout_s, self.next_id = ws, timeout_s, 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"CDP {method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)
        raise TimeoutError(f"CDP {method}: no answer in {self.timeout_s} s")

    def wait_for(self, event: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        if any(e.get("method") == event for e in self.events):
            return
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            self.events.append(message)
            if message.get("method") == event:
                return
        raise TimeoutError(f"no {event} in {self.timeout_s} s")


def _devtools_port(profile_dir: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    marker = profile_dir / "DevToolsActivePort"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if marker.is_file() and marker.read_text().strip():
            return int(marker.read_text().split()[0])
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode} before DevTools was up")
        time.sleep(0.05)
    raise TimeoutError("chromium did not open its DevTools port")


def load_page(
    chromium: str, page: Path, probe_js: str, width: int = 1366, timeout_s: float = 60.0, pdf: bool = False
) -> PageLoad:
    """Open ``page`` (a local file), wait for ``load``, run ``probe_js``, take a full-page screenshot,
    and with ``pdf`` print it (A4, the page's print CSS)."""
    # Chromium's helper processes (renderer, crashpad) can still be writing the profile when the
    # browser has exited: the whole process group is ended, and a file they left behind must not
    # fail the test (a flaky "Directory not empty: 'Default'" on cleanup otherwise).
    with tempfile.TemporaryDirectory(prefix="pdplan-chromium-", ignore_cleanup_errors=True) as tmp:
        profile_dir = Path(tmp)
        proc = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            port = _devtools_port(profile_dir, proc, timeout_s)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout_s) as resp:
                targets = json.load(resp)
            target = next(t for t in targets if t.get("type") == "page")
            ws = WebSocket(target["webSocketDebuggerUrl"], timeout_s)
            try:
                return _drive(_Cdp(ws, timeout_s), page, probe_js, width, pdf)
            finally:
                ws.close()
        finally:
            _end_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _end_group(proc, signal.SIGKILL)
                proc.wait()
            _end_group(proc, signal.SIGKILL)  # helpers that outlived the browser


def _end_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _drive(cdp: _Cdp, page: Path, probe_js: str, width: int, pdf: bool) -> PageLoad:
    for domain in ("Page", "Network", "Runtime", "Log"):
        cdp.call(f"{domain}.enable")
    cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1, mobile=False)
    cdp.events.clear()
    cdp.call("Page.navigate", url=page.resolve().as_uri())
    cdp.wait_for("Page.loadEventFired")
    result = cdp.call("Runtime.evaluate", expression=probe_js, returnByValue=True)
    metrics = cdp.call("Page.getLayoutMetrics")
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    shot = cdp.call(
        "Page.captureScreenshot",
        format="png",
        captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": width, "height": min(size["height"], 16000), "scale": 1},
    )
    out = PageLoad(probe=result.get("result", {}).get("value"), screenshot_png=base64.b64decode(shot["data"]))
    if pdf:
        printed = cdp.call("Page.printToPDF", preferCSSPageSize=True, printBackground=False)
        out.pdf = base64.b64decode(printed["data"])
    for event in cdp.events:
        params = event.get("params", {})
        if event.get("method") == "Network.requestWillBeSent":
            out.requests.append(params["request"]["url"])
        elif event.get("method") == "Runtime.consoleAPICalled":
            out.console.append(
                {"type": params["type"], "args": [a.get("value") for a in params.get("args", [])]}
            )
        elif event.get("method") == "Log.entryAdded":
            out.log.append(params["entry"])
        elif event.get("method") == "Runtime.exceptionThrown":
            out.exceptions.append(params)
    return out
