"""Scenes larger than memory: a TIFF/GeoTIFF predicted window by window (rasterio, the `geo` extra).

`predict_scene` slides `atrous.infer`'s windows (`tile_starts`, flush with the right and
bottom borders; a scene smaller than a window padded with zeros after normalisation) over the
scene one row of windows at a time. Each batch of `batch_size` windows is one read of the
file, normalised with the checkpoint's per-band mean and std (uint8 values / 255 first, other
types in their own units), run through the model, and its probabilities (`tile_probabilities`:
softmax; sigmoid for binary and multilabel models) are added into the open rows, the rows a
window still reaches. Rows that no later window reaches are divided by their window count
(`tile_coverage`) and written in whole 256-row blocks: the result equals
`infer(model, scene, window=..., stride=...)` on the scene read whole (the same tiles, summed
in the same order, over the same divisor).

Outputs, tiled (256 x 256) and DEFLATE-compressed GeoTIFFs with the input's CRS and
geotransform (BigTIFF where needed):
- `<stem>.tif`: the mask, uint8: class indices with the palette as colour map (multiclass),
  0/1 at `threshold` (binary: one band; multilabel: one band per label);
- `<stem>_probs.tif` (`save="probs"`): float32 probabilities, one band per class or label
  (the band descriptions are the class names). float32 rather than scaled uint8: the values
  are `infer`'s exactly, at 4 bytes per class and pixel before compression.

Memory is bounded by the window, the batch and the scene's width, not its height: the
batch's windows, the open rows ((window height + 256) x width x classes float32, e.g. 20000
pixels wide, 2 classes, 512-pixel windows: 125 MB) and GDAL's block cache (`CACHE_MB`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F

from atrous.checkpoints.meta import normalisation, palette_of
from atrous.data.tasks import DEFAULT_THRESHOLD, is_sigmoid, task_of
from atrous.data.transforms import Normalize
from atrous.errors import UserError
from atrous.inference.infer import (
    InferenceModel,
    Views,
    make_views,
    prepare,
    tile_coverage,
    tile_probabilities,
    tile_starts,
)
from atrous.models import SegmentationModel
from atrous.outputs import atomic_path
from atrous.runtime.progress import progress_bar

SCENE_SUFFIXES = (".tif", ".tiff")
SCENE_PIXELS = 4096 * 4096  # a plain (not georeferenced) TIFF larger than this is a scene too
SCENE_WINDOW = 512  # the window when none is given (the stride: two thirds of it)
BLOCK = 256  # the output's tile side; rows are written in blocks of this many
CACHE_MB = 256  # GDAL's block cache while a scene runs (its default is 5% of the machine's memory)
INSTALL = "pip install 'atrous[geo]'"


def require_rasterio(path: str) -> ModuleType:
    """rasterio, or a one-line error naming the scene that needs it."""
    try:
        import rasterio
    except ImportError as err:
        raise UserError(f"reading the scene {path} window by window needs rasterio: {INSTALL}") from err
    return rasterio


def is_scene(path: str) -> bool:
    """Whether `predict` reads `path` window by window: a TIFF that is georeferenced (a CRS,
    a geotransform or GCPs) or larger than SCENE_PIXELS. The header alone is read (rasterio;
    without it tifffile's tags), never the pixels."""
    if not path.lower().endswith(SCENE_SUFFIXES) or not os.path.isfile(path):
        return False
    header = _header(path)
    if header is None:  # unreadable: a scene (rasterio says why) where rasterio is there
        return _has_rasterio()
    height, width, georeferenced = header
    return georeferenced or height * width > SCENE_PIXELS


def _has_rasterio() -> bool:
    with contextlib.suppress(ImportError):
        import rasterio  # noqa: F401

        return True
    return False


def _header(path: str) -> tuple[int, int, bool] | None:
    """(height, width, georeferenced) of a TIFF, or None when it cannot be read."""
    if _has_rasterio():
        import rasterio

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                with rasterio.open(path) as src:
                    return src.height, src.width, _georeferenced(src)
        except rasterio.errors.RasterioError:
            return None
    try:
        import tifffile

        with tifffile.TiffFile(path) as tiff:
            page = tiff.pages[0]
            geo_tags = (33550, 33922, 34264, 34735)  # pixel scale, tie points, transformation, geo keys
            return page.imagelength, page.imagewidth, any(code in page.tags for code in geo_tags)
    except Exception:  # noqa: BLE001 - no tifffile, or a file it cannot parse: the image path reports it
        return None


def _georeferenced(src) -> bool:  # noqa: ANN001 - a rasterio dataset
    return src.crs is not None or not src.transform.is_identity or bool(src.gcps[0])


def scene_outputs(path: str, save: str | None) -> list[str]:
    """The files written for scene `path` (names within the output folder)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return [f"{stem}.tif"] + ([f"{stem}_{save}.tif"] if save else [])


def scene_views(views: Views | None) -> Views:
    """The sliding windows a scene runs with: `views`' window and stride (default SCENE_WINDOW,
    stride two thirds of it); scales and flips, which need the whole image, refused."""
    if views is not None and (views.scales != (1.0,) or views.flip):
        raise UserError("scales and flip need the whole image; a scene is read window by window "
                        "(predict it with one scale, no flip)")
    if views is None or views.window is None:
        return make_views(window=SCENE_WINDOW)
    return views


@dataclass(frozen=True)
class SceneGrid:
    """The windows over a height x width scene: `infer`'s tiles of the scene padded (bottom,
    right) to at least one window."""

    height: int
    width: int
    window: tuple[int, int]  # (height, width)
    stride: tuple[int, int]

    @property
    def padded(self) -> tuple[int, int]:
        return max(self.height, self.window[0]), max(self.width, self.window[1])

    @property
    def tops(self) -> list[int]:
        return tile_starts(self.padded[0], self.window[0], self.stride[0])

    @property
    def lefts(self) -> list[int]:
        return tile_starts(self.padded[1], self.window[1], self.stride[1])


class OpenRows:
    """Probability sums (K, rows, padded width) of the rows from `first` that a window still
    reaches; finished rows leave as means, in blocks."""

    def __init__(self, grid: SceneGrid, classes: int) -> None:
        self.grid, self.first = grid, 0
        self.total = torch.zeros(classes, 0, grid.padded[1])
        self.row_count = tile_coverage(grid.padded[0], grid.window[0], grid.stride[0])  # (padded height,)
        self.col_count = tile_coverage(grid.padded[1], grid.window[1], grid.stride[1])  # (padded width,)

    def add(self, top: int, left: int, probs: torch.Tensor) -> None:
        """Adds one window's (K, h, w) probabilities at (top, left)."""
        height, width = probs.shape[-2:]
        missing = top + height - self.first - self.total.shape[1]
        if missing > 0:
            self.total = torch.cat([self.total, self.total.new_zeros(len(self.total), missing, self.total.shape[2])], 1)
        self.total[:, top - self.first : top - self.first + height, left : left + width] += probs

    def finished(self, upto: int, block: int = BLOCK) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, (K, n, width) mean probabilities) of the rows before `upto`, which no
        later window reaches, in blocks of `block` rows; a shorter one only at the scene's end."""
        height = self.grid.height
        while self.first < height and (upto - self.first >= block or upto >= height):
            rows = min(block, height - self.first)
            count = self.row_count[self.first : self.first + rows, None] * self.col_count  # (rows, padded width)
            yield self.first, (self.total[:, :rows] / count)[..., : self.grid.width]
            self.total = self.total[:, rows:]
            self.first += rows


def _read_windows(src, top: int, lefts: Sequence[int], window: tuple[int, int],  # noqa: ANN001 - rasterio dataset
                  normalise: Normalize) -> torch.Tensor:
    """The windows at (top, left) for each of `lefts` (consecutive, one row), read at once,
    normalised -> (T, C, window height, window width); zeros beyond a scene smaller than a window."""
    from rasterio.windows import Window

    win_h, win_w = window
    span = lefts[-1] + win_w - lefts[0]
    height, width = min(win_h, src.height - top), min(span, src.width - lefts[0])
    array = src.read(window=Window(lefts[0], top, width, height))  # (C, height, width), the file's type
    values = torch.from_numpy(array if array.dtype == np.uint8 else array.astype(np.float32, copy=False))
    if values.is_floating_point() and not bool(torch.isfinite(values).all()):
        raise UserError(f"{src.name} holds NaN or infinite values in rows {top}-{top + height}, columns "
                        f"{lefts[0]}-{lefts[0] + width}; fill them (e.g. with the band's mean) first")
    strip = F.pad(normalise(values, None)[0], (0, span - width, 0, win_h - height))  # zeros: the mean
    return torch.stack([strip[:, :, left - lefts[0] : left - lefts[0] + win_w] for left in lefts])


def scene_rows(src, grid: SceneGrid, net: InferenceModel, normalise: Normalize, *,  # noqa: ANN001
               batch_size: int = 4,
               advance: Callable[[int], None] = lambda n: None) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, (K, n, width) mean probabilities) blocks of the scene `src`, top to
    bottom: each row of windows run `batch_size` windows at a time."""
    rows: OpenRows | None = None
    tops, lefts = grid.tops, grid.lefts
    for index, top in enumerate(tops):
        for first in range(0, len(lefts), batch_size):
            chunk = lefts[first : first + batch_size]
            probs = tile_probabilities(net, _read_windows(src, top, chunk, grid.window, normalise)).cpu()
            rows = rows if rows is not None else OpenRows(grid, probs.shape[1])
            for left, tile in zip(chunk, probs, strict=True):
                rows.add(top, left, tile)
            advance(len(chunk))
        yield from rows.finished(tops[index + 1] if index + 1 < len(tops) else grid.padded[0])


def _open_scene(rasterio: ModuleType, path: str):  # noqa: ANN202 - a rasterio dataset
    if not os.path.isfile(path):
        raise UserError(f"scene not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(path)
    except rasterio.errors.RasterioError as err:
        raise UserError(f"cannot open the scene {path} (rasterio/GDAL): {str(err).strip()}") from err


def check_scene(model: SegmentationModel, path: str) -> None:
    """The scene opens and its bands fit the model (one-line UserError otherwise): what
    `predict` checks of every scene before it writes anything."""
    rasterio = require_rasterio(path)
    with _open_scene(rasterio, path) as src:
        _check_bands(src, path, model, normalisation(model.meta)[0])


def _check_bands(src, path: str, model: SegmentationModel, mean: Sequence[float]) -> None:  # noqa: ANN001
    if src.count != model.in_channels:
        raise UserError(f"{path} has {src.count} bands but the model takes {model.in_channels} (in_channels); "
                        "predict it with a model trained on these bands")
    if len(mean) != src.count:
        raise UserError(f"{path} has {src.count} bands but the checkpoint's normalisation (mean, std) has "
                        f"{len(mean)} values; give the model per-band statistics (atrous data stats)")


def _profile(src, bands: int, dtype: str) -> dict:  # noqa: ANN001
    return dict(driver="GTiff", height=src.height, width=src.width, count=bands, dtype=dtype, crs=src.crs,
                transform=src.transform, tiled=True, blockxsize=BLOCK, blockysize=BLOCK, compress="deflate",
                predictor=3 if dtype == "float32" else 2, BIGTIFF="IF_SAFER")


def _mask(probs: torch.Tensor, task: str, threshold: float) -> np.ndarray:
    """(K, n, width) mean probabilities -> the mask's bands: (1, n, width) class indices
    (multiclass) or (K, n, width) 0/1 (binary, multilabel)."""
    if not is_sigmoid(task):
        return probs.argmax(0, keepdim=True).numpy().astype(np.uint8 if len(probs) <= 256 else np.uint16)
    return (probs > threshold).numpy().astype(np.uint8)


@contextlib.contextmanager
def _scene_writers(rasterio: ModuleType, src, paths: Sequence[str], model: SegmentationModel,  # noqa: ANN001
                   task: str, threshold: float) -> Iterator[Callable[[int, torch.Tensor], None]]:
    """`write(first row, (K, n, width) probabilities)` into the mask (paths[0]) and the
    probabilities (paths[1], where given); each file appears whole, when all is written."""
    from rasterio.windows import Window

    classes, sigmoid = model.num_classes, is_sigmoid(task)
    names = list(model.meta.get("class_names") or [])
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(atomic_path(path)) for path in paths]
        mask_dtype = "uint8" if sigmoid or classes <= 256 else "uint16"
        mask = stack.enter_context(rasterio.open(tmps[0], "w", **_profile(src, classes if sigmoid else 1, mask_dtype)))
        if not sigmoid:
            palette = palette_of(model.meta, classes)
            mask.write_colormap(1, {index: (*map(int, palette[index]), 255) for index in range(min(classes, 256))})
        probs = stack.enter_context(rasterio.open(tmps[1], "w", **_profile(src, classes, "float32"))) \
            if len(tmps) > 1 else None
        for band, name in enumerate(names[:classes], start=1):  # a band per class or label: its name
            for dataset in (d for d in (probs, mask if sigmoid else None) if d is not None):
                dataset.set_band_description(band, str(name))

        def write(first: int, values: torch.Tensor) -> None:
            window = Window(0, first, src.width, values.shape[1])
            mask.write(_mask(values, task, threshold), window=window)
            if probs is not None:
                probs.write(values.numpy().astype(np.float32, copy=False), window=window)

        yield write


def predict_scene(
    model: SegmentationModel,
    path: str,
    out_dir: str,
    *,
    views: Views | None = None,
    batch_size: int = 4,
    save: str | None = None,
    precision: str = "auto",
    threshold: float = DEFAULT_THRESHOLD,
    progress: bool = True,
    net: InferenceModel | None = None,
) -> list[str]:
    """Segments the TIFF/GeoTIFF `path` window by window (see the module's docstring) into
    `out_dir`; returns the paths written. `views` gives the window and stride (default
    SCENE_WINDOW); `net`, a model already prepared at `precision`."""
    if save not in (None, "probs"):
        raise UserError(f"the scene {path} is read window by window: its scores are saved as probabilities "
                        f"(save='probs'), not '{save}'")
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    views = scene_views(views)
    rasterio = require_rasterio(path)
    task = task_of(model.meta)
    mean, std = normalisation(model.meta)
    paths = [os.path.join(out_dir, name) for name in scene_outputs(path, save)]
    with rasterio.Env(GDAL_CACHEMAX=CACHE_MB), _open_scene(rasterio, path) as src:
        _check_bands(src, path, model, mean)
        grid = SceneGrid(src.height, src.width, views.window, views.stride)
        net = net if net is not None else prepare(model, precision)
        bar = progress_bar(len(grid.tops) * len(grid.lefts), desc=f"predict {os.path.basename(path)}", unit="win",
                           disable=not progress)
        with bar, _scene_writers(rasterio, src, paths, model, task, threshold) as write:
            for first, probs in scene_rows(src, grid, net, Normalize(mean, std), batch_size=batch_size,
                                           advance=bar.update):
                write(first, probs)
    return paths
