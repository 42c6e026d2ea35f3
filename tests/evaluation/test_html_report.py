"""report.html in a real headless browser (Debian's chromium, driven over the DevTools pipe, no extra packages).

Builds a report with `vlm evaluate --output` from a small store (tests/trust_fixtures.py), opens it in
chromium, clicks every filter and checks the rows each one shows, checks lazy rendering on 600 documents,
takes a screenshot, and fails on any console error or uncaught exception. Skipped when chromium is missing
(.ci/run installs it). VLM_SCREENSHOT=PATH also saves the screenshot there.
"""

from __future__ import annotations

import base64
import csv
import fcntl
import json
import os
import select
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import VLM
from trust_fixtures import expected_ids, make_store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
TIMEOUT_S = 60.0  # per DevTools reply; a hung browser fails the test instead of hanging it


class Browser:
    """Headless chromium with the DevTools protocol on fds 3 (commands in) and 4 (replies out)."""

    def __init__(self, profile: Path):
        cmd_r, self._cmd_w = os.pipe()
        self._res_r, res_w = os.pipe()
        # Move the child's ends above 4 first, so the dup2 calls below cannot overwrite each other.
        child_in, child_out = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(res_w, fcntl.F_DUPFD, 10)

        def wire() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire, close_fds=False)
        for fd in (cmd_r, res_w, child_in, child_out):
            os.close(fd)
        self._buf, self._next_id, self.events = b"", 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable", session=True)

    def _read_message(self) -> dict:
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._res_r], [], [], TIMEOUT_S)
            if not ready:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._res_r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: bool = False, **params) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, event: str) -> None:
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._read_message())

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(json.dumps(p["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                out.append(json.dumps(p.get("args"))[:500])
            elif method == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                out.append(p["entry"].get("text", "")[:500])
        return out

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._res_r)


def _report(root: Path, repeat: int, scores: bool = False) -> Path:
    store = make_store(root, repeat=repeat, scores=scores)
    out = root / "report"
    r = subprocess.run([*VLM, "evaluate", "--groups", "vanilla-model", "finetuned-model", "--store", str(store),
                        "--output", str(out), "--bootstrap", "100", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out / "report.html"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def _open(browser: Browser, html: Path, width: int = 1280, height: int = 1400) -> None:
    browser.events.clear()
    browser.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                 deviceScaleFactor=1, mobile=False)
    browser.call("Page.navigate", session=True, url=html.as_uri())
    browser.wait_for("Page.loadEventFired")


def _shown(browser: Browser) -> list[str]:
    return browser.js("Array.from(document.querySelectorAll('#docs .doc')).map(d => d.dataset.id)")


def test_filters_screenshot_and_no_console_errors(browser, tmp_path):
    html = _report(tmp_path, repeat=1)
    _open(browser, html)
    assert _shown(browser) == [f"doc{i}" for i in range(6)]
    # Every row has a thumbnail inlined as a data URI, and wrong values carry the character diff.
    assert browser.js("Array.from(document.querySelectorAll('.thumb img')).every(i => i.src.startsWith('data:'))")
    assert browser.js("document.querySelectorAll('td.wrong ins').length") > 0
    for kind in ("fixed", "broken", "inconsistent", "label"):
        browser.js(f"document.querySelector('[data-filter={kind}]').click()")
        assert _shown(browser) == expected_ids(kind), kind
    browser.js("document.querySelector('#worst-n').value = '2';"
               "document.querySelector('#worst-n').dispatchEvent(new Event('change'));"
               "document.querySelector('[data-filter=worst]').click()")
    assert _shown(browser) == ["doc1", "doc5"]  # the fine-tune's two lowest nTED (0.878, 0.967)
    browser.js("document.querySelector('[data-filter=all]').click();"
               "const s = document.querySelector('#sort'); s.value = '0:asc'; s.dispatchEvent(new Event('change'))")
    assert _shown(browser)[:2] == ["doc2", "doc3"]  # vanilla: not JSON, then {} (nTED 0)
    browser.js("location.hash = ''; document.querySelector('#sort').value = '';"
               "document.querySelector('#sort').dispatchEvent(new Event('change'))")
    shot = base64.b64decode(browser.call("Page.captureScreenshot", session=True, format="png",
                                         captureBeyondViewport=True)["data"])
    assert shot.startswith(b"\x89PNG") and len(shot) > 20_000
    (tmp_path / "report.png").write_bytes(shot)
    if os.environ.get("VLM_SCREENSHOT"):
        Path(os.environ["VLM_SCREENSHOT"]).write_bytes(shot)
    assert browser.errors() == []


def test_rows_render_lazily(browser, tmp_path):
    html = _report(tmp_path, repeat=100)  # 600 documents
    _open(browser, html, height=900)
    assert browser.js("document.querySelector('#docs').dataset.matching") == "600"
    first = len(_shown(browser))
    assert 0 < first < 200
    # Scroll to the end; the observer appends the next batch. Wait for it (or give up after 10 s).
    more = browser.js(f"""window.scrollTo(0, document.body.scrollHeight);
        new Promise(resolve => {{
          const t0 = performance.now();
          (function poll() {{
            const n = document.querySelectorAll('#docs .doc').length;
            if (n > {first} || performance.now() - t0 > 10000) resolve(n); else setTimeout(poll, 20);
          }})();
        }})""")
    assert more > first
    browser.js("document.querySelector('[data-filter=label]').click()")
    assert _shown(browser)[:3] == sorted(expected_ids("label", 100))[:3]  # the store orders ids as text
    assert browser.js("document.querySelector('#docs').dataset.matching") == "100"
    assert browser.errors() == []


def test_fields_carry_confidence_colours_and_least_confident_sort_works(browser, tmp_path):
    html = _report(tmp_path, repeat=1, scores=True)
    with open(html.parent / "per_document.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["group"] == "finetuned-model"]
    by_conf = [r["id"] for r in sorted(rows, key=lambda r: (float(r["confidence"]) if r["confidence"] else 9,
                                                            int(r["id"][3:])))]
    scored = sum(int(r["fields_scored"] or 0) for r in rows)
    _open(browser, html)
    # Every predicted field of the fine-tune (the group with scores) carries its confidence as a colour.
    coloured = browser.js("document.querySelectorAll('td.conf-hi, td.conf-mid, td.conf-lo').length")
    assert coloured == scored > 0
    assert browser.js("Array.from(document.querySelectorAll('td[data-conf]')).every(td => "
                      "td.classList.contains(+td.dataset.conf >= 0.9 ? 'conf-hi' : +td.dataset.conf >= 0.5 ? "
                      "'conf-mid' : 'conf-lo'))")
    assert browser.js("document.querySelectorAll('#sort option[value=\"0:conf\"]').length") == 0  # no scores
    assert "AUROC" in browser.js("document.querySelector('#confidence').textContent")
    browser.js("const s = document.querySelector('#sort'); s.value = '1:conf'; s.dispatchEvent(new Event('change'))")
    assert _shown(browser) == by_conf
    assert browser.errors() == []
