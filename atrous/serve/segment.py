"""One uploaded image through the model (and a CRF): decode, segment, encode, each step timed.

Inference is `atrous.infer`'s, as in `atrous predict`: the model prepared once at its
precision, each request's views (scales, flip) averaged. Everything here runs in a worker
thread, never on the event loop. The model is shared by the threads (inference only reads
it); each CRF is checked out of a small pool, one copy per concurrent request, because
DenseCRF keeps a per-size cache that is not thread-safe.
"""

from __future__ import annotations

import base64
import copy
import io
import queue
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from atrous.checkpoints.meta import normalisation, palette_of
from atrous.data import ImageTooLarge, decode_image, normalise
from atrous.data.display import crf_images, display_rgb
from atrous.data.tasks import is_sigmoid, predicted, task_of, threshold_of
from atrous.inference.infer import infer_views, make_views, prepare
from atrous.inference.predict import index_png, label_overlay, overlay

CRF_KINDS = ("none", "dense", "conv")
OUTPUTS = ("mask", "overlay", "json")
# the decoders an upload may use; PIL's others (EPS via Ghostscript, ...) stay off on a server
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "PPM")


@dataclass(frozen=True)
class Options:
    """What one request asks for (parsed from the query string)."""

    output: str = "mask"
    crf: str = "none"
    scales: tuple[float, ...] = (1.0,)  # atrous.infer's views: the input resized by each scale,
    flip: bool = False  # and mirrored left-right; their probabilities averaged
    opacity: float = 0.5  # overlay: weight of the class colours
    masks: bool = False  # json: also the index PNGs, base64


@dataclass
class Result:
    """The response body of one request and how long each step took."""

    body: bytes
    media_type: str
    timings_ms: dict[str, float] = field(default_factory=dict)


class Timer:
    """Named wall-clock steps in milliseconds."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + 1000 * (time.perf_counter() - start)


class Pool:
    """Copies of a module, one per concurrent user."""

    def __init__(self, module: torch.nn.Module, copies: int) -> None:
        self._free: queue.Queue[torch.nn.Module] = queue.Queue()
        for index in range(copies):
            self._free.put(module if index == 0 else copy.deepcopy(module))

    @contextmanager
    def take(self) -> Iterator[torch.nn.Module]:
        module = self._free.get()
        try:
            yield module
        finally:
            self._free.put(module)


class Segmenter:
    """The loaded model, its CRFs and class metadata; `run` serves one upload."""

    def __init__(self, model: torch.nn.Module, crfs: dict[str, torch.nn.Module], *, name: str,
                 concurrency: int = 1, precision: str = "fp32", max_pixels: int | None = None,
                 display_bands: Sequence[int] | None = None, threshold: float | None = None) -> None:
        self.model = model.eval()
        self.net = prepare(self.model, precision)
        self.name = name
        self.precision = self.net.precision  # "auto" resolved
        self.max_pixels = max_pixels
        self.device = self.net.device
        self.crfs = {kind: Pool(crf, concurrency) for kind, crf in crfs.items()}
        self.mean, self.std = (torch.tensor(values, dtype=torch.float32) for values in normalisation(model.meta))
        self.display_bands = display_bands  # images that are not 8-bit RGB: shown (and CRF-refined) through these
        self.palette = palette_of(model.meta, model.num_classes)  # (256, 3) uint8
        self.task, self.threshold = task_of(model.meta), threshold_of(model.meta, threshold)
        self.sigmoid = is_sigmoid(self.task)
        names = model.meta.get("class_names") or []
        self.class_names = [names[i] if i < len(names) else f"class_{i}" for i in range(model.num_classes)]

    def describe(self) -> dict[str, Any]:
        config = getattr(self.model, "config", {}) or {}
        return {
            "model": config.get("name", type(self.model).__name__),
            "backbone": config.get("backbone"),
            "checkpoint": self.name,
            "classes": self.class_names,
            "palette": self.palette[: len(self.class_names)].tolist(),
            "device": str(self.device),
            "precision": self.precision,
            "task": self.task,
            **({"threshold": self.threshold} if self.sigmoid else {}),
            "crf": [kind for kind in CRF_KINDS if kind == "none" or kind in self.crfs],
        }

    def labels_of(self, scores: torch.Tensor) -> np.ndarray:
        """(1, K, H, W) scores -> uint8 (H, W) classes; binary and multilabel: (K, H, W) 0/1."""
        return predicted(scores, self.task, self.threshold)[0].to(torch.uint8).cpu().numpy()

    def mask_png(self, labels: np.ndarray) -> Image.Image:
        """The mask as served: the class-index PNG; binary: 0/255 greyscale; multilabel: bit k
        of each pixel set where label k is on (8-bit up to 8 labels, 16-bit up to 16)."""
        if not self.sigmoid:
            return index_png(labels, self.palette)
        if self.task == "binary":
            return Image.fromarray(labels[0] * np.uint8(255), mode="L")
        if len(labels) > 16:
            raise ValueError(f"a mask PNG holds up to 16 labels as bits; this model has {len(labels)}: ask json")
        bits = (labels.astype(np.uint16) << np.arange(len(labels), dtype=np.uint16)[:, None, None]).sum(axis=0)
        return Image.fromarray(bits.astype(np.uint8), mode="L") if len(labels) <= 8 else Image.fromarray(
            bits.astype(np.uint16))

    def segment(self, image: torch.Tensor, options: Options, timer: Timer) -> tuple[np.ndarray, np.ndarray | None]:
        """(C, H, W) image (uint8 or float) -> (H, W) uint8 labels, and the labels before the CRF when one ran."""
        views = make_views(options.scales, options.flip)
        largest = image.shape[1] * image.shape[2] * max(views.scales) ** 2
        if self.max_pixels is not None and largest > self.max_pixels:
            raise ImageTooLarge(f"at scale {max(views.scales):g} the image is {largest / 1e6:.1f} megapixels; "
                                f"the limit is {self.max_pixels / 1e6:.1f}")
        with timer.step("model"):
            normalised = normalise(image, self.mean, self.std)
            logits = infer_views(self.net, normalised[None], views)  # (1, K, H, W)
            labels = self.labels_of(logits)
        if options.crf == "none":
            return labels, None
        with timer.step("crf"), self.crfs[options.crf].take() as layer, torch.no_grad():
            refined = layer(logits, crf_images(image[None], self.display_bands).to(logits.device))
            refined_labels = self.labels_of(refined)
        return refined_labels, labels

    def run(self, data: bytes, what: str, options: Options, timer: Timer) -> Result:
        """Decode the upload, segment it and encode the asked output. Raises DataError
        (ImageTooLarge) for a bad upload."""
        with timer.step("decode"):
            image = decode_image(data, what, max_pixels=self.max_pixels, formats=UPLOAD_FORMATS)
        labels, raw_labels = self.segment(image, options, timer)
        with timer.step("encode"):
            if options.output == "mask":
                return Result(_png(self.mask_png(labels)), "image/png", timer.ms)
            if options.output == "overlay":
                shown = display_rgb(image, self.display_bands)
                blended = (label_overlay(shown, labels, self.palette[: len(labels)], options.opacity) if self.sigmoid
                           else overlay(shown, labels, self.palette, options.opacity))
                return Result(_png(Image.fromarray(blended)), "image/png", timer.ms)
            summary = self.summary(labels, options.masks)
            summary.update(crf=options.crf, scales=list(options.scales), flip=options.flip)
            if raw_labels is not None:
                summary["raw"] = self.summary(raw_labels, options.masks)
        summary["timings_ms"] = {k: round(v, 2) for k, v in timer.ms.items()}
        return Result(_json(summary), "application/json", timer.ms)

    def summary(self, labels: np.ndarray, with_mask: bool) -> dict[str, Any]:
        """Per-class pixel counts and shares of (H, W) labels; the index PNG if asked."""
        height, width = labels.shape[-2:]
        counts = (labels.reshape(len(labels), -1).sum(axis=1) if self.sigmoid
                  else np.bincount(labels.reshape(-1), minlength=len(self.class_names)))
        result: dict[str, Any] = {
            "width": width,
            "height": height,
            "classes": [
                {"index": i, "name": name, "color": self.palette[i].tolist(), "pixels": int(counts[i]),
                 "share": round(float(counts[i]) / (height * width), 6)}
                for i, name in enumerate(self.class_names)
            ],
        }
        if with_mask:
            result["mask_png"] = base64.b64encode(_png(self.mask_png(labels))).decode("ascii")
        return result


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def _json(data: dict[str, Any]) -> bytes:
    import json

    return json.dumps(data, separators=(",", ":")).encode()
