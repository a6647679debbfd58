"""Command line: argument parsing only; the work is done in atrous.engine.

    atrous models
    atrous train --model NAME --dataset NAME --out DIR [options]
    atrous eval --checkpoint FILE --dataset NAME [--crf none|dense|conv] [--json FILE]
    atrous predict --checkpoint FILE INPUT... --out DIR [--crf ...] [--batch-size B] [--save logits|probs]
    atrous serve --checkpoint FILE [--host 127.0.0.1] [--port 8000] [--crf-params FILE] [--max-upload-mb N]
    atrous demo [--out runs/demo]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from atrous.data.weights import CLASS_WEIGHTINGS
from atrous.engine import DATASETS, DataError, UserError
from atrous.engine.distributed import error_prefix, is_main_process
from atrous.engine.losses import LOSSES


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _yaml_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    key, value = text.split("=", 1)
    return key.strip().replace("-", "_"), _yaml_value(value)


def _add_train_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("train", help="train a model; writes DIR/model.safetensors and DIR/metrics.json",
                            argument_default=argparse.SUPPRESS)
    p.add_argument("--config", help="YAML file with the same options as the flags (flags win)")
    p.add_argument("--model", help="model name (see `atrous models`)")
    p.add_argument("--dataset", help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--data-root", help="dataset folder in its native layout (default ../shared/data/<dataset>)")
    p.add_argument("--out", help="output folder")
    p.add_argument("--backbone", help="timm model name, or vgg16 / vgg16_bn")
    p.add_argument("--output-stride", type=int, choices=(8, 16, 32))
    p.add_argument("--pretrained-backbone", help="local weights file, or 'imagenet' (downloads)")
    p.add_argument("--model-opt", action="append", type=_key_value, metavar="KEY=VALUE",
                   help="a model option, e.g. --model-opt separable=true (repeatable)")
    p.add_argument("--num-classes", type=int, help="folder datasets without classes.json")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--iters", type=int, help=f"training iterations (default {1000})")
    budget.add_argument("--epochs", type=float, help="passes over the training set")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--crop-size", type=int, help="random crop side (padded with void where smaller)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"))
    p.add_argument("--lr", type=float, help="base learning rate (sgd 0.01, adamw 0.001)")
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--poly-power", type=float)
    p.add_argument("--warmup-iters", type=int)
    p.add_argument("--class-weights", choices=CLASS_WEIGHTINGS)
    p.add_argument("--loss", choices=LOSSES, help="training loss (default ce)")
    p.add_argument("--ohem-thresh", type=float, help="ohem: train on pixels whose true-class probability is below (0.7)")
    p.add_argument("--ohem-min-kept", type=int, help="ohem: at least this many pixels per image (100000)")
    p.add_argument("--focal-gamma", type=float, help="focal: the focusing exponent (2)")
    p.add_argument("--lovasz-per-image", action="store_true", help="lovasz: average per image, not over the batch")
    p.add_argument("--grad-accum", type=int, help="split each global batch into K micro-batches (default 1)")
    sync = p.add_mutually_exclusive_group()
    sync.add_argument("--sync-bn", dest="sync_bn", action="store_true",
                      help="batch norm over the global batch (default when run on several processes)")
    sync.add_argument("--no-sync-bn", dest="sync_bn", action="store_false", help="batch norm per process")
    p.add_argument("--scale-min", type=float)
    p.add_argument("--scale-max", type=float)
    p.add_argument("--no-flip", dest="flip", action="store_false")
    p.add_argument("--jitter", type=float, help="colour jitter strength (0 = off)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                   help="fp32 (default); auto: bf16 autocast where it is native (CUDA, AVX512-BF16/AMX CPUs), "
                        "fp32 elsewhere (emulated bf16 is many times slower); fp16 uses a gradient scaler (for GPUs)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--fused-optimizer", action="store_true", help="the optimiser's fused implementation (one kernel)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--workers", type=int, help="data-loading processes")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    p.add_argument("--stop-after", type=int, help="end this run after N iterations; continue with --resume")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--train-split", help="split trained on (default train; CamVid: seq_train holds 0006R0 out)")
    p.add_argument("--eval-split", help="split evaluated at the end (default val)")
    p.add_argument("--eval-every", type=int, help="also evaluate every N iterations (a validation curve in log.jsonl)")
    p.add_argument("--synthetic-size", type=int)
    p.add_argument("--synthetic-length", type=int)
    p.add_argument("--adversarial", action="store_true", help="add Luc et al.'s adversarial loss")
    p.add_argument("--adversarial-weight", type=float, help="lambda of the adversarial loss")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--dist-timeout", type=float, help="seconds a process waits for the others (torchrun; 600)")


def _add_crf_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--crf", choices=("none", "dense", "conv"), default="none", help="CRF refinement")
    p.add_argument("--crf-params", help="YAML/JSON file of CRF parameters (overrides the checkpoint's)")


def _add_inference_arguments(p: argparse.ArgumentParser) -> None:
    """The views and precision of atrous.infer."""
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto (default): batch norm folded, bf16 + channels-last where the CPU has native "
                        "bf16 and on CUDA, fp32 elsewhere; fp32: the model exactly as trained")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], metavar="S",
                   help="average over the input resized by each scale, e.g. 0.5 0.75 1.0 1.25 1.5 1.75")
    p.add_argument("--flip", action="store_true", help="also average over the left-right mirrored input")
    p.add_argument("--slide", type=int, nargs="+", metavar=("H", "W"),
                   help="sliding-window inference with H x W windows (W defaults to H)")
    p.add_argument("--stride", type=int, nargs="+", metavar=("S", "S_W"),
                   help="window stride (default two thirds of the window)")


def _add_serve_parser(commands: argparse._SubParsersAction) -> None:
    sv = commands.add_parser("serve", help="an HTTP API and a browser page for a checkpoint (pip install 'atrous[serve]')")
    sv.add_argument("--checkpoint", required=True)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port (0: any free port; default 8000)")
    sv.add_argument("--crf-params", help="YAML/JSON file of CRF parameters; its 'kind' (dense, the default, or "
                                         "conv) says which CRF they set")
    sv.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload accepted (default 20)")
    sv.add_argument("--max-megapixels", type=float, default=4.0,
                    help="larger images are refused from their header, before decoding (default 4)")
    sv.add_argument("--concurrency", type=int, default=1, help="inferences running at once (default 1)")
    sv.add_argument("--queue", type=int, default=8,
                    help="prediction requests waiting beyond those; more are answered 503 (default 8)")
    sv.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="fp32",
                    help="auto: bf16 where the CPU has native bf16 and on CUDA, fp32 elsewhere")
    sv.add_argument("--device")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="atrous", description="Semantic segmentation from FCN to DeepLab v3+.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_parser = commands.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return _add_parser(name, parents=[common], **kwargs)

    commands.add_parser = add_parser  # every command takes --debug too
    commands.add_parser("models", help="list the registered models")
    _add_train_parser(commands)

    ev = commands.add_parser("eval", help="evaluate a checkpoint: per-class table and summary metrics")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--dataset", required=True, help=f"one of {', '.join(DATASETS)}")
    ev.add_argument("--data-root", help="dataset folder in its native layout (default ../shared/data/<dataset>)")
    ev.add_argument("--split", default="val")
    ev.add_argument("--num-classes", type=int)
    ev.add_argument("--max-images", type=int, help="evaluate on the first N images only")
    ev.add_argument("--batch-size", type=int, default=4)
    _add_inference_arguments(ev)
    ev.add_argument("--device")
    ev.add_argument("--trimap", type=int, action="append", default=[], metavar="W",
                    help="also report mIoU within W pixels of label boundaries (repeatable)")
    ev.add_argument("--json", help="write the metrics to this file")
    ev.add_argument("--synthetic-size", type=int, default=128)
    ev.add_argument("--no-progress", dest="progress", action="store_false")
    _add_crf_arguments(ev)

    pr = commands.add_parser("predict", help="segment images and videos: DIR/<stem>.png and DIR/<stem>_overlay.png "
                             "(a video: DIR/<stem>_overlay.mp4)")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="image or video files, folders (their images and videos) or glob patterns ('**' recurses)")
    pr.add_argument("--out", required=True)
    pr.add_argument("--batch-size", type=int, default=4, help="images or frames run at once (default 4)")
    pr.add_argument("--save", choices=("logits", "probs"),
                    help="also write DIR/<stem>_logits.npy or _probs.npy, float32 (K, H, W); (T, K, H, W) for a video")
    _add_inference_arguments(pr)
    pr.add_argument("--device")
    pr.add_argument("--no-progress", dest="progress", action="store_false")
    _add_crf_arguments(pr)

    ex = commands.add_parser("export", help="export a checkpoint to ONNX or TorchScript, its metadata inside")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--out", required=True, help="file to write (.onnx, .pt or .torchscript)")
    ex.add_argument("--format", choices=("onnx", "torchscript"), help="default: from the suffix of --out")
    ex.add_argument("--height", type=int, default=512, help="example input height (the input size with --static)")
    ex.add_argument("--width", type=int, default=512, help="example input width (the input size with --static)")
    ex.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    shape = ex.add_mutually_exclusive_group()
    shape.add_argument("--dynamic", dest="dynamic", action="store_true", default=True,
                       help="any batch size, height and width (default)")
    shape.add_argument("--static", dest="dynamic", action="store_false",
                       help="exactly (1, C, --height, --width)")
    ex.add_argument("--int8", action="store_true",
                    help="int8 ONNX (onnxruntime static quantization, QDQ, per-channel weights), calibrated "
                         "on --calibrate-images training images of --calibrate-dataset")
    ex.add_argument("--calibrate-dataset", help=f"with --int8: one of {', '.join(DATASETS)}")
    ex.add_argument("--data-root", help="with --int8: the calibration dataset's folder")
    ex.add_argument("--calibrate-images", type=int, default=32, help="with --int8: how many (default 32)")
    ex.add_argument("--calibrate-method", default="minmax", help="with --int8: minmax (default), entropy or percentile")

    fit = commands.add_parser("fit-crf", help="fit CRF parameters on a frozen model's outputs (decoupled training)")
    fit.add_argument("--checkpoint", required=True)
    fit.add_argument("--dataset", required=True, help=f"one of {', '.join(DATASETS)}")
    fit.add_argument("--data-root")
    fit.add_argument("--split", default="train", help="split to fit on (default train)")
    fit.add_argument("--num-classes", type=int)
    fit.add_argument("--crf", choices=("dense", "conv"), default="conv")
    fit.add_argument("--crf-params", help="YAML/JSON file of starting parameters")
    fit.add_argument("--iters", type=int, default=200)
    fit.add_argument("--lr", type=float, default=0.01)
    fit.add_argument("--batch-size", type=int, default=2)
    fit.add_argument("--crop-size", type=int, help="random crops of this side (default: whole images)")
    fit.add_argument("--max-images", type=int, help="use at most this many images of the split")
    fit.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    fit.add_argument("--device")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--out", help="checkpoint to write (default: update --checkpoint in place, atomically)")
    fit.add_argument("--synthetic-size", type=int, default=128)
    fit.add_argument("--no-progress", dest="progress", action="store_false")

    _add_serve_parser(commands)

    demo = commands.add_parser("demo", help="train DeepLab v3+ on synthetic scenes, evaluate, write overlays")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--iters", type=int, help="override the demo's iteration count")
    demo.add_argument("--no-progress", dest="progress", action="store_false")
    return parser


def _train_config(args: argparse.Namespace):
    from atrous.engine.train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {}
    flags = vars(args)
    if flags.get("resume") and flags.get("out"):
        # --resume continues the run as it was configured: no need to repeat its flags
        saved = os.path.join(flags["out"], "config.json")
        if os.path.isfile(saved):
            from atrous.engine.train import RESUME_INHERITS, RESUME_MAY_CHANGE

            # how the first run was driven is not inherited
            run_control = set(RESUME_MAY_CHANGE) - set(RESUME_INHERITS)
            values.update({k: v for k, v in _read_config(saved, fields).items() if k not in run_control})
    if getattr(args, "config", None):
        values.update(_read_config(args.config, fields))
    if "iters" in flags or "epochs" in flags:  # a budget flag replaces the config's budget
        values.pop("iters", None)
        values.pop("epochs", None)
    model_options = dict(values.get("model_options") or {})
    model_options.update(dict(flags.pop("model_opt", None) or []))
    values.update({k: v for k, v in flags.items() if k in fields})
    values["model_options"] = model_options
    for required in ("model", "dataset", "out"):
        if not values.get(required):
            raise UserError(f"--{required} is required (or set '{required}' in --config)")
    return TrainConfig(**values)


def _read_config(path: str, fields: set[str]) -> dict[str, Any]:
    from atrous.engine.common import read_mapping_file

    data = read_mapping_file(path, "--config")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise UserError(f"--config {path}: unknown option '{unknown[0]}'")
    return data


def _command_models(args: argparse.Namespace) -> int:
    from atrous.engine import model_summaries

    summaries = model_summaries()
    width = max(len(n) for n in summaries)
    for name, summary in summaries.items():
        print(f"{name:<{width}}  {summary}")
    return 0


def _command_train(args: argparse.Namespace) -> int:
    from atrous.engine.evaluate import format_table
    from atrous.engine.train import train

    cfg = _train_config(args)
    result = train(cfg)
    if not is_main_process():  # under torchrun, rank 0 reports
        return 0
    summary = result["train"]
    print(f"trained {summary['iters']}/{summary['total_iters']} iterations in {summary['seconds']:.1f} s "
          f"-> {cfg.out}/model.safetensors")
    metrics = result.get(cfg.eval_split or "val")
    if metrics:
        print(format_table(metrics))
    return 0


def _command_eval(args: argparse.Namespace) -> int:
    from atrous.engine.runs import run_eval

    run_eval(args)
    return 0


def _command_predict(args: argparse.Namespace) -> int:
    from atrous.engine.runs import run_predict

    written = run_predict(args)
    print(f"wrote {len(written)} files to {args.out}")
    return 0


def _command_export(args: argparse.Namespace) -> int:
    from atrous.engine.export import run_export

    if args.int8:
        from atrous.engine.quantize import run_export_int8

        agreement = run_export_int8(args.checkpoint, args.out, dataset=args.calibrate_dataset,
                                    data_root=args.data_root, images=args.calibrate_images,
                                    method=args.calibrate_method, fmt=args.format, dynamic=args.dynamic,
                                    opset=args.opset)
        print(f"wrote {args.out} (int8 ONNX, dynamic input size; labels agree with fp32 on "
              f"{100 * agreement:.1f}% of a calibration image)")
        return 0
    for flag in ("calibrate_dataset", "data_root"):
        if getattr(args, flag):
            raise UserError(f"--{flag.replace('_', '-')} applies to --int8 only")
    fmt = run_export(args.checkpoint, args.out, fmt=args.format, example_size=(args.height, args.width),
                     dynamic=args.dynamic, opset=args.opset)
    print(f"wrote {args.out} ({fmt}, {'dynamic' if args.dynamic else 'static'} input size)")
    return 0


def _command_fit_crf(args: argparse.Namespace) -> int:
    from atrous.engine.crf_fit import run_fit_crf

    run_fit_crf(args)
    return 0


def _command_serve(args: argparse.Namespace) -> int:
    from atrous.serve import ServeConfig, serve

    names = [f.name for f in dataclasses.fields(ServeConfig)]
    serve(ServeConfig(**{name: getattr(args, name) for name in names}))
    return 0


def _command_demo(args: argparse.Namespace) -> int:
    from atrous.engine.demo import run_demo

    run_demo(args.out, iters=args.iters, progress=args.progress)
    return 0


COMMANDS = {
    "models": _command_models,
    "train": _command_train,
    "eval": _command_eval,
    "predict": _command_predict,
    "export": _command_export,
    "fit-crf": _command_fit_crf,
    "serve": _command_serve,
    "demo": _command_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UserError, DataError) as err:
        if args.debug:
            raise
        print(f"atrous {args.command}: error: {error_prefix()}{_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"atrous {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # anything unexpected still ends in one line without --debug
        if args.debug:
            raise
        print(f"atrous {args.command}: error: {error_prefix()}{type(err).__name__}: {_one_line(err)} "
              "(rerun with --debug for details)", file=sys.stderr)
        return 1


def _one_line(err: BaseException) -> str:
    """The message in one line. An error raised in a data-loading worker arrives wrapped in
    the worker's traceback; its last line holds the original `module.Error: message`."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if len(lines) > 1 and lines[0].startswith("Caught "):
        last = lines[-1]
        head, sep, message = last.partition(": ")
        return message if sep and "." in head and " " not in head else last
    return lines[0]


if __name__ == "__main__":
    sys.exit(main())
