"""Prediction over files, folders, glob patterns and videos, in batches, through atrous.infer.

For each image: `<stem>.png` (class indices, palette PNG) and `<stem>_overlay.png` (the colour
map blended over the image). For each video: `<stem>_overlay.mp4`, the overlays at the
video's frame rate. `save="logits"` or `"probs"` adds `<stem>_logits.npy` / `<stem>_probs.npy`,
float32 (K, H, W) for an image and (T, K, H, W) for a video of T frames: the scores of
atrous.infer (log of the view-averaged probabilities; the model's logits with one view), or
their softmax.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from atrous.checkpoints.meta import normalisation, palette_of
from atrous.data import read_image
from atrous.data.transforms import Normalize
from atrous.errors import UserError
from atrous.inference.infer import InferenceModel, Views, infer_views, prepare
from atrous.inference.sources import Source, check_sources, expand_inputs, is_video
from atrous.inference.video import read_frames, video_writer
from atrous.models import SegmentationModel
from atrous.outputs import npy_stream, write_atomic
from atrous.runtime.progress import progress_bar

SAVE_CHOICES = ("logits", "probs")


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


def output_names(path: str, save: str | None) -> list[str]:
    """The files written for input `path` (names within the output folder)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    names = [f"{stem}_overlay.mp4"] if is_video(path) else [f"{stem}.png", f"{stem}_overlay.png"]
    return names + ([f"{stem}_{save}.npy"] if save else [])


def _check_outputs(paths: Sequence[str], out_dir: str, save: str | None) -> None:
    """No two inputs may share a name; no output may replace an input or another output
    (`a_overlay.png` vs `a`'s overlay)."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise UserError(f"two inputs share the name '{duplicates[0]}'; their outputs would overwrite each other")
    resolved = [os.path.abspath(os.path.join(out_dir, name)) for p in paths for name in output_names(p, save)]
    if len(set(resolved)) != len(resolved):
        clash = next(p for p in resolved if resolved.count(p) > 1)
        raise UserError(f"two outputs would be written to {clash}; rename an input or use another --out")
    sources = {os.path.abspath(p) for p in paths}
    for path in resolved:
        if path in sources:
            raise UserError(f"writing {path} would replace an input image; choose another --out")


class _Segmenter:
    """Raw uint8 batches (B, 3, H, W) -> (scores (B, K, H, W) float32, labels (B, H, W))."""

    def __init__(self, model: SegmentationModel, net: InferenceModel, views: Views, crf: torch.nn.Module | None):
        self.net, self.views, self.crf = net, views, crf
        self.normalise = Normalize(*normalisation(model.meta))

    def __call__(self, raws: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        scores = infer_views(self.net, self.normalise(raws, None)[0], self.views)
        if self.crf is not None:
            scores = self.crf(scores, raws.to(scores.device).float())
        return scores, scores.argmax(dim=1).cpu().numpy()


def _saved(scores: torch.Tensor, save: str) -> np.ndarray:
    """(K, H, W) or (B, K, H, W) scores as stored: themselves, or their softmax."""
    values = torch.softmax(scores, dim=-3) if save == "probs" else scores
    return values.float().cpu().numpy()


def _image_batches(sources: Sequence[Source], batch_size: int) -> Iterator[tuple[list[Source], torch.Tensor]]:
    """Consecutive images of one size, at most `batch_size` at a time, read as they are needed."""
    pending: list[tuple[Source, torch.Tensor]] = []
    for source in sources:
        raw = read_image(source.path)
        if pending and (raw.shape != pending[0][1].shape or len(pending) == batch_size):
            yield [s for s, _ in pending], torch.stack([r for _, r in pending])
            pending = []
        pending.append((source, raw))
    if pending:
        yield [s for s, _ in pending], torch.stack([r for _, r in pending])


def _chunks(frames: Iterable[np.ndarray], size: int) -> Iterator[torch.Tensor]:
    """(H, W, 3) frames -> (B, 3, H, W) uint8 batches of at most `size`."""
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
            batch = []
    if batch:
        yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)


def _predict_images(sources: Sequence[Source], segment: _Segmenter, out_dir: str, palette: np.ndarray,
                    save: str | None, batch_size: int, advance: Callable[[int], None]) -> list[str]:
    written: list[str] = []
    for batch, raws in _image_batches(sources, batch_size):
        scores, labels = segment(raws)
        for index, source in enumerate(batch):
            names = output_names(source.path, save)
            paths = [os.path.join(out_dir, name) for name in names]
            _save_png(index_png(labels[index], palette), paths[0])
            _save_png(Image.fromarray(overlay(raws[index].permute(1, 2, 0).numpy(), labels[index], palette)), paths[1])
            if save:
                array = _saved(scores[index], save)
                write_atomic(paths[2], lambda tmp, array=array: np.save(tmp, array))
            written += paths
        advance(len(batch))
    return written


def _predict_video(source: Source, segment: _Segmenter, out_dir: str, palette: np.ndarray, save: str | None,
                   batch_size: int, advance: Callable[[int], None]) -> list[str]:
    paths = [os.path.join(out_dir, name) for name in output_names(source.path, save)]
    info = source.video
    with video_writer(paths[0], info.rate, info.width, info.height) as write_frame:
        with npy_stream(paths[1]) if save else contextlib.nullcontext(lambda array: None) as append:
            for raws in _chunks(read_frames(source.path), batch_size):
                scores, labels = segment(raws)
                for index in range(len(raws)):
                    write_frame(overlay(raws[index].permute(1, 2, 0).numpy(), labels[index], palette))
                    if save:
                        append(_saved(scores[index], save))
                advance(len(raws))
    return paths


def predict(
    model: SegmentationModel,
    inputs: Sequence[str],
    out_dir: str,
    *,
    crf: torch.nn.Module | None = None,
    precision: str = "auto",
    views: Views | None = None,
    batch_size: int = 4,
    save: str | None = None,
    progress: bool = True,
) -> list[str]:
    """Segments every image and video of `inputs` (files, folders, glob patterns) through
    `atrous.infer` (with `views`, at `precision`), `batch_size` images or frames at a time;
    returns the paths written. Every input is checked (decoded once; a video opened and its
    first frame decoded) before anything is written, and no output may replace an input."""
    if save not in (None, *SAVE_CHOICES):
        raise UserError(f"--save must be one of {', '.join(SAVE_CHOICES)}, got '{save}'")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    paths = expand_inputs(inputs)
    _check_outputs(paths, out_dir, save)
    sources = check_sources(paths)
    segment = _Segmenter(model, prepare(model, precision), views or Views(), crf)
    palette = palette_of(model.meta, model.num_classes)
    counts = [source.count for source in sources]
    bar = progress_bar(None if None in counts else sum(counts), desc="predict", unit="img", disable=not progress)
    os.makedirs(out_dir, exist_ok=True)
    written: list[str] = []
    images: list[Source] = []
    try:
        for source in [*sources, None]:  # images are gathered into batches until a video or the end
            if source is not None and source.video is None:
                images.append(source)
                continue
            written += _predict_images(images, segment, out_dir, palette, save, batch_size, bar.update)
            images = []
            if source is not None:
                written += _predict_video(source, segment, out_dir, palette, save, batch_size, bar.update)
    finally:
        bar.close()
    return written
