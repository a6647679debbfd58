"""The page in a real browser: `atrous serve` started as a process, headless Chromium (Debian's
`chromium`, driven by Playwright) loads the page, uploads an image, and the overlay, mask and
legend are checked pixel by pixel against the API; a screenshot is saved. Skips, saying
why, where Chromium or Playwright is absent (`.ci/run` installs Chromium)."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CLASSES, PALETTE, REPO

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install 'atrous[serve]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDTH, HEIGHT = 97, 61  # odd sizes: the overlay must keep the image's own size
OPACITY = 0.55  # the slider's initial value
MAX_PIXELS = 10_000  # the server's limit: the page resizes larger images to fit


@pytest.fixture(scope="module")
def server(varied_checkpoint, tmp_path_factory):
    """`python -m atrous serve` on a free loopback port; yields its URL."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "atrous", "serve", "--checkpoint", str(varied_checkpoint), "--port", "0",
             "--max-megapixels", str(MAX_PIXELS / 1e6)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        url = _wait_for_url(process, log_path)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_for_url(process: subprocess.Popen, log_path: Path, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        match = re.search(r"on (http://127\.0\.0\.1:\d+/)", log_path.read_text())
        if match:
            return match.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.1)
    pytest.fail(f"atrous serve did not start:\n{log_path.read_text()}")


@pytest.fixture
def page(tmp_path):
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / f"profile-{uuid.uuid4().hex}"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 900})
        try:
            page = context.new_page()
            page.set_default_timeout(60_000)
            yield page
        finally:
            context.close()


def scene() -> np.ndarray:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[: HEIGHT // 2] = PALETTE[0]
    image[HEIGHT // 2:] = PALETTE[1]
    image[15:45, 30:70] = PALETTE[2]
    noise = np.random.default_rng(1).integers(0, 40, image.shape)
    return (image + noise).clip(0, 255).astype(np.uint8)


def canvas_pixels(page, selector: str) -> np.ndarray:
    """(H, W, 3) uint8 of a canvas on the page."""
    width, height, data = page.eval_on_selector(
        selector, "c => [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]")
    return np.asarray(data, np.uint8).reshape(height, width, 4)[..., :3]


def api_mask(url: str, png: bytes, query: str = "crf=none") -> np.ndarray:
    """The class indices the API returns for `png` (an independent request, not the page's)."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"s.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{url}predict?output=mask&{query}", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())))


def test_page_segments_an_upload_in_chromium(server, page, tmp_path):
    image = scene()
    image_path = tmp_path / "scene.png"
    Image.fromarray(image).save(image_path)
    (tmp_path / "broken.png").write_bytes(b"this is text, not pixels")
    page_errors: list[str] = []
    page.on("pageerror", lambda err: page_errors.append(str(err)))
    predictions: list[str] = []
    page.on("request", lambda request: predictions.append(request.url) if "/predict" in request.url else None)

    page.goto(server)
    page.wait_for_function("document.getElementById('model').textContent.includes('segnet_basic')")
    assert page.locator("#legend tbody tr").count() == len(CLASSES)

    # a bad upload shows the server's one-line message; the page and the server go on
    page.set_input_files("#file", str(tmp_path / "broken.png"))
    page.wait_for_selector("body[data-state=error]")
    assert "not an image" in page.inner_text("#status")

    page.set_input_files("#file", str(image_path))
    page.wait_for_selector("body[data-state=done]")
    assert page.is_visible("#overlay") and page.is_visible("#mask")
    assert page.eval_on_selector("#overlay", "c => [c.width, c.height]") == [WIDTH, HEIGHT]
    assert page.inner_text("#size") == f"{WIDTH}×{HEIGHT}"

    labels = api_mask(server, image_path.read_bytes())
    colours = np.asarray(PALETTE, np.float64)[labels]  # (H, W, 3)
    assert len(np.unique(labels)) >= 3
    np.testing.assert_array_equal(canvas_pixels(page, "#mask"), colours)
    np.testing.assert_allclose(canvas_pixels(page, "#input"), image, atol=2)
    expected = image * (1 - OPACITY) + colours * OPACITY
    np.testing.assert_allclose(canvas_pixels(page, "#overlay"), expected, atol=3)

    # the slider redraws in the browser, without asking the server again
    asked = len(predictions)
    page.eval_on_selector("#opacity", "el => { el.value = 100; el.dispatchEvent(new Event('input')); }")
    np.testing.assert_allclose(canvas_pixels(page, "#overlay"), colours, atol=1)
    assert len(predictions) == asked

    shares = [float(s.rstrip("%")) for s in page.locator("#legend tbody td:nth-child(2)").all_inner_texts()]
    counts = np.bincount(labels.reshape(-1), minlength=len(CLASSES)) / labels.size
    assert sorted(shares, reverse=True) == shares  # largest first
    assert sorted(shares) == pytest.approx(sorted(np.round(100 * counts, 1)), abs=0.051)
    assert "model" in page.inner_text("#timings") and "round trip" in page.inner_text("#timings")

    # the CRF switch: the refined result beside the raw one
    page.click("#crf button[data-value=dense]")
    page.wait_for_selector("#crf-views:not(.hidden)")
    page.wait_for_selector("body[data-state=done]")
    refined = np.asarray(PALETTE, np.float64)[api_mask(server, image_path.read_bytes(), "crf=dense")]
    np.testing.assert_array_equal(canvas_pixels(page, "#mask-crf"), refined)
    np.testing.assert_array_equal(canvas_pixels(page, "#mask"), colours)
    assert "CRF" in page.inner_text("#timings") and "%" in page.inner_text("#changed")
    page.click("#crf button[data-value=none]")  # back: the raw result is already there
    assert page.is_hidden("#crf-views") and len(predictions) == asked + 1

    # atrous.infer's views (without the CRF): three scales, flipped
    page.click("#scales button[data-value='0.75,1,1.25']")
    page.check("#flip")
    page.wait_for_function("document.getElementById('timings').textContent.includes('6 views')")
    page.wait_for_selector("body[data-state=done]")
    views = api_mask(server, image_path.read_bytes(), "scales=0.75,1,1.25&flip=true")
    np.testing.assert_array_equal(canvas_pixels(page, "#mask"), np.asarray(PALETTE, np.float64)[views])

    # an image over the server's limit is resized in the browser to fit, not refused
    page.click("#scales button[data-value='1']")
    page.uncheck("#flip")
    Image.fromarray(np.resize(scene(), (120, 160, 3))).save(tmp_path / "large.png")  # 19200 pixels
    page.set_input_files("#file", str(tmp_path / "large.png"))
    page.wait_for_function("document.getElementById('status').textContent.includes('resized from 160×120')")
    assert page.eval_on_selector("#overlay", "c => [c.width, c.height]") == [115, 86]  # 160 x 120 * sqrt(10000 / 19200)

    page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
    if os.environ.get("ATROUS_SCREENSHOT"):  # keep a copy to look at
        shutil.copy(tmp_path / "serve.png", os.environ["ATROUS_SCREENSHOT"])
    assert Image.open(tmp_path / "serve.png").size[0] >= 1000
    assert page_errors == []
