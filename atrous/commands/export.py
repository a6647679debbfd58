"""`atrous export`: a checkpoint to ONNX or OpenVINO (fp32 or int8) or TorchScript, its metadata inside, or
to a pretrained folder to share (its run's recipe and evaluation in the model card)."""

from __future__ import annotations

from dataclasses import dataclass

from atrous.data import list_datasets
from atrous.data.options import DataRootOptions
from atrous.deployment.export import DEFAULT_OPSET, FORMATS, OPSETS, format_from_path
from atrous.deployment.int8 import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_CALIBRATION_METHOD,
)
from atrous.errors import UserError
from atrous.options import check_options, option
from atrous.outputs import require_writable_file

HELP = ("export a checkpoint to ONNX, OpenVINO or TorchScript (its metadata inside) or to a pretrained folder "
        "to share")
PRETRAINED = "pretrained"


@dataclass(kw_only=True)
class ExportOptions(DataRootOptions):
    """--data-root (DataRootOptions) is the --int8 calibration dataset's folder."""

    checkpoint: str = option(help="the checkpoint to export")
    out: str = option(help="file to write (.onnx, .xml: an OpenVINO IR with its .bin beside it, .pt or "
                      ".torchscript), or the folder of --format pretrained")
    format: str | None = option(None, "default: from the suffix of --out; pretrained: a folder for "
                                "atrous.from_pretrained and the Hub (weights, config, a model card with the "
                                "recipe and evaluation of the run the checkpoint comes from)",
                                choices=(*FORMATS, PRETRAINED))
    height: int = option(512, "example input height (the input size with --static)", ge=1)
    width: int = option(512, "example input width (the input size with --static)", ge=1)
    opset: int | None = option(None, f"ONNX opset (default {DEFAULT_OPSET})", ge=OPSETS.start, lt=OPSETS.stop)
    dynamic: bool = option(True, "exactly (1, C, --height, --width) instead of any batch size, height and width",
                           flag="--static", other="--dynamic", group="shape")
    int8: bool = option(False, "int8 ONNX (onnxruntime static quantization, QDQ, per-channel weights) or, "
                        "with a .xml --out, int8 OpenVINO (NNCF post-training quantization), calibrated on "
                        "--calibrate-images training images of --calibrate-dataset")
    calibrate_dataset: str | None = option(None, "with --int8: the calibration dataset", choices=list_datasets)
    calibrate_images: int = option(DEFAULT_CALIBRATION_IMAGES, "with --int8: how many", ge=1)
    calibrate_method: str = option(DEFAULT_CALIBRATION_METHOD, "with --int8: how the int8 ranges are set",
                                   choices=CALIBRATION_METHODS)
    metrics: str | None = option(None, "with --format pretrained: the metrics.json (or `atrous eval --json` "
                                 "file) whose evaluation the model card shows (default: the run's own)")
    notes: str | None = option(None, "with --format pretrained: a paragraph for the model card (markdown)")
    push_to_hub: str | None = option(None, "with --format pretrained: also upload the folder to this Hub "
                                     "repository, owner/name (created if needed; log in with "
                                     "`huggingface-cli login` or set HF_TOKEN)", metavar="REPO_ID")


def run(opts: ExportOptions) -> int:
    check_options(opts)
    if opts.format == PRETRAINED:
        return _pretrained(opts)
    for flag in ("metrics", "notes", "push_to_hub"):
        if getattr(opts, flag):
            raise UserError(f"--{flag.replace('_', '-')} applies to --format pretrained only")
    if not opts.int8:
        for flag in ("calibrate_dataset", "data_root"):
            if getattr(opts, flag):
                raise UserError(f"--{flag.replace('_', '-')} applies to --int8 only")
    require_writable_file(opts.out, "--out")
    if (opts.format or format_from_path(opts.out)) == "openvino":
        return _openvino(opts)
    if opts.int8:
        from atrous.deployment.int8 import run_export_int8

        agreement = run_export_int8(opts.checkpoint, opts.out, dataset=opts.calibrate_dataset,
                                    data_root=opts.data_root, images=opts.calibrate_images,
                                    method=opts.calibrate_method, fmt=opts.format, dynamic=opts.dynamic,
                                    opset=opts.opset)
        print(f"wrote {opts.out} (int8 ONNX, dynamic input size; labels agree with fp32 on "
              f"{100 * agreement:.1f}% of a calibration image)")
        return 0
    from atrous.deployment.export import run_export

    fmt = run_export(opts.checkpoint, opts.out, fmt=opts.format, example_size=(opts.height, opts.width),
                     dynamic=opts.dynamic, opset=opts.opset)
    print(f"wrote {opts.out} ({fmt}, {'dynamic' if opts.dynamic else 'static'} input size)")
    return 0


def _openvino(opts: ExportOptions) -> int:
    """--format openvino (or a .xml --out), fp32 or --int8 (NNCF)."""
    if opts.opset is not None or opts.calibrate_method != DEFAULT_CALIBRATION_METHOD:
        raise UserError("--opset and --calibrate-method apply to ONNX only, not to --format openvino")
    from atrous.deployment.openvino import run_export_openvino

    agreement = run_export_openvino(opts.checkpoint, opts.out, int8=opts.int8, dataset=opts.calibrate_dataset,
                                    data_root=opts.data_root, images=opts.calibrate_images,
                                    example_size=(opts.height, opts.width), dynamic=opts.dynamic)
    if agreement is None:
        print(f"wrote {opts.out} (openvino IR with its .bin, {'dynamic' if opts.dynamic else 'static'} input size)")
    else:
        print(f"wrote {opts.out} (int8 OpenVINO IR with its .bin, dynamic input size; labels agree with fp32 on "
              f"{100 * agreement:.1f}% of a calibration image)")
    return 0


def _pretrained(opts: ExportOptions) -> int:
    for flag in ("int8", "opset", "calibrate_dataset", "data_root"):
        if getattr(opts, flag):
            raise UserError(f"--{flag.replace('_', '-')} does not apply to --format pretrained")
    from atrous.training.share import export_run

    export_run(opts.checkpoint, opts.out, metrics_file=opts.metrics, notes=opts.notes)
    print(f"wrote {opts.out} (a pretrained folder: model.safetensors, config.json, README.md; "
          "atrous.from_pretrained and every --checkpoint read it)")
    if opts.push_to_hub:
        from atrous.checkpoints.pretrained import upload_pretrained

        print(f"uploaded to {upload_pretrained(opts.out, opts.push_to_hub)}")
    return 0


Options = ExportOptions
