"""Check the TensorBoard first page in a real browser and save its screenshot (docs/img/tensorboard.png).

    .venv/bin/python scripts/tensorboard_screenshot.py [--out docs/img/tensorboard.png] [--steps 60]
        [--run-dir DIR (an existing run: no training)] [--width 1600]

1. trains configs/run/tiny-cpu.yaml for --steps steps on random shards (CPU, one process) into a temporary
   run_dir named `tiny-cpu`, unless --run-dir names a run to show;
2. starts TensorBoard on 127.0.0.1 (the venv's tensorboard, `--logdir <run_dir>/tensorboard`, the command the
   trainer prints) and checks over its HTTP API that the run is named after run_dir and that
   /data/plugin/custom_scalars/layout is the layout the trainer wrote (pipeline/train/tensorboard_layout.py);
   per chart it asks /data/plugin/custom_scalars/scalars which tags the chart's patterns match;
3. opens http://127.0.0.1:PORT/#custom_scalars in headless Chromium (Debian package `chromium`, installed by
   scripts/setup.sh), driven over the DevTools protocol on a pipe (--remote-debugging-pipe: no extra Python
   package, no port), waits until every chart card has drawn as many series as the API says it matches,
   and saves a screenshot of the whole layout.
Exits 0 when every check holds, 1 with the failed checks listed, 2 when chromium or tensorboard is missing.
Nothing leaves 127.0.0.1.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# In the page: every custom-scalars chart card (they live in nested shadow roots) with its title, how many
# series it draws ("Matches (n)" under the chart) and its extent, for the checks and the screenshot size.
CARDS_JS = r"""(() => {
  const cards = [];
  const walk = (root) => { for (const el of root.querySelectorAll('*')) {
      if (el.tagName.toLowerCase() === 'tf-custom-scalar-multi-line-chart-card') cards.push(el);
      if (el.shadowRoot) walk(el.shadowRoot); } };
  const text = (root) => { let t = ''; for (const el of root.querySelectorAll('*')) {
      if (el.tagName !== 'STYLE' && el.children.length === 0) t += ' ' + el.textContent;
      if (el.shadowRoot) t += text(el.shadowRoot); } return t; };
  walk(document);
  return cards.map(c => { const m = text(c.shadowRoot).match(/Matches \((\d+)\)/); const r = c.getBoundingClientRect();
    return {title: c.title, matches: m ? +m[1] : null, bottom: Math.round(r.bottom)}; });
})()"""


def find_chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_tiny(run_dir: Path, steps: int) -> None:
    """A short tiny-cpu run on random shards (bench/startup_memory.py's), validation every 10 steps."""
    from bench.startup_memory import write_shards

    shards = write_shards(run_dir.parent / "shards")
    cmd = [sys.executable, str(REPO / "launch" / "train.py"), "--config", str(REPO / "configs/run/tiny-cpu.yaml"),
           f"data.path={shards}", f"run_dir={run_dir}", f"train.max_steps={steps}", "log.every=2",
           "log.histogram_every=10", "eval.every=10", "checkpoint.every=0", "checkpoint.save_at_end=false"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"training failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


class TensorBoard:
    """The venv's tensorboard on 127.0.0.1 for one logdir; stopped on exit (only the process it started)."""

    def __init__(self, logdir: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        exe = Path(sys.executable).parent / "tensorboard"
        self.proc = subprocess.Popen([str(exe), "--logdir", str(logdir), "--host", "127.0.0.1", "--port",
                                      str(self.port), "--reload_interval", "1"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_for_layout(self, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tensorboard exited with {self.proc.returncode}")
            try:
                layout = get_json(f"{self.base}/data/plugin/custom_scalars/layout")
                if layout.get("category"):
                    return layout
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"no custom-scalars layout at {self.base} within {timeout:.0f} s")

    def matched_tags(self, run: str, patterns: list[str]) -> set[str]:
        tags: set[str] = set()
        for pattern in patterns:
            query = urllib.parse.urlencode({"run": run, "tag": pattern})
            tags |= set(get_json(f"{self.base}/data/plugin/custom_scalars/scalars?{query}")["tag_to_events"])
        return tags

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=20)


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe: fd 3 carries our commands, fd 4 its
    replies, each a JSON message ended by a NUL byte (Chromium's --remote-debugging-pipe)."""

    def __init__(self, exe: str, width: int, height: int):
        self.profile = tempfile.mkdtemp(prefix="tb_chromium_")
        to_child, from_us = os.pipe()
        to_us, from_child = os.pipe()

        def child_fds():   # the child's fds 3 and 4 become the pipe ends (dup first: the ends may be 3 or 4)
            read_end, write_end = os.dup(to_child), os.dup(from_child)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        # --no-sandbox: Chromium refuses to start its sandbox as root (containers, CI)
        self.proc = subprocess.Popen([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                      "--hide-scrollbars", "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
                                      f"--window-size={width},{height}", "about:blank"],
                                     preexec_fn=child_fds, close_fds=False, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self.out, self.inp = os.fdopen(from_us, "wb", buffering=0), os.fdopen(to_us, "rb", buffering=0)
        self.buffer, self.next_id, self.session = b"", 0, None
        self.size = (width, height)

    def call(self, method: str, params: dict | None = None) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session is not None and not method.startswith("Target."):
            message["sessionId"] = self.session
        self.out.write(json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            chunk = self.inp.read(1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buffer += chunk

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.resize(*self.size)

    def resize(self, width: int, height: int) -> None:
        self.size = (width, height)
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False})

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})["result"].get("value")

    def screenshot(self, path: Path) -> None:
        """The viewport as PNG, reduced to a 256-colour palette (a third of the bytes; the page is flat colour)."""
        import io

        from PIL import Image

        data = base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.open(io.BytesIO(data)).convert("RGB").quantize(256).save(path, optimize=True)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def expected_layout(run_dir: Path) -> dict:
    """The layout the trainer wrote for this run, read back from its event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    from pipeline.train.metrics_writer import tensorboard_run_dir

    acc = EventAccumulator(str(tensorboard_run_dir(run_dir)), size_guidance={"tensors": 0})
    acc.Reload()
    proto = layout_pb2.Layout()
    proto.ParseFromString(acc.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0])
    return {c.title: [(chart.title, list(chart.multiline.tag)) for chart in c.chart] for c in proto.category}


def check(run_dir: Path, out: Path, width: int, chromium: str, timeout: float = 120) -> list[str]:
    """All checks; returns the failures (empty: the page is right and `out` holds its screenshot)."""
    failures: list[str] = []
    written = expected_layout(run_dir)
    run_name = run_dir.resolve().name
    with TensorBoard(run_dir / "tensorboard") as tb:
        layout = tb.wait_for_layout()
        runs = get_json(f"{tb.base}/data/runs")
        if runs != [run_name]:
            failures.append(f"TensorBoard runs {runs}, expected [{run_name!r}] (the run_dir's name)")
        served = {c["title"]: [(ch["title"], ch["multiline"]["tag"]) for ch in c["chart"]] for c in layout["category"]}
        if served != written:
            failures.append(f"served layout differs from the one written:\n{served}\nvs\n{written}")
        if next(iter(served), None) != "Loss":
            failures.append(f"first category is {next(iter(served), None)!r}, not 'Loss'")
        want = {title: len(tb.matched_tags(run_name, patterns)) for charts in written.values()
                for title, patterns in charts}
        for category, charts in written.items():   # the headline chart of every section has data
            if category != "Other" and not want[charts[0][0]]:
                failures.append(f"{category}: no tag of the run matches its first chart {charts[0][0]!r}")
        browser = Chromium(chromium, width, 1200)
        try:
            browser.open(f"{tb.base}/#custom_scalars")
            deadline, cards = time.monotonic() + timeout, []
            while time.monotonic() < deadline:
                cards = browser.evaluate(CARDS_JS) or []
                drawn = {c["title"]: c["matches"] for c in cards}
                if drawn == want:
                    break
                time.sleep(1)
            drawn = {c["title"]: c["matches"] for c in cards}
            if drawn != want:
                failures.append(f"charts drawn in the browser {drawn}\ndiffer from the API's matches {want}")
            height = max([c["bottom"] for c in cards] + [600]) + 40
            browser.resize(width, height)            # the whole layout in one picture
            time.sleep(3)                             # let the resized charts redraw
            browser.screenshot(out)
        finally:
            browser.close()
    return failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "docs/img/tensorboard.png"))
    ap.add_argument("--run-dir", default=None, help="show this existing run instead of training one")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--width", type=int, default=1600)
    args = ap.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        print(f"no chromium ({', '.join(CHROMIUM_NAMES)}) on PATH: apt-get install chromium "
              "(scripts/setup.sh does)", file=sys.stderr)
        return 2
    tmp = None
    if args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="tb_screenshot_"))
        run_dir = tmp / "tiny-cpu"
        train_tiny(run_dir, args.steps)
    try:
        failures = check(run_dir, Path(args.out), args.width, chromium)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    if not failures:
        print(f"ok: every custom-scalars chart drawn in Chromium as TensorBoard's API matches; screenshot {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
