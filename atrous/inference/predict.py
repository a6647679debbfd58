"""Prediction over files, folders, glob patterns and videos, in batches, through atrous.infer.

For each image: `<stem>.png` (class indices, palette PNG) and `<stem>_overlay.png` (the colour
map blended over the image). For each video: `<stem>_overlay.mp4`, the overlays at the
video's frame rate. `save="logits"` or `"probs"` adds `<stem>_logits.npy` / `<stem>_probs.npy`,
float32 (K, H, W) for an image and (T, K, H, W) for a video of T frames: the scores of
atrous.infer (log of the view-averaged probabilities; the model's logits with one view), or
their softmax.

Binary and multilabel models (atrous.data.tasks): `<stem>.png` is the binary mask, 0 or 255
(sigmoid > threshold); a multilabel model writes `<stem>_<label>.png`, one such mask per label,
in its place; the overlay blends each label's colour where it is on; `probs` are the sigmoid
probabilities, float32 (K, H, W) .npy (binary: K = 1), the view-averaged ones of atrous.infer.
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
from atrous.data.display import crf_images, display_rgb
from atrous.data.tasks import predicted, probabilities, task_of, threshold_of
from atrous.data.transforms import Normalize
from atrous.errors import UserError
from atrous.inference.infer import InferenceModel, Views, infer_views, prepare
from atrous.inference.scene import check_scene, is_scene, predict_scene, scene_outputs, scene_views
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


def output_names(path: str, save: str | None, scene: bool = False, *, labels: Sequence[str] | None = None) -> list[str]:
    """The files written for input `path` (names within the output folder); a scene's:
    atrous.inference.scene.scene_outputs. `labels`: a multilabel model's, one mask per label
    (`<stem>_<label>.png`) in place of `<stem>.png`."""
    if scene:
        return scene_outputs(path, save)
    stem = os.path.splitext(os.path.basename(path))[0]
    masks = [f"{stem}_{label}.png" for label in labels] if labels else [f"{stem}.png"]
    names = [f"{stem}_overlay.mp4"] if is_video(path) else [*masks, f"{stem}_overlay.png"]
    return names + ([f"{stem}_{save}.npy"] if save else [])


def _check_outputs(paths: Sequence[str], out_dir: str, save: str | None, scenes: Sequence[str] = (),
                   labels: Sequence[str] | None = None) -> None:
    """No two inputs may share a name; no output may replace an input or another output
    (`a_overlay.png` vs `a`'s overlay)."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise UserError(f"two inputs share the name '{duplicates[0]}'; their outputs would overwrite each other")
    resolved = [os.path.abspath(os.path.join(out_dir, name)) for p in paths
                for name in output_names(p, save, p in scenes, labels=labels)]
    if len(set(resolved)) != len(resolved):
        clash = next(p for p in resolved if resolved.count(p) > 1)
        raise UserError(f"two outputs would be written to {clash}; rename an input or use another out", argument="out")
    sources = {os.path.abspath(p) for p in paths}
    for path in resolved:
        if path in sources:
            raise UserError(f"writing {path} would replace an input image; choose another out", argument="out")


class _Segmenter:
    """Raw batches (B, C, H, W) -> (scores (B, K, H, W) float32, labels (B, H, W)); binary
    and multilabel models: labels (B, K, H, W) of 0/1, sigmoid(scores) > threshold."""

    def __init__(self, model: SegmentationModel, net: InferenceModel, views: Views, crf: torch.nn.Module | None,
                 display_bands: Sequence[int] | None = None, threshold: float | None = None):
        self.net, self.views, self.crf = net, views, crf
        self.normalise = Normalize(*normalisation(model.meta))
        self.display_bands = display_bands
        self.task, self.threshold = task_of(model.meta), threshold_of(model.meta, threshold)
        self.labels = _label_names(model)

    def shown(self, raw: torch.Tensor) -> np.ndarray:
        """(C, H, W) raw image -> (H, W, 3) uint8: what overlays are drawn on (and what the CRF sees)."""
        return display_rgb(raw, self.display_bands)

    def __call__(self, raws: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        scores = infer_views(self.net, self.normalise(raws, None)[0], self.views)
        if self.crf is not None:
            with torch.no_grad():  # the CRF's parameters are learnable (fit-crf); nothing is trained here
                scores = self.crf(scores, crf_images(raws, self.display_bands).to(scores.device))
        return scores, predicted(scores, self.task, self.threshold).cpu().numpy()

    def masks(self, labels: np.ndarray, palette: np.ndarray) -> list[Image.Image]:
        """One image's mask files: the class-index PNG; binary: a 0/255 PNG; multilabel: one per label."""
        if self.task == "multiclass":
            return [index_png(labels, palette)]
        return [Image.fromarray((plane * 255).astype(np.uint8), mode="L") for plane in labels]

    def overlay(self, raw: torch.Tensor, labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
        if self.task == "multiclass":
            return overlay(self.shown(raw), labels, palette)
        return label_overlay(self.shown(raw), labels, palette[: len(labels)])

    def saved(self, scores: torch.Tensor, save: str) -> np.ndarray:
        """(K, H, W) or (B, K, H, W) scores as stored: themselves, or their probabilities
        (softmax; binary and multilabel: each sigmoid)."""
        values = probabilities(scores, self.task) if save == "probs" else scores
        return values.float().cpu().numpy()


def label_overlay(image: np.ndarray, on: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 image with each label's colour blended where the label is on ((K, H, W)
    0/1; where several are, their mean colour); pixels without a label as they are."""
    hits = on.sum(axis=0)[..., None]  # (H, W, 1)
    colour = np.tensordot(np.moveaxis(on, 0, -1).astype(np.float32), colours.astype(np.float32), axes=1)
    blended = image.astype(np.float32) * (1 - alpha) + colour / np.maximum(hits, 1) * alpha
    return np.where(hits > 0, blended, image).round().astype(np.uint8)


def _label_names(model: SegmentationModel) -> list[str] | None:
    """A multilabel model's label names as they go into file names; None for the other tasks."""
    if task_of(model.meta) != "multilabel":
        return None
    names = list(model.meta.get("class_names") or [])
    names += [f"label_{i}" for i in range(len(names), model.num_classes)]
    return ["".join(c if c.isalnum() or c in "-_." else "_" for c in name) for name in names[: model.num_classes]]


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
            names = output_names(source.path, save, labels=segment.labels)
            paths = [os.path.join(out_dir, name) for name in names]
            masks = segment.masks(labels[index], palette)
            for mask, path in zip(masks, paths, strict=False):
                _save_png(mask, path)
            _save_png(Image.fromarray(segment.overlay(raws[index], labels[index], palette)), paths[len(masks)])
            if save:
                array = segment.saved(scores[index], save)
                write_atomic(paths[-1], lambda tmp, array=array: np.save(tmp, array))
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
                    write_frame(segment.overlay(raws[index], labels[index], palette))
                    if save:
                        append(segment.saved(scores[index], save))
                advance(len(raws))
    return paths


def _check_scenes(model: SegmentationModel, scenes: Sequence[str], views: Views | None,
                  crf: torch.nn.Module | None, save: str | None) -> None:
    """What a scene cannot take (a CRF, logits, scales, flips) refused, and every scene
    opened with its bands checked, before anything is written."""
    if not scenes:
        return
    if crf is not None:
        raise UserError(f"crf needs the whole image; {scenes[0]} is a scene, read window by window", argument="crf")
    if save == "logits":
        raise UserError(f"{scenes[0]} is a scene, read window by window: save probs, not logits", argument="save")
    scene_views(views)
    for scene in scenes:
        check_scene(model, scene)


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
    display_bands: Sequence[int] | None = None,
    threshold: float | None = None,
) -> list[str]:
    """Segments every image and video of `inputs` (files, folders, glob patterns) through
    `atrous.infer` (with `views`, at `precision`), `batch_size` images or frames at a time;
    returns the paths written. Every input is checked (decoded once; a video opened and its
    first frame decoded; a scene opened) before anything is written, and no output may
    replace an input. Scenes (atrous.inference.scene.is_scene: GeoTIFFs, and TIFFs larger
    than SCENE_PIXELS) are read and written window by window (`batch_size` windows at a
    time), before the other inputs. Overlays show images that are not 8-bit RGB through
    `display_bands` (atrous.data.display). Binary and multilabel models (atrous.data.tasks)
    write masks of sigmoid > `threshold` (default the model's, else 0.5), 0/255 greyscale PNGs:
    `<stem>.png` (binary), `<stem>_<label>.png` per label (multilabel); `save="probs"` their
    sigmoid probabilities."""
    if save not in (None, *SAVE_CHOICES):
        raise UserError(f"save must be one of {', '.join(SAVE_CHOICES)}, got '{save}'", argument="save")
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}", argument="batch_size")
    paths = expand_inputs(inputs)
    scenes = [path for path in paths if is_scene(path)]
    _check_outputs(paths, out_dir, save, scenes, labels=_label_names(model))
    _check_scenes(model, scenes, views, crf, save)
    sources = check_sources([path for path in paths if path not in scenes], getattr(model, "in_channels", None))
    net = prepare(model, precision)
    os.makedirs(out_dir, exist_ok=True)
    written = [path for scene in scenes for path in predict_scene(
        model, scene, out_dir, views=views, batch_size=batch_size, save=save, progress=progress, net=net,
        threshold=threshold_of(model.meta, threshold))]
    if not sources:
        return written
    segment = _Segmenter(model, net, views or Views(), crf, display_bands, threshold)
    palette = palette_of(model.meta, model.num_classes)
    counts = [source.count for source in sources]
    bar = progress_bar(None if None in counts else sum(counts), desc="predict", unit="img", disable=not progress)
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
