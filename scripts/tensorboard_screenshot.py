"""The docs' TensorBoard screenshot of a sweep: a real sweep with --tensorboard, TensorBoard on the loopback,
and a real browser (headless Chromium, driven by Playwright) that opens it and takes the picture.

    python scripts/tensorboard_screenshot.py --data-dir ../shared/data/mnist --out docs/tensorboard-sweep.png

Needs `pip install 'jaxlin[tensorboard]' playwright` and a Chromium (Debian: `apt-get install chromium`;
`--chromium PATH` for another). Nothing leaves the machine: TensorBoard listens on 127.0.0.1 only, and
the browser resolves no host name but the loopback's and starts none of its background services.
"""

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SWEEP = ["--learning-rates", "0.01,0.05,0.2,0.5,1.0", "--num-steps", "2000", "--eval-every", "100"]
# Chromium without its calls home: no background networking, no component updates, no sync, and host names
# other than the loopback's resolve to nothing.
CHROMIUM_ARGS = ["--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
                 "--metrics-recording-only", "--disable-features=OptimizationHints,MediaRouter,Translate",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--no-sandbox"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def screenshot(url: str, out: Path, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1000}, device_scale_factor=1)
        page.goto(url)
        page.wait_for_selector("text=accuracy/validation", timeout=60_000)
        page.locator("button[aria-label='Close side pane']").first.click()  # the room to the charts
        page.wait_for_timeout(3000)  # the charts redrawn
        page.screenshot(path=str(out))
        browser.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="the MNIST IDX directory")
    parser.add_argument("--out", type=Path, default=Path("docs/tensorboard-sweep.png"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        sweep = Path(work) / "sweep"
        subprocess.run([sys.executable, "-m", "jaxlin.cli", "sweep", "--data-dir", args.data_dir, "--output-dir",
                        str(sweep), "--tensorboard", "--no-progress", *SWEEP], check=True)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(sweep / "tensorboard"),
                                   "--host", "127.0.0.1", "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(f"http://127.0.0.1:{port}/data/runs")
            # The curves as recorded (no smoothing), every tag in one grid (a filter that all match), drawn as
            # SVG (headless Chromium has no GPU for TensorBoard's WebGL charts).
            screenshot(f"http://127.0.0.1:{port}/?forceSVG=true&smoothing=0&tagFilter=.#timeseries", args.out,
                       args.chromium)
        finally:
            server.terminate()
            server.wait(30)
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
