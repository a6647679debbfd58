"""Prediction: for each input image, `<stem>.png` (class indices, palette PNG) and
`<stem>_overlay.png` (the colour map blended over the image)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from atrous.data import DataError, read_image
from atrous.data.transforms import Normalize
from atrous.engine.common import normalisation, palette_of
from atrous.engine.errors import UserError
from atrous.engine.files import write_atomic
from atrous.engine.infer import Views, infer_views, prepare
from atrous.models import SegmentationModel


def index_png(labels: np.ndarray, palette: np.ndarray) -> Image.Image:
    """(H, W) class indices as a palette PNG: the pixel values are the classes, viewers
    show the colours."""
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(palette.reshape(-1).tolist())
    return image


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 image with the class colours blended over it."""
    colours = palette[labels].astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + colours * alpha).round().astype(np.uint8)


def _save_png(image: Image.Image, path: str) -> None:
    write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))


def _check_outputs(inputs: Sequence[str], stems: list[str], out_dir: str) -> None:
    """No output may replace an input or another output (`a_overlay.png` vs `a`'s overlay)."""
    outputs = [os.path.join(out_dir, f"{stem}{suffix}.png") for stem in stems for suffix in ("", "_overlay")]
    resolved = [os.path.abspath(p) for p in outputs]
    if len(set(resolved)) != len(resolved):
        clash = next(p for p in resolved if resolved.count(p) > 1)
        raise UserError(f"two outputs would be written to {clash}; rename an input or use another --out")
    sources = {os.path.abspath(p) for p in inputs}
    for path in resolved:
        if path in sources:
            raise UserError(f"writing {path} would replace an input image; choose another --out")


def predict(
    model: SegmentationModel,
    inputs: Sequence[str],
    out_dir: str,
    *,
    crf: torch.nn.Module | None = None,
    precision: str = "fp32",
    views: Views | None = None,
    progress: bool = True,
) -> list[str]:
    """Segments every input image through `atrous.infer` (with `views`, at `precision`);
    returns the paths written. All inputs are read before anything is written, so a bad
    input stops the run with nothing half done."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in inputs]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise UserError(f"two inputs share the name '{duplicates[0]}'; their outputs would overwrite each other")
    _check_outputs(inputs, stems, out_dir)
    try:
        images = [read_image(path) for path in inputs]
    except DataError as err:
        raise UserError(str(err)) from err
    mean, std = normalisation(model.meta)
    normalise = Normalize(mean, std)
    palette = palette_of(model.meta, model.num_classes)
    net, views = prepare(model, precision), views or Views()
    os.makedirs(out_dir, exist_ok=True)
    written: list[str] = []
    for stem, raw in tqdm(list(zip(stems, images, strict=True)), desc="predict", disable=not progress, unit="img"):
        logits = infer_views(net, normalise(raw, None)[0][None], views)
        if crf is not None:
            logits = crf(logits, raw[None].to(logits.device).float())
        labels = logits.argmax(dim=1)[0].cpu().numpy()
        index_path = os.path.join(out_dir, f"{stem}.png")
        overlay_path = os.path.join(out_dir, f"{stem}_overlay.png")
        _save_png(index_png(labels, palette), index_path)
        _save_png(Image.fromarray(overlay(raw.permute(1, 2, 0).numpy(), labels, palette)), overlay_path)
        written += [index_path, overlay_path]
    return written
