#!/usr/bin/env python3
"""End-to-end test of the built app in headless Chromium, driven through chromedriver's W3C
WebDriver API with the Python standard library (no selenium). `bash web/e2e.sh` runs it.

    python3 web/e2e.py URL OUT_DIR [--bench]

Checks, on WebGPU (SwiftShader under --enable-unsafe-webgpu) and then on the CPU backend: the page
picks the backend, the trigger gallery of all six attacks is stamped (by the WGSL kernels on
WebGPU), a tiny training run (a few batches) shows clean accuracy and ASR, and a tiny cleanse shows
the after numbers (E2E_WEBGPU_TRAIN=0 skips training on WebGPU); the browser console must show no
rejected kernel, wgpu error or panic. Then the viewer: sample reports
give the attack x defense table, a malformed report gives an error naming the file, and the
results archive of the quick protocol (results/quick), opened as a folder, gives its table and
every run's curves, and the subset table's archive (results/subset) all 48 of its cells.
Saves screenshots into OUT_DIR. E2E_QUERY adds URL settings (e.g. batches=1); E2E_BACKENDS picks backends ("webgpu cpu"). With --bench, trains two whole epochs of the demo setting on each
backend instead (BadNets, width 8, 1,500 images, batch 32), and prints the epoch times.
"""
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

FLAGS = [
    "--headless", "--no-sandbox", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-unsafe-webgpu", "--window-size=1280,2200",
    # SwiftShader runs compute shaders on the CPU: long dispatches must not count as a GPU hang.
    "--disable-gpu-watchdog",
]
HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")


class Fail(Exception):
    pass


class Browser:
    def __init__(self):
        self.logs = []  # every console message so far (see console())
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.driver = subprocess.Popen(["chromedriver", f"--port={self.port}"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                self.call("GET", "/status")
                break
            except Exception:
                time.sleep(0.1)
        args = FLAGS + [f"--user-data-dir={tempfile.mkdtemp()}"]
        caps = {"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
            "goog:loggingPrefs": {"browser": "ALL"}}}}
        self.sid = self.call("POST", "/session", caps)["value"]["sessionId"]
        self.call("POST", f"/session/{self.sid}/timeouts", {"script": 600000})

    def call(self, method, path, body=None):
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=900) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            raise Fail(f"webdriver {method} {path}: {e.read().decode(errors='replace')[:500]}")

    def open(self, url):
        self.call("POST", f"/session/{self.sid}/url", {"url": url})

    def js(self, script, *args):
        return self.call("POST", f"/session/{self.sid}/execute/sync",
                         {"script": script, "args": list(args)})["value"]

    def text(self, css):
        return self.js("const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", css)

    def wait(self, what, check, timeout):
        t0 = time.time()
        while time.time() - t0 < timeout:
            v = check()
            if v:
                return v
            err = self.text("#demo-error") or self.text("#load-error")
            if err:
                raise Fail(f"waiting for {what}: the page shows an error: {err}")
            time.sleep(0.5)
        raise Fail(f"timed out after {timeout} s waiting for {what}; status: {self.text('#status')!r}")

    def click(self, css):
        self.js("document.querySelector(arguments[0]).click();", css)

    def set_value(self, css, value):
        self.js("const e = document.querySelector(arguments[0]); e.value = arguments[1];"
                "e.dispatchEvent(new Event('change', {bubbles: true}));", css, value)

    def send_files(self, css, paths):
        eid = self.call("POST", f"/session/{self.sid}/element",
                        {"using": "css selector", "value": css})["value"]
        eid = next(iter(eid.values()))
        self.call("POST", f"/session/{self.sid}/element/{eid}/value", {"text": "\n".join(paths)})

    def screenshot(self, path, css=None):
        if css:
            eid = self.call("POST", f"/session/{self.sid}/element",
                            {"using": "css selector", "value": css})["value"]
            eid = next(iter(eid.values()))
            data = self.call("GET", f"/session/{self.sid}/element/{eid}/screenshot")["value"]
        else:
            data = self.call("GET", f"/session/{self.sid}/screenshot")["value"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def console(self):
        """Every console message of the session so far (chromedriver's log endpoint drains, so
        they are kept here)."""
        try:
            logs = self.call("POST", f"/session/{self.sid}/se/log", {"type": "browser"})["value"]
            self.logs += [f"{e.get('level')}: {e.get('message')}" for e in logs]
        except Exception as e:
            self.logs.append(f"(no console log: {e})")
        return self.logs

    def check_console(self, what):
        """Fails on a kernel the browser rejected, a wgpu error or a panic logged so far: a
        rejected kernel's dispatches are dropped, so its results are garbage even when numbers
        appear on the page."""
        bad = [l for l in self.console()
               if any(k in l for k in ("WGSL compilation failed", "wgpu error", "panicked at"))]
        if bad:
            raise Fail(f"{what}: the console reports {len(bad)} error(s), first: {bad[0][:600]}")

    def close(self):
        try:
            self.call("DELETE", f"/session/{self.sid}")
        finally:
            self.driver.terminate()
            self.driver.wait()


def percent(text):
    return text is not None and text.strip().endswith("%")


def demo(b, base, backend, out, bench):
    query = "backend=cpu" if backend == "cpu" else ""
    if not bench:
        query = "preset=tiny" + ("&" + query if query else "")
    # E2E_QUERY adds page settings, e.g. batches=1.
    extra = os.environ.get("E2E_QUERY", "")
    if extra:
        query = f"{query}&{extra}" if query else extra
    b.open(f"{base}/index.html?{query}")
    label = b.wait("the compute backend", lambda: (lambda t: t if t and "starting" not in t else None)(b.text("#backend")), 120)
    print(f"[{backend}] backend: {label}")
    if backend == "webgpu" and not label.startswith("WebGPU"):
        raise Fail(f"expected WebGPU under --enable-unsafe-webgpu, the page says: {label}")
    if backend == "cpu" and not label.startswith("CPU"):
        raise Fail(f"expected the CPU backend, the page says: {label}")
    rows = b.wait("the trigger gallery", lambda: b.js(
        "const r = document.querySelectorAll('#gallery img.poisoned');"
        "return r.length == 6 && [...r].every(i => i.src.startsWith('data:image/png')) ? r.length : 0;"), 300)
    print(f"[{backend}] gallery: {rows} attacks stamped")
    b.check_console(f"[{backend}] gallery")
    if not bench:
        b.screenshot(os.path.join(out, f"gallery-{backend}.png"), "#gallery")
    if backend == "webgpu" and not bench and os.environ.get("E2E_WEBGPU_TRAIN") == "0":
        # E2E_WEBGPU_TRAIN=0 checks only the gallery on WebGPU (training and cleansing under
        # SwiftShader take about a minute).
        b.screenshot(os.path.join(out, f"demo-{backend}.png"))
        return None
    if bench:
        # Two epochs: the first includes compiling the kernels (WebGPU), the second is steady.
        b.set_value("#epochs", "2")
    b.click("#train")
    b.wait("clean accuracy and ASR after training",
           lambda: percent(b.text("#train-acc")) and percent(b.text("#train-asr"))
           and "finished" in (b.text("#status") or ""),
           int(os.environ.get("E2E_TRAIN_TIMEOUT", "1500")))
    secs = b.text("#epoch-seconds")
    print(f"[{backend}] trained: clean accuracy {b.text('#train-acc')}, ASR {b.text('#train-asr')}, "
          f"epoch {secs}{b.text('#train-metrics').split(secs)[-1] if secs else ''}")
    b.check_console(f"[{backend}] training")
    if bench:
        return b.text("#epoch-times")
    b.screenshot(os.path.join(out, f"train-{backend}.png"), "#demo")
    b.click("#cleanse")
    b.wait("the cleansed model's numbers",
           lambda: percent(b.text("#after-acc")) and percent(b.text("#after-asr")), 1500)
    print(f"[{backend}] cleansed: before {b.text('#before-acc')} / {b.text('#before-asr')}, "
          f"after {b.text('#after-acc')} / {b.text('#after-asr')}")
    b.check_console(f"[{backend}] cleansing")
    b.screenshot(os.path.join(out, f"demo-{backend}.png"))
    return secs


def viewer(b, base, out):
    b.open(f"{base}/index.html?page=viewer")
    b.wait("the viewer", lambda: b.text("#viewer") is not None, 60)
    reports = [os.path.join(FIXTURES, f)
               for f in ("badnets-report.json", "cleanse-badnets-report.json", "anp-badnets-report.json")]
    b.send_files("#report-files", reports)
    table = b.wait("the attack x defense table", lambda: b.text("#attack-defense-table"), 60)
    expected = []
    for path in reports:
        r = json.load(open(path))
        expected.append(f"{100 * r['final']['asr']:.1f}")
        expected.append(f"{100 * r['final']['clean_acc']:.1f}")
    missing = [e for e in expected if e not in table]
    if "BadNets" not in table or "ANP" not in table or "Mean" not in table or missing:
        raise Fail(f"the table lacks BadNets, ANP, the mean or the numbers {missing}: {table!r}")
    along = b.js("return document.querySelectorAll('#viewer #defense-curve polyline').length;")
    if along < 2:
        raise Fail(f"expected ANP's accuracy and ASR along the threshold, found {along} lines")
    charts = b.js("return document.querySelectorAll('#viewer .chart polyline').length;")
    if charts < 4:
        raise Fail(f"expected clean accuracy and ASR curves of both runs, found {charts} lines")
    print(f"[viewer] table: {table.strip()[:160]}...")
    b.send_files("#report-files", [os.path.join(FIXTURES, "protocol-table.json")])
    ptable = b.wait("the protocol table", lambda: b.text(".protocol-table"), 60)
    if "Mean" not in ptable or "±" not in ptable or "BadNets" not in ptable:
        raise Fail(f"the protocol table lacks the Mean row, the deviations or BadNets: {ptable!r}")
    print(f"[viewer] protocol table: {ptable.strip()[:160]}...")
    b.screenshot(os.path.join(out, "viewer.png"))
    b.send_files("#report-files", [os.path.join(FIXTURES, "malformed.json")])
    err = b.wait("the malformed file's error", lambda: b.text("#viewer-errors"), 60)
    if "malformed.json" not in err:
        raise Fail(f"the error does not name the file: {err!r}")
    print(f"[viewer] malformed: {err.strip()}")
    b.screenshot(os.path.join(out, "viewer-error.png"), "#drop-zone")
    # A whole results archive, as a folder: its table and every run's report; its weights,
    # manifests and splits are left unread.
    archived, atable = open_archive(b, "quick")
    kd = archived["cells"][0][-1]
    want = f"{100 * kd['acc_mean']:.1f}"
    if "quick" not in (b.text("#viewer h3") or "") or want not in atable:
        raise Fail(f"the archive's table lacks its name or the KD cell {want}: {atable!r}")
    runs = b.wait("the archive's runs", lambda: b.js(
        "const n = document.querySelectorAll('#viewer section.run').length; return n >= 8 ? n : 0;"), 60)
    notes = b.text("#viewer-notes") or ""
    if "left unread" not in notes:
        raise Fail(f"expected a note on the files left unread: {notes!r}")
    print(f"[viewer] archive folder: {runs} runs, {notes.strip()}")
    b.screenshot(os.path.join(out, "viewer-archive.png"))
    # The subset table's archive (RESULTS.md): six attacks by the undefended model and seven
    # defenses, every cell archived and shown.
    archived, stable = open_archive(b, "subset")
    done = [c for row in archived["cells"] for c in row if c and c.get("n")]
    if len(done) != 48:
        raise Fail(f"the subset archive has {len(done)} of its 48 cells")
    want = [f"{100 * c['acc_mean']:.1f}" for c in done]
    if "subset" not in (b.text("#viewer h3") or "") or not all(w in stable for w in want):
        raise Fail(f"the subset archive's table lacks its name or a cell of {want}: {stable!r}")
    print(f"[viewer] subset archive: {len(done)} cells: {stable.strip()[:160]}...")
    # Its leaderboard: a best defense for every attack with a defended cell (BadNets' first).
    board = b.wait("the subset's leaderboard", lambda: b.text(".leaderboard"), 60)
    if "BadNets" not in board or "DER" not in board:
        raise Fail(f"the leaderboard lacks BadNets' row: {board!r}")
    pairs = b.text(".leaderboard-reversals") or ""
    print(f"[viewer] leaderboard: {board.strip()[:160]}...; reversals: {pairs.strip()[:80]}...")
    b.screenshot(os.path.join(out, "viewer-subset.png"))


def open_archive(b, name):
    """Opens results/NAME as a folder in the viewer (after clearing it): the archive's own table
    (tables/NAME.json) and the text of the table the viewer shows."""
    b.click("#clear-reports")
    archive = os.path.join(HERE, "..", "results", name)
    with open(os.path.join(archive, "tables", f"{name}.json")) as f:
        archived = json.load(f)
    b.send_files("#archive-folder", [os.path.abspath(archive)])
    return archived, b.wait(f"the {name} archive's table", lambda: b.text(".protocol-table"), 60)


def showcase(b, base, out):
    """The demo at its default setting on the CPU backend (BadNets; E2E_EPOCHS and E2E_RATIO_SCALE
    override the training epochs and the cleanser's ratio scale), for the README's screenshot."""
    b.open(f"{base}/index.html?backend=cpu")
    b.wait("the gallery", lambda: b.js("return document.querySelectorAll('#gallery img.poisoned').length == 6;"), 300)
    if os.environ.get("E2E_EPOCHS"):
        b.set_value("#epochs", os.environ["E2E_EPOCHS"])
    b.click("#train")
    b.wait("training", lambda: percent(b.text("#train-asr")) and "finished" in (b.text("#status") or ""), 1800)
    if os.environ.get("E2E_RATIO_SCALE"):
        b.set_value("#ratio-scale", os.environ["E2E_RATIO_SCALE"])
    b.click("#cleanse")
    b.wait("cleansing", lambda: percent(b.text("#after-asr")), 1800)
    print(f"[showcase] trained {b.text('#train-acc')} / {b.text('#train-asr')} in epochs of "
          f"{b.text('#epoch-times')} s; cleansed {b.text('#after-acc')} / {b.text('#after-asr')}")
    b.screenshot(os.path.join(out, "showcase.png"))


def main():
    base, out = sys.argv[1], sys.argv[2]
    bench = "--bench" in sys.argv[3:]
    if "--showcase" in sys.argv[3:]:
        os.makedirs(out, exist_ok=True)
        b = Browser()
        try:
            showcase(b, base, out)
        except Fail as e:
            print(f"showcase FAILED: {e}", file=sys.stderr)
            sys.exit(1)
        finally:
            b.close()
        return
    os.makedirs(out, exist_ok=True)
    b = Browser()
    try:
        times = {}
        for backend in os.environ.get("E2E_BACKENDS", "webgpu cpu").split():
            times[backend] = demo(b, base, backend, out, bench)
        if bench:
            print("BENCH " + json.dumps(times))
        else:
            viewer(b, base, out)
    except Fail as e:
        try:
            b.screenshot(os.path.join(out, "failure.png"))
        except Exception:
            pass
        print(f"e2e FAILED: {e}", file=sys.stderr)
        lines = b.console()
        # The first messages name the cause; later ones repeat its consequences.
        for line in lines[:8] + (["  ..."] if len(lines) > 16 else []) + lines[max(8, len(lines) - 8):]:
            print(f"  console {line[:1500]}", file=sys.stderr)
        sys.exit(1)
    finally:
        # Every console message of the session, for diagnosis.
        try:
            with open(os.path.join(out, "console.log"), "w") as f:
                f.write("\n".join(b.console()) + "\n")
        except Exception:
            pass
        b.close()
    print("e2e passed" if not bench else "bench done")


if __name__ == "__main__":
    main()
