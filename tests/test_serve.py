"""`atrous serve`'s HTTP API in-process: the outputs against independent computations, every
bad upload answered 4xx with one line of JSON (and the server still serving), bounded
concurrency, the command line's one-line errors."""

from __future__ import annotations

import base64
import io
import json
import socket
import struct
import sys
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install 'atrous[serve]')")
pytest.importorskip("multipart", reason="the serve extra is not installed (pip install 'atrous[serve]')")
pytest.importorskip("httpx", reason="starlette's TestClient needs httpx")

from starlette.testclient import TestClient  # noqa: E402

import atrous  # noqa: E402
from atrous.serve import ServeConfig, build_app  # noqa: E402
from tests.conftest import CLASSES, PALETTE  # noqa: E402
from tests.test_cli import assert_one_line_error, run  # noqa: E402


@pytest.fixture(scope="module")
def client(varied_checkpoint):
    with TestClient(build_app(ServeConfig(str(varied_checkpoint), max_upload_mb=0.25, max_megapixels=0.5))) as c:
        yield c


def scene(height: int = 37, width: int = 53) -> np.ndarray:
    """(H, W, 3) uint8: two bands and a box, with noise."""
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2] = PALETTE[0]
    image[height // 2:] = PALETTE[1]
    image[height // 4: 3 * height // 4, width // 3: 2 * width // 3] = PALETTE[2]
    noise = np.random.default_rng(0).integers(0, 30, image.shape)
    return (image + noise).clip(0, 255).astype(np.uint8)


def encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


def post(client: TestClient, data: bytes, query: str = "", field: str = "image", name: str = "scene.png"):
    return client.post(f"/predict?{query}", files={field: (name, data, "image/png")})


def reference_logits(checkpoint, image: np.ndarray) -> torch.Tensor:
    """The model run by hand: (x / 255 - mean) / std with the checkpoint's values."""
    model = atrous.load_checkpoint(str(checkpoint))
    x = (torch.from_numpy(image).permute(2, 0, 1).float() / 255.0 - 0.45) / 0.22
    with torch.no_grad():
        return model(x[None])


def png_array(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)))


def test_health_describes_the_model(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "segnet_basic" and health["device"] == "cpu"
    assert health["classes"] == CLASSES and health["palette"] == PALETTE
    assert health["crf"] == ["none", "dense", "conv"]
    assert health["limits"]["max_upload_bytes"] == 2**18 and health["limits"]["max_pixels"] == 500_000


def test_mask_is_the_models_argmax_at_the_images_size(client, varied_checkpoint):
    image = scene()
    response = post(client, encode(image), "output=mask")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert "model;dur=" in response.headers["server-timing"]
    mask = Image.open(io.BytesIO(response.content))
    assert mask.mode == "P" and mask.size == (53, 37)
    assert mask.getpalette()[:15] == sum(PALETTE, [])
    expected = reference_logits(varied_checkpoint, image).argmax(1)[0].numpy()
    assert len(np.unique(expected)) >= 3  # the check below is not about one constant class
    np.testing.assert_array_equal(np.asarray(mask), expected)


def test_overlay_blends_the_palette_over_the_image(client):
    image = scene()
    labels = png_array(post(client, encode(image), "output=mask").content)
    response = post(client, encode(image), "output=overlay&opacity=0.25")
    overlay = png_array(response.content)
    assert overlay.shape == (37, 53, 3)
    expected = np.round(image * 0.75 + np.asarray(PALETTE)[labels] * 0.25)
    np.testing.assert_allclose(overlay, expected, atol=1)


def test_json_counts_shares_masks_and_timings(client):
    image = scene()
    labels = png_array(post(client, encode(image), "output=mask").content)
    body = post(client, encode(image), "output=json&masks=true").json()
    assert (body["width"], body["height"], body["crf"]) == (53, 37, "none")
    counts = np.bincount(labels.reshape(-1), minlength=5)
    assert [c["pixels"] for c in body["classes"]] == counts.tolist()
    assert [c["name"] for c in body["classes"]] == CLASSES and body["classes"][2]["color"] == PALETTE[2]
    assert sum(c["share"] for c in body["classes"]) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(png_array(base64.b64decode(body["mask_png"])), labels)
    assert {"upload", "queue", "decode", "model", "encode"} <= set(body["timings_ms"])
    assert "mask_png" not in post(client, encode(image), "output=json").json()


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_crf_result_and_the_raw_one_beside_it(client, varied_checkpoint, kind):
    from atrous.crf import ConvCRF, DenseCRF

    image = scene()
    body = post(client, encode(image), f"output=json&crf={kind}&masks=true").json()
    logits = reference_logits(varied_checkpoint, image)
    layer = {"dense": DenseCRF, "conv": ConvCRF}[kind](num_classes=5)
    with torch.no_grad():
        refined = layer(logits, torch.from_numpy(image).permute(2, 0, 1)[None].float()).argmax(1)[0].numpy()
    np.testing.assert_array_equal(png_array(base64.b64decode(body["mask_png"])), refined)
    np.testing.assert_array_equal(png_array(base64.b64decode(body["raw"]["mask_png"])), logits.argmax(1)[0].numpy())
    assert body["crf"] == kind and "crf" in body["timings_ms"]


def test_scales_and_flip_average_the_views_probabilities(client, varied_checkpoint):
    import torch.nn.functional as F

    image = scene()
    model = atrous.load_checkpoint(str(varied_checkpoint))
    x = (torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255.0 - 0.45) / 0.22  # (1, 3, 37, 53)
    probabilities = []
    with torch.no_grad():
        for size in ((28, 40), (37, 53)):  # scales 0.75 and 1: round(37 * 0.75), round(53 * 0.75)
            scaled = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            for flipped in (False, True):
                view = scaled.flip(-1) if flipped else scaled
                p = torch.softmax(model(view), dim=1)
                p = p.flip(-1) if flipped else p
                probabilities.append(F.interpolate(p, size=(37, 53), mode="bilinear", align_corners=False))
    expected = torch.stack(probabilities).mean(0).argmax(1)[0].numpy()
    response = post(client, encode(image), "output=mask&scales=0.75,1&flip=true")
    np.testing.assert_array_equal(png_array(response.content), expected)
    body = post(client, encode(image), "output=json&scales=0.75,1&flip=1").json()
    assert body["scales"] == [0.75, 1.0] and body["flip"] is True
    big = np.zeros((400, 600, 3), np.uint8)  # 0.24 megapixels: under the limit of 0.5, not at scale 2
    assert post(client, encode(big), "output=json").status_code == 200
    refused = post(client, encode(big), "output=json&scales=1,2")
    assert refused.status_code == 413 and "at scale 2" in refused.json()["error"]


def test_every_pil_mode_and_format_is_accepted(client):
    grey = Image.fromarray(scene()[..., 0])
    for image, fmt in ((grey, "PNG"), (Image.fromarray(scene()).convert("RGBA"), "PNG"),
                       (Image.fromarray(scene()), "JPEG"), (grey.convert("P"), "GIF")):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        response = post(client, buffer.getvalue(), "output=mask")
        assert response.status_code == 200, (fmt, response.text)
        assert Image.open(io.BytesIO(response.content)).size == (53, 37)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with a few bytes of pixel data: what a
    decompression bomb looks like before it is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


GOOD = encode(scene())
BAD_UPLOADS = {
    "not an image": (dict(files={"image": ("notes.txt", b"hello, not pixels", "text/plain")}), 400,
                     "not an image"),
    "truncated": (dict(files={"image": ("cut.png", GOOD[: len(GOOD) // 2], "image/png")}), 400, "truncated"),
    "empty": (dict(files={"image": ("empty.png", b"", "image/png")}), 400, "empty"),
    "too many bytes": (dict(files={"image": ("big.png", b"\0" * 2**19, "image/png")}), 413, "--max-upload-mb"),
    "too many bytes, chunked": (dict(content=iter([b"\0" * 2**16] * 8),
                                     headers={"content-type": "multipart/form-data; boundary=x"}), 413, "limit"),
    "absurd dimensions": (dict(files={"image": ("bomb.png", png_header_only(20000, 4000), "image/png")}), 413,
                          "20000x4000 = 80.0 megapixels"),
    "beyond PIL's own bomb limit": (dict(files={"image": ("b.png", png_header_only(2**16 - 1, 2**16 - 1), "x")}),
                                    413, "too large"),
    "wrong field": (dict(files={"file": ("scene.png", GOOD, "image/png")}), 400, "field 'image'"),
    "a text field": (dict(data={"image": "scene.png"}, files={"other": ("x", b"x")}), 400, "field 'image'"),
    "not multipart": (dict(content=GOOD, headers={"content-type": "image/png"}), 400, "multipart/form-data"),
    "broken multipart": (dict(content=b"--x\r\nnonsense", headers={"content-type": "multipart/form-data"}), 400,
                         "multipart"),
    "an EPS file": (dict(files={"image": ("a.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "x")}),
                    400, "accepted formats"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_is_a_one_line_4xx_and_the_server_goes_on(client, case):
    request, status, fragment = BAD_UPLOADS[case]
    response = client.post("/predict", **request)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    message = response.json()["error"]
    assert fragment in message and "\n" not in message and "Traceback" not in message
    assert post(client, GOOD, "output=mask").status_code == 200


@pytest.mark.parametrize(
    ("query", "fragment"),
    [("output=svg", "output must be one of mask|overlay|json"), ("crf=crfasrnn", "crf must be one of"),
     ("opacity=2", "opacity"), ("opacity=half", "opacity"), ("outptu=mask", "unknown query parameter 'outptu'"),
     ("masks=yes", "masks must be"), ("scales=0", "scales must be"), ("scales=2.5", "scales must be"),
     ("scales=1,,2", "scales must be"), ("scales=" + ",".join(["1"] * 9), "1 to 8"), ("scales=nan", "scales"),
     ("flip=left", "flip must be")],
)
def test_bad_options_are_400(client, query, fragment):
    response = post(client, GOOD, query)
    assert response.status_code == 400 and fragment in response.json()["error"]


def test_unknown_routes_answer_json(client):
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    assert client.get("/predict").status_code == 405 and "error" in client.get("/predict").json()


def test_the_page_is_served_and_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element in ('id="file"', 'id="overlay"', 'id="mask"', 'id="opacity"', 'id="crf"', 'id="legend"'):
        assert element in page.text
    assert "http://" not in page.text and "https://" not in page.text and 'src="//' not in page.text


class _Gate:
    """Wraps Segmenter.run: counts the runs in flight and lets them through on demand."""

    def __init__(self, run, hold: bool) -> None:
        self.run, self.open, self.lock = run, threading.Event(), threading.Lock()
        self.inside = self.peak = 0
        if not hold:
            self.open.set()

    def __call__(self, *args):
        with self.lock:
            self.inside += 1
            self.peak = max(self.peak, self.inside)
        try:
            self.open.wait(timeout=30)
            time.sleep(0.02)
            return self.run(*args)
        finally:
            with self.lock:
                self.inside -= 1


def _gated_client(checkpoint, monkeypatch, *, concurrency: int, queue: int, hold: bool):
    from atrous.serve.segment import Segmenter

    app = build_app(ServeConfig(str(checkpoint), concurrency=concurrency, queue=queue))
    gate = _Gate(Segmenter.run, hold)
    monkeypatch.setattr(Segmenter, "run", lambda self, *args: gate(self, *args))
    return TestClient(app), gate


def test_beyond_the_queue_requests_get_503_then_service_resumes(varied_checkpoint, monkeypatch):
    client, gate = _gated_client(varied_checkpoint, monkeypatch, concurrency=1, queue=1, hold=True)
    with client:
        first = [None, None]
        threads = [threading.Thread(target=lambda i=i: first.__setitem__(i, post(client, GOOD))) for i in range(2)]
        for thread in threads:
            thread.start()
        deadline = time.time() + 30
        while gate.inside < 1 and time.time() < deadline:  # one runs, one waits for the worker
            time.sleep(0.01)
        time.sleep(0.2)
        busy = post(client, GOOD)
        assert busy.status_code == 503 and "busy" in busy.json()["error"] and busy.headers["retry-after"] == "1"
        assert client.get("/health").status_code == 200  # inference is off the event loop
        gate.open.set()
        for thread in threads:
            thread.join(timeout=30)
        assert [r.status_code for r in first] == [200, 200]
        assert post(client, GOOD).status_code == 200
    assert gate.peak == 1


def test_inference_runs_at_most_concurrency_at_once(varied_checkpoint, monkeypatch):
    client, gate = _gated_client(varied_checkpoint, monkeypatch, concurrency=2, queue=6, hold=False)
    with client:
        results = []
        threads = [threading.Thread(target=lambda: results.append(post(client, GOOD).status_code)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert results == [200] * 8
    assert gate.peak == 2  # the third and later waited for a worker


def test_serve_command_errors_before_listening(capsys, tmp_path, varied_checkpoint):
    code, _, err = run(capsys, "serve", "--checkpoint", str(tmp_path / "missing.safetensors"))
    assert code == 2
    assert_one_line_error(err, "atrous serve", "checkpoint not found")
    (tmp_path / "conv.yaml").write_text("kind: crfasrnn\n")
    code, _, err = run(capsys, "serve", "--checkpoint", str(varied_checkpoint), "--crf-params",
                       str(tmp_path / "conv.yaml"))
    assert code == 2
    assert_one_line_error(err, "--crf-params", "dense or conv")
    (tmp_path / "dense.yaml").write_text("bi_w: 4\nsxy: 3\n")
    code, _, err = run(capsys, "serve", "--checkpoint", str(varied_checkpoint), "--crf-params",
                       str(tmp_path / "dense.yaml"))
    assert code == 2
    assert_one_line_error(err, "--crf-params", "sxy")
    code, _, err = run(capsys, "serve", "--checkpoint", str(varied_checkpoint), "--max-upload-mb", "0")
    assert code == 2
    assert_one_line_error(err, "--max-upload-mb must be greater than 0, got 0")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code, _, err = run(capsys, "serve", "--checkpoint", str(varied_checkpoint), "--port", port)
    assert code == 2
    assert_one_line_error(err, f"--port {port}", "cannot listen")


def test_serve_without_the_extra_names_the_install_command(capsys, monkeypatch, varied_checkpoint):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` now fails
    code, _, err = run(capsys, "serve", "--checkpoint", str(varied_checkpoint))
    assert code == 2
    assert_one_line_error(err, "uvicorn", "pip install 'atrous[serve]'")


def test_crf_params_file_sets_the_crf_it_names(varied_checkpoint, tmp_path):
    (tmp_path / "conv.yaml").write_text(json.dumps({"kind": "conv", "filter_size": 3, "num_iterations": 2}))
    app = build_app(ServeConfig(str(varied_checkpoint), crf_params=str(tmp_path / "conv.yaml")))
    with app.state.segmenter.crfs["conv"].take() as conv, app.state.segmenter.crfs["dense"].take() as dense:
        assert (conv.filter_size, conv.num_iterations) == (3, 2)
        assert dense.num_iterations == 10  # the other CRF keeps its defaults
    with TestClient(app) as c:
        assert post(c, GOOD, "crf=conv&output=mask").status_code == 200
