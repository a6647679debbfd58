"""`atrous data stats|check|show`: look at a dataset before training on it.

- stats: per-band mean, std and range (the --mean/--std to train with), image sizes, class
  pixel frequencies;
- check: read every pair and list every bad one, each on its line (exit 1 when any);
- show: a picture of training samples after the augmentation, their masks over them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from atrous.data import build_dataset, list_datasets
from atrous.data.display import DisplayOptions
from atrous.data.masks import check_mask
from atrous.data.options import DatasetOptions, TaskOptions
from atrous.data.samples import sample_grid, sample_tile
from atrous.data.stats import check_dataset, dataset_stats, spaced_indices
from atrous.data.transforms import Compose, train_transform
from atrous.errors import UserError
from atrous.options import ProgressOptions, check_options, option, read_config
from atrous.outputs import require_writable_file, write_atomic
from atrous.runtime.progress import progress_bar
from atrous.training.config import TrainOptions  # the augmentation options are training's

HELP = "look at a dataset: stats (normalisation, sizes, class frequencies), check (every bad pair), show (samples)"
ACTIONS = ("stats", "check", "show")


@dataclass(kw_only=True)
class DataOptions(DatasetOptions, TaskOptions, DisplayOptions, ProgressOptions):
    action: str = option(help="stats, check or show", positional=True, choices=ACTIONS)
    dataset: str = option(help="the dataset", choices=list_datasets)
    split: str = option("train", "the split read")
    max_images: int | None = option(None, "stats: read at most N images, evenly spaced (default all)", ge=1)
    config: str | None = option(None, "show: a training config (YAML) whose augmentation is shown (default: "
                                "atrous train's defaults)", metavar="FILE")
    count: int = option(8, "show: samples drawn", ge=1)
    out: str = option("samples.png", "show: the picture written", metavar="FILE")


def run(opts: DataOptions) -> int:
    check_options(opts)
    dataset = build_dataset(opts.dataset, opts.split, data_root=opts.data_root, num_classes=opts.num_classes,
                            synthetic_size=opts.synthetic_size, task=opts.task)
    return {"stats": _stats, "check": _check, "show": _show}[opts.action](opts, dataset)


def _stats(opts: DataOptions, dataset) -> int:
    indices = spaced_indices(len(dataset), opts.max_images)
    with progress_bar(len(indices), desc="stats", unit="img", disable=not opts.progress) as bar:
        stats = dataset_stats(dataset, dataset.info.num_classes, indices=indices, advance=bar.update)
    scale = " (8-bit, scaled to 0-1)" if stats.dtype == "uint8" else " (stored units)"
    print(f"{opts.dataset} {opts.split}: {stats.images} images, {len(stats.mean)} bands of {stats.dtype}{scale}")
    print(f"{'band':>4}  {'mean':>12}  {'std':>12}  {'min':>12}  {'max':>12}")
    for band, values in enumerate(zip(stats.mean, stats.std, stats.minimum, stats.maximum, strict=True)):
        print(f"{band:>4}  " + "  ".join(f"{v:>12.6g}" for v in values))
    sizes = ", ".join(f"{w}x{h} ({n})" for (h, w), n in stats.sizes.most_common(5))
    print(f"sizes (W x H): {sizes}{' ...' if len(stats.sizes) > 5 else ''}")
    total = max(sum(stats.class_pixels), 1)
    names = dataset.info.class_names
    print("labelled pixels: " + ", ".join(f"{names[k]} {100 * n / total:.2f}%" for k, n in
                                          enumerate(stats.class_pixels)) + f"; void {stats.void_pixels}")
    print(f"train with: {stats.flags()}")
    return 0


def _check(opts: DataOptions, dataset) -> int:
    classes = dataset.info.num_classes

    def mask_problem(mask, name: str) -> str | None:
        return check_mask(mask.numpy(), opts.task, classes, name)

    with progress_bar(len(dataset), desc="check", unit="pair", disable=not opts.progress) as bar:
        problems = check_dataset(dataset, check_mask=mask_problem, advance=bar.update)
    for problem in problems:
        print(problem)
    print(f"{opts.dataset} {opts.split}: {len(dataset)} pairs read, {len(problems)} with problems")
    return 1 if problems else 0


def _show(opts: DataOptions, dataset) -> int:
    if not opts.out.lower().endswith((".png", ".jpg", ".jpeg")):
        raise UserError(f"--out {opts.out}: write a .png or .jpg")
    require_writable_file(opts.out, "--out")
    settings = TrainOptions(**(read_config(opts.config, TrainOptions) if opts.config else {}))
    augment = train_transform(settings.crop_size, scale=(settings.scale_min, settings.scale_max),
                              flip=settings.flip, jitter=settings.jitter, elastic=settings.elastic)
    augment = Compose(augment.transforms[:-1])  # as fed, before the normalisation
    rng = np.random.default_rng(settings.seed)
    palette = dataset.info.palette
    tiles = []
    for index in rng.choice(len(dataset), size=min(opts.count, len(dataset)), replace=False):
        image, mask = augment(*dataset[int(index)], rng)
        tiles.append(sample_tile(image, mask, palette, opts.display_bands))
    picture = sample_grid(tiles)
    write_atomic(opts.out, lambda tmp: picture.save(tmp, format="PNG" if opts.out.lower().endswith(".png")
                                                     else "JPEG"))
    print(f"wrote {opts.out}: {len(tiles)} samples of {opts.dataset} {opts.split} "
          f"({os.path.basename(opts.config) if opts.config else 'the default'} augmentation)")
    return 0


Options = DataOptions
