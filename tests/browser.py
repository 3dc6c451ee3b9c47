"""A page opened in a real headless browser (Debian's chromium) through the DevTools protocol:
its console errors and uncaught exceptions, whether every <audio> and <img> loads, and a
screenshot. For the tests of the HTML pages the commands write."""
from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")

# for each <audio>: wait until its metadata loads or it fails; each <img>: loaded and non-empty
CHECK_MEDIA = """
(async () => {
  const audio = await Promise.all([...document.querySelectorAll('audio')].map(a =>
    new Promise(done => {
      const report = () => done({src: a.getAttribute('src'), ok: a.readyState >= 1 && !a.error,
                                 duration: a.duration, error: a.error && a.error.code});
      if (a.readyState >= 1 || a.error) return report();
      a.addEventListener('loadedmetadata', report, {once: true});
      a.addEventListener('error', report, {once: true});
      a.load();
      setTimeout(report, 10000);
    })));
  const images = [...document.images].map(i => ({src: i.getAttribute('src'),
                                                 ok: i.complete && i.naturalWidth > 0}));
  return JSON.stringify({audio, images, title: document.title,
                         text: document.body.innerText.length});
})()
"""


def chromium() -> str | None:
    return next((shutil.which(c) for c in CHROMIUM if shutil.which(c)), None)


class _Session:
    def __init__(self, ws_url):
        import websocket
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events = []

    def call(self, method, **params):
        n = next(self.ids)
        self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method, timeout=30.0):
        end = time.time() + timeout
        while time.time() < end:
            if any(e.get("method") == method for e in self.events):
                return True
            self.events.append(json.loads(self.ws.recv()))
        return False


def inspect(page: Path, width: int = 1400, height: int = 1000) -> dict:
    """-> {"console_errors", "audio", "images", "screenshot" (PNG bytes), "title"} of a page."""
    exe = chromium()
    if exe is None:
        raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
    profile = tempfile.mkdtemp(prefix="fastcpu-chromium-")
    proc = subprocess.Popen(
        [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-extensions", "--mute-audio", f"--user-data-dir={profile}",
         "--remote-debugging-port=0", f"--window-size={width},{height}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        end = time.time() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.time() > end or proc.poll() is not None:
                raise RuntimeError(f"chromium did not start (status {proc.poll()})")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list",
                                                    timeout=10).read())
        ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        s = _Session(ws_url)
        for domain in ("Page", "Runtime", "Log"):
            s.call(f"{domain}.enable")
        s.call("Page.navigate", url=Path(page).resolve().as_uri())
        if not s.wait_for("Page.loadEventFired"):
            raise RuntimeError(f"{page}: no load event in 30 s")
        media = json.loads(s.call("Runtime.evaluate", expression=CHECK_MEDIA, awaitPromise=True,
                                  returnByValue=True)["result"]["value"])
        shot = base64.b64decode(s.call("Page.captureScreenshot", format="png")["data"])
        errors = []
        for e in s.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                errors.append(p["exceptionDetails"].get("text", "exception"))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                       for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                errors.append(f"{p['entry'].get('text')} {p['entry'].get('url', '')}")
        s.ws.close()
        return {"console_errors": errors, "screenshot": shot, **media}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


def required() -> bool:
    """CI sets FASTCPU_REQUIRE_BROWSER=1: there, a missing chromium fails the tests."""
    return os.environ.get("FASTCPU_REQUIRE_BROWSER", "") not in ("", "0")
