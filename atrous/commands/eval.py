"""`atrous eval`: a checkpoint over a dataset split, a per-class table and the summary metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atrous.checkpoints import load_checkpoint, palette_of
from atrous.checkpoints.exported import ExportedModel
from atrous.commands.inference_options import CrfOptions, ViewOptions
from atrous.data import build_dataset, list_datasets
from atrous.data.options import DatasetOptions, ThresholdOptions
from atrous.data.tasks import task_of
from atrous.errors import UserError
from atrous.inference.engines import on_engine
from atrous.inference.evaluate import FirstItems, evaluate, format_table
from atrous.inference.plots import RANK_BY, WorstImages, require_matplotlib, write_eval_plots
from atrous.inference.refinement import build_crf
from atrous.models import SegmentationModel
from atrous.models.base import HeadOutput
from atrous.options import ProgressOptions, check_options, option
from atrous.outputs import require_writable_file, require_writable_folder, write_json_atomic
from atrous.runtime.device import resolve_device
from atrous.runtime.distributed import process_group, rank_device
from atrous.runtime.options import DeviceOptions

HELP = "evaluate a checkpoint: per-class table and summary metrics"


@dataclass(kw_only=True)
class EvalOptions(ViewOptions, CrfOptions, DatasetOptions, ThresholdOptions, DeviceOptions, ProgressOptions):
    checkpoint: str = option(help="a checkpoint (.safetensors), or an .onnx or OpenVINO .xml file from atrous export")
    dataset: str = option(help="the dataset", choices=list_datasets)
    split: str = option("val", "the split evaluated")
    max_images: int | None = option(None, "evaluate on the first N images only", ge=1)
    batch_size: int = option(4, "images per batch", ge=1)
    trimap: list[int] = option(factory=list, help="also report mIoU within W pixels of label boundaries "
                               "(repeatable)", append=True, metavar="W", ge=1)
    json: str | None = option(None, "write the metrics to this file")
    plots: str | None = option(None, "write pictures into this folder: confusion.png (row-normalised confusion "
                               "matrix), iou.png (per-class IoU), errors.png (the worst images); needs matplotlib",
                               metavar="DIR")
    plots_worst: int = option(4, "how many of the worst images errors.png shows (0: none)", ge=0, metavar="N")
    plots_by: str = option("mIoU", "the per-image score that ranks the worst images", choices=RANK_BY)
    head: str = option("out", "the score head evaluated: out (the model's output), or one of its extra heads "
                       "(FCN's SIFT Flow net: geometric, with --dataset sift_flow_geometric)")


def load_model(path: str, device: str | None, output_stride: int | None = None) -> SegmentationModel:
    """The checkpoint on this process's device (its own GPU under torchrun), at
    `output_stride` when given."""
    return load_checkpoint(path, output_stride=output_stride).to(rank_device(resolve_device(device)))


def run(opts: EvalOptions) -> dict[str, Any]:
    """Under torchrun the processes share the images (atrous.inference.evaluate); rank 0 reports."""
    check_options(opts)
    if opts.json:
        require_writable_file(opts.json, "--json")
    if opts.plots:
        require_matplotlib("atrous eval --plots")
        require_writable_folder(opts.plots, "--plots")
    with process_group(resolve_device(opts.device)) as world:
        metrics, worst, palette = _evaluate(opts)
    confusion = metrics.pop("confusion_matrix", None)
    if world.is_main:
        print(format_table(metrics))
        if opts.json:
            write_json_atomic(opts.json, metrics)
        if opts.plots:
            paths = write_eval_plots(opts.plots, metrics, confusion, palette, worst.rows() if worst else ())
            print(f"pictures: {', '.join(paths)}")
    return metrics


def _head(model: SegmentationModel, head: str, info: Any) -> HeadOutput:
    """One of the model's extra score heads as the model evaluated, named as the dataset names
    its classes."""
    try:
        view = HeadOutput(model, head)
    except (ValueError, AttributeError) as err:
        raise UserError(f"--head {head}: {err}") from err
    view.meta.update(class_names=list(info.class_names), palette=[list(c) for c in info.palette])
    return view


def _evaluate(opts: EvalOptions) -> tuple[dict[str, Any], WorstImages | None, Any]:
    """The metrics; with --plots, the worst images (this process's share under torchrun) and
    the palette too."""
    views = opts.views()
    model = on_engine(load_model(opts.checkpoint, opts.device, opts.output_stride), opts.engine, opts.precision)
    task = task_of(model.meta)  # the dataset's masks are read for the model's task
    if task != "multiclass" and (opts.plots or opts.trimap):
        raise UserError(f"--plots and --trimap are for multiclass models; {opts.checkpoint} is a {task} model")
    dataset = build_dataset(opts.dataset, opts.split, data_root=opts.data_root, num_classes=opts.num_classes,
                            synthetic_size=opts.synthetic_size, task=task)
    info = dataset.info
    if opts.max_images is not None:
        dataset = FirstItems(dataset, opts.max_images)
    if opts.head != "out":
        model = _head(model, opts.head, info)
    if info.num_classes != model.num_classes:
        what = "classes" if task == "multiclass" else "labels"
        raise UserError(f"{opts.checkpoint} predicts {model.num_classes} {what} but dataset {opts.dataset} "
                        f"has {info.num_classes}")
    bands = dataset[0][0].shape[0] if len(dataset) else None
    if bands is not None and bands != getattr(model, "in_channels", bands):
        raise UserError(f"{opts.checkpoint} takes {model.in_channels}-band images but the images of dataset "
                        f"{opts.dataset} have {bands} bands")
    crf = build_crf(opts.crf, model, opts.crf_params)
    worst = WorstImages(opts.plots_worst, model.num_classes, info.ignore_index, opts.plots_by) if opts.plots else None
    metrics = evaluate(model, dataset, batch_size=opts.batch_size, precision=opts.precision, views=views, crf=crf,
                       trimap_widths=opts.trimap, progress=opts.progress, confusion_matrix=bool(opts.plots),
                       on_batch=worst, threshold=opts.threshold)
    metrics["checkpoint"] = opts.checkpoint
    metrics["crf"] = opts.crf
    # an exported graph may compute in its own precision (int8, or fp32 in onnxruntime), whatever --precision says
    precision = model.precision_run(opts.precision) if isinstance(model, ExportedModel) else opts.precision
    metrics["inference"] = {"precision": precision, "scales": list(views.scales), "flip": views.flip,
                            "window": views.window, "stride": views.stride,
                            "output_stride": (model.config or {}).get("output_stride")}
    return metrics, worst, palette_of(model.meta, model.num_classes)


Options = EvalOptions
