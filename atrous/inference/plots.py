"""Pictures of an evaluation (`atrous eval --plots DIR`): the row-normalised confusion matrix
with class names (confusion.png), per-class IoU bars (iou.png) and the worst images as rows
of input | ground truth | prediction | error map (errors.png); and the figure helpers that
atrous.inference.curves shares (matplotlib, an optional extra, imported only when drawing).

The worst images are found while evaluating, by `WorstImages`, which `evaluate(...,
on_batch=...)` calls on each batch: per-image scores from one bincount per batch, and only
the N worst images kept in memory. Nothing here runs when no pictures are asked for."""

from __future__ import annotations

import heapq
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from atrous.errors import UserError
from atrous.outputs import write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMATS = (".png", ".svg")
RANK_BY = ("mIoU", "pixel_accuracy")
INSTALL = "pip install 'atrous[plots]'"


# --- figures -------------------------------------------------------------------------------

def require_matplotlib(purpose: str) -> None:
    """Refuses in one line when matplotlib is missing (`purpose` says what needs it)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise UserError(f"{purpose} needs matplotlib: {INSTALL}") from err


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib Figure drawn by Agg, outside pyplot (no global state, no display)."""
    require_matplotlib("drawing")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: str, dpi: int = 110) -> None:
    """Written atomically, in the format of the suffix (.png or .svg; SVG text stays text)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FORMATS:
        raise UserError(f"{path}: the format comes from the suffix, one of {', '.join(FORMATS)}; got "
                        f"'{suffix or 'none'}'")
    import matplotlib

    def write(tmp: str) -> None:
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "atrous"}):
            figure.savefig(tmp, format=suffix[1:], dpi=dpi)

    write_atomic(path, write)


# --- per-image scores and the worst images -------------------------------------------------

def per_image_scores(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) predictions and labels -> each image's (mIoU, pixel accuracy), float64 (N,):
    mIoU over the classes present in the image's truth or prediction, as ConfusionMatrix does
    for a whole dataset; NaN for an image without labelled pixels."""
    n, k = pred.shape[0], num_classes
    target = target.reshape(n, -1).long().to(pred.device)
    pred = pred.reshape(n, -1).long()
    keep = target != ignore_index
    image = torch.arange(n, device=pred.device)[:, None].expand_as(target)
    codes = (image * k + target.clamp(0, k - 1)) * k + pred.clamp(0, k - 1)
    counts = torch.bincount(codes[keep], minlength=n * k * k).reshape(n, k, k).double()  # (N, truth, pred)
    hits = counts.diagonal(dim1=1, dim2=2)  # (N, K)
    union = counts.sum(2) + counts.sum(1) - hits
    iou = hits / union  # NaN where a class is in neither
    present = union > 0
    miou = torch.where(present, iou, torch.zeros_like(iou)).sum(1) / present.sum(1)
    total = counts.sum((1, 2))
    accuracy = hits.sum(1) / total
    return miou.cpu(), accuracy.cpu()


@dataclass(order=True)
class _Ranked:
    badness: float  # the heap keeps the largest badness = the worst scores
    index: int
    row: Any = field(compare=False)


@dataclass
class WorstRow:
    """One of the worst images: its dataset index, scores and (H, W, 3) / (H, W) arrays."""

    index: int
    miou: float
    pixel_accuracy: float
    image: np.ndarray  # (H, W, 3) uint8, for display
    truth: np.ndarray  # (H, W) int64, void as ignore_index
    pred: np.ndarray  # (H, W) int64


class WorstImages:
    """Keeps the `count` images with the lowest per-image `by` score ("mIoU" or
    "pixel_accuracy") seen by `update`; call it as evaluate's `on_batch`."""

    def __init__(self, count: int, num_classes: int, ignore_index: int = 255, by: str = "mIoU") -> None:
        if by not in RANK_BY:
            raise ValueError(f"by must be one of {RANK_BY}, got {by!r}")
        self.count, self.num_classes, self.ignore_index, self.by = count, num_classes, ignore_index, by
        self._heap: list[_Ranked] = []  # min-heap on -score: its top is the best kept image

    def __call__(self, indices: Sequence[int], raws: torch.Tensor, masks: torch.Tensor, pred: torch.Tensor) -> None:
        self.update(indices, raws, masks, pred)

    def update(self, indices: Sequence[int], raws: torch.Tensor, masks: torch.Tensor, pred: torch.Tensor) -> None:
        """raws (N, C, H, W) as the dataset gives them, masks and pred (N, H, W)."""
        if self.count <= 0 or masks.ndim != 3:
            return
        miou, accuracy = per_image_scores(pred, masks, self.num_classes, self.ignore_index)
        scores = miou if self.by == "mIoU" else accuracy
        for row, index in enumerate(indices):
            score = float(scores[row])
            if math.isnan(score):
                continue
            ranked = _Ranked(-score, -index, None)  # ties: the earlier image counts as worse
            if len(self._heap) == self.count and ranked <= self._heap[0]:
                continue
            ranked.row = WorstRow(index, float(miou[row]), float(accuracy[row]), display_rgb(raws[row]),
                                  masks[row].cpu().numpy().astype(np.int64), pred[row].cpu().numpy().astype(np.int64))
            if len(self._heap) < self.count:
                heapq.heappush(self._heap, ranked)
            else:
                heapq.heapreplace(self._heap, ranked)

    def rows(self) -> list[WorstRow]:
        """The kept images, worst first."""
        return [r.row for r in sorted(self._heap, reverse=True)]


def display_rgb(raw: torch.Tensor) -> np.ndarray:
    """A dataset image (C, H, W), any bands and depth -> (H, W, 3) uint8: its first three
    bands (one band as grey), 8-bit as is, deeper data stretched between its 1st and 99th
    percentiles."""
    bands = raw[:3] if raw.shape[0] >= 3 else raw[:1].expand(3, *raw.shape[1:])
    if bands.dtype == torch.uint8:
        return bands.permute(1, 2, 0).cpu().numpy().copy()
    values = bands.double().cpu()
    sample = values.flatten()[:: max(1, values.numel() // 100_000)]  # torch.quantile takes at most 16M values
    low, high = torch.quantile(sample, torch.tensor([0.01, 0.99], dtype=values.dtype))
    scaled = ((values - low) / max(float(high - low), 1e-12)).clamp(0, 1) * 255
    return scaled.round().byte().permute(1, 2, 0).numpy()


# --- the pictures --------------------------------------------------------------------------

def normalised_confusion(matrix: np.ndarray | torch.Tensor | Sequence[Sequence[int]]) -> np.ndarray:
    """Rows (ground truth) divided by their sums: row i is where the pixels of class i went,
    summing to 1; NaN rows for classes absent from the ground truth."""
    counts = np.asarray(matrix, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / np.where(totals > 0, totals, 1), np.nan)


def _label_size(slot: float) -> float:
    """A font size (points) for labels `slot` inches apart: at most 9, at least 4."""
    return min(9.0, max(4.0, 0.6 * 72 * slot))


def confusion_figure(matrix: np.ndarray | torch.Tensor | Sequence[Sequence[int]],
                     class_names: Sequence[str]) -> Figure:
    """The row-normalised confusion matrix (rows truth, columns prediction), as percentages
    in the cells while they fit; classes absent from the truth greyed out."""
    normalised = normalised_confusion(matrix)
    k = normalised.shape[0]
    names = _names(class_names, k)
    side = min(max(4.5, 0.42 * k + 2.5), 26.0)
    figure = new_figure(side + 1.2, side)
    size = _label_size((side - 2.5) / k)
    axes = figure.add_subplot()
    import matplotlib

    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="0.85")
    image = axes.imshow(np.ma.masked_invalid(normalised), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    axes.set_xticks(range(k), names, rotation=45 if k <= 30 else 90, ha="right" if k <= 30 else "center",
                    rotation_mode="anchor" if k <= 30 else "default", fontsize=size)
    axes.set_yticks(range(k), names, fontsize=size)
    axes.set_xlabel("prediction")
    axes.set_ylabel("ground truth")
    axes.set_title("confusion matrix, each ground-truth row normalised to 100 %")
    if k <= 25:
        for (row, col), value in np.ndenumerate(normalised):
            if not np.isnan(value) and (value >= 0.005 or row == col):
                axes.text(col, row, f"{100 * value:.0f}", ha="center", va="center", fontsize=min(size, 8),
                          color="white" if value > 0.6 else "black")
    figure.colorbar(image, ax=axes, fraction=min(0.046, 0.35 / side), pad=0.02, label="share of the class's pixels")
    return figure


def iou_figure(per_class_iou: Sequence[float | None], class_names: Sequence[str],
               palette: np.ndarray | None = None, miou: float | None = None) -> Figure:
    """Horizontal bars of each class's IoU (in the class's colour), the value beside each,
    a dashed line at the mIoU; classes absent from truth and prediction marked n/a."""
    k = len(per_class_iou)
    names = _names(class_names, k)
    values = [math.nan if v is None else 100 * float(v) for v in per_class_iou]
    height = min(max(2.5, 0.3 * k + 1.4), 40.0)
    size = _label_size((height - 1.4) / k)
    figure = new_figure(7.5, height)
    axes = figure.add_subplot()
    colours = [tuple(c / 255 for c in palette[i]) for i in range(k)] if palette is not None else None
    bars = axes.barh(range(k), [0 if math.isnan(v) else v for v in values], color=colours, edgecolor="0.2",
                     linewidth=0.6)
    for bar, value in zip(bars, values, strict=True):
        text = "n/a" if math.isnan(value) else f"{value:.1f}"
        axes.text(bar.get_width() + 1, bar.get_y() + bar.get_height() / 2, text, va="center",
                  fontsize=size - 1)
    axes.set_yticks(range(k), names, fontsize=size)
    axes.set_ylim(k - 0.5, -0.5)  # the first class on top, no empty margin
    axes.set_xlim(0, 112)
    axes.set_xlabel("IoU (%)")
    if miou is not None and not math.isnan(miou):
        axes.axvline(100 * miou, color="0.3", linestyle="--", linewidth=1)
        axes.set_title(f"per-class IoU (dashed: mIoU {100 * miou:.1f} %)")
    else:
        axes.set_title("per-class IoU")
    return figure


def colour_labels(labels: np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """(H, W) classes -> (H, W, 3) uint8 colours; void and out-of-range labels as grey checks
    (4-pixel squares), which no palette colour can be mistaken for."""
    valid = (labels >= 0) & (labels < len(palette)) & (labels != ignore_index)
    out = palette[np.where(valid, labels, 0)].astype(np.uint8)
    rows, columns = np.indices(labels.shape)
    checks = np.where((rows // 4 + columns // 4) % 2 == 0, 190, 110).astype(np.uint8)
    out[~valid] = checks[~valid][:, None]
    return out


def error_map(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """The image in dim grey where the prediction is right, red where it is wrong, black on void."""
    grey = image.astype(np.float32).mean(axis=2, keepdims=True) * 0.45 + 40
    out = np.repeat(grey, 3, axis=2).round().astype(np.uint8)
    void = truth == ignore_index
    out[(pred != truth) & ~void] = (230, 30, 30)
    out[void] = 0
    return out


def errors_figure(rows: Sequence[WorstRow], palette: np.ndarray, class_names: Sequence[str],
                  ignore_index: int = 255) -> Figure:
    """A row per image, worst first: input | ground truth | prediction | error map, the scores
    beside, the colours of `class_names` (one per class) in a legend below."""
    height, width = rows[0].image.shape[:2]
    panel = 3.6
    figure = new_figure(4 * panel, len(rows) * panel * height / width + 1.3)
    titles = ("input", "ground truth (void: grey checks)", "prediction", "errors (red; void black)")
    for r, row in enumerate(rows):
        panels = (row.image, colour_labels(row.truth, palette, ignore_index), colour_labels(row.pred, palette),
                  error_map(row.image, row.truth, row.pred, ignore_index))
        for c, picture in enumerate(panels):
            axes = figure.add_subplot(len(rows), 4, 4 * r + c + 1)
            axes.imshow(picture, interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            if r == 0:
                axes.set_title(titles[c], fontsize=10)
            if c == 0:
                axes.set_ylabel(f"image {row.index}\nmIoU {100 * row.miou:.1f}  acc {100 * row.pixel_accuracy:.1f}",
                                fontsize=9)
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=tuple(v / 255 for v in palette[i]), edgecolor="0.3", label=name)
               for i, name in enumerate(class_names)]
    figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 8), fontsize=9,
                  frameon=False)
    return figure


def _names(class_names: Sequence[str], count: int) -> list[str]:
    names = list(class_names)[:count]
    return names + [f"class_{i}" for i in range(len(names), count)]


def write_eval_plots(folder: str, metrics: dict[str, Any], confusion: Any, palette: np.ndarray,
                     worst: Sequence[WorstRow] = (), ignore_index: int = 255) -> list[str]:
    """confusion.png, iou.png and (with `worst` rows) errors.png in `folder`; returns the paths.
    `metrics` is evaluate's result (per_class_iou, mIoU, class_names)."""
    os.makedirs(folder, exist_ok=True)
    names = _names(metrics.get("class_names") or [], len(metrics["per_class_iou"]))
    figures = {"confusion.png": confusion_figure(confusion, names),
               "iou.png": iou_figure(metrics["per_class_iou"], names, palette, metrics.get("mIoU"))}
    if worst:
        figures["errors.png"] = errors_figure(worst, palette, names, ignore_index)
    paths = []
    for name, figure in figures.items():
        paths.append(os.path.join(folder, name))
        save_figure(figure, paths[-1])
    return paths
