"""The picture of the page in docs/images/serve.png: `atrous serve` started on a checkpoint,
headless Chromium (Debian's `chromium`, driven by Playwright) uploads an image, switches the
CRF on, and the page is saved as a PNG.

    .venv/bin/python benchmarks/serve_screenshot.py --checkpoint runs/demo/model.safetensors \\
        [--image scene.png | --synthetic-size 320] [--crf dense] [--out docs/images/serve.png]

Without --image it draws a held-out synthetic scene (the demo's data) of --synthetic-size.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from harness import ROOT
from PIL import Image
from serve_load import Server  # benchmarks/serve_load.py

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def synthetic_scene(path: Path, size: int, index: int) -> Path:
    from atrous.data import SyntheticScenes

    image = SyntheticScenes("val", size=size, length=index + 1)[index][0]  # (3, size, size) uint8
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--image")
    parser.add_argument("--synthetic-size", type=int, default=320)
    parser.add_argument("--scene", type=int, default=0, help="which held-out synthetic scene")
    parser.add_argument("--crf", choices=("none", "dense", "conv"), default="dense")
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "serve.png"))
    parser.add_argument("--width", type=int, default=1400)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(args.image) if args.image else synthetic_scene(Path(tmp) / "scene.png", args.synthetic_size,
                                                                    args.scene)
        server = Server(Path(args.checkpoint), Path(tmp) / "server.log")
        try:
            with sync_playwright() as playwright:
                context = playwright.chromium.launch_persistent_context(
                    f"{tmp}/profile", executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
                    viewport={"width": args.width, "height": 800})
                page = context.new_page()
                page.set_default_timeout(300_000)
                page.goto(f"http://{server.host}:{server.port}/")
                page.wait_for_function("document.getElementById('model').textContent.includes('classes')")
                page.set_input_files("#file", str(image))
                page.wait_for_selector("body[data-state=done]")
                if args.crf != "none":
                    page.click(f"#crf button[data-value={args.crf}]")
                    page.wait_for_selector("#crf-views:not(.hidden)")
                    page.wait_for_selector("body[data-state=done]")
                page.screenshot(path=f"{tmp}/page.png", full_page=True)
                context.close()
        finally:
            server.stop()
        shot = Image.open(f"{tmp}/page.png").convert("RGB")
        # an adaptive palette keeps the file small; the page's flat colours survive it
        shot.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            args.out, optimize=True)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KiB, {shot.width}x{shot.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
