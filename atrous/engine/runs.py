"""The eval and predict commands: load a checkpoint, build the CRF, run, report."""

from __future__ import annotations

from argparse import Namespace
from typing import Any

import torch

from atrous.data import build_dataset
from atrous.engine.checkpoint import load_checkpoint
from atrous.engine.common import read_mapping_file, resolve_device
from atrous.engine.distributed import process_group, rank_device
from atrous.engine.errors import UserError
from atrous.engine.evaluate import evaluate, format_table
from atrous.engine.files import write_json_atomic
from atrous.engine.infer import Views, make_views
from atrous.engine.onnx_model import OnnxModel
from atrous.engine.predict import predict
from atrous.models import SegmentationModel


def _read_params(path: str) -> dict[str, Any]:
    return read_mapping_file(path, "--crf-params")


def build_crf(kind: str, model: SegmentationModel, params_path: str | None = None) -> torch.nn.Module | None:
    """The CRF for `--crf kind`: parameters from `--crf-params`, else those fitted and saved
    in the checkpoint (meta["crf"][kind] = {"init": kwargs, "state": state_dict as lists}, as
    written by `atrous fit-crf`), else the layer's published defaults. `num_classes` is the
    model's unless given."""
    if kind == "none":
        if params_path:
            raise UserError("--crf-params needs --crf dense or --crf conv")
        return None
    from atrous.crf import ConvCRF, DenseCRF

    def from_params(params: dict[str, Any], where: str) -> torch.nn.Module:
        params = {str(k).replace("-", "_"): v for k, v in params.items() if k != "kind"}
        given = params.setdefault("num_classes", model.num_classes)
        if given is not None and given != model.num_classes:
            raise UserError(f"{where}: num_classes {given} does not match the model's {model.num_classes}")
        try:
            return layer(**params)
        except (TypeError, ValueError) as err:
            raise UserError(f"{where}: {err}") from err

    layer = {"dense": DenseCRF, "conv": ConvCRF}[kind]
    saved = (model.meta.get("crf") or {}).get(kind)
    if params_path:
        crf = from_params(_read_params(params_path), f"--crf-params {params_path}")
    elif saved:
        where = f"the checkpoint's fitted {kind} CRF"
        if not isinstance(saved, dict) or not isinstance(saved.get("init", {}), dict):
            raise UserError(f"{where} is damaged (expected {{'init': ..., 'state': ...}})")
        crf = from_params(saved.get("init", {}), where)
        try:
            state = {k: torch.tensor(v, dtype=torch.float32) for k, v in saved.get("state", {}).items()}
            crf.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, ValueError, AttributeError) as err:
            raise UserError(f"{where} is damaged: {str(err).strip().splitlines()[0]}") from err
    else:
        crf = layer(num_classes=model.num_classes)
    return crf.to(next(model.parameters()).device).eval()


class FirstItems(torch.utils.data.Dataset):
    """The first `count` items of a dataset, keeping its `info`."""

    def __init__(self, dataset: torch.utils.data.Dataset, count: int) -> None:
        self.dataset, self.count, self.info = dataset, min(count, len(dataset)), dataset.info

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        if index >= self.count:
            raise IndexError(index)
        return self.dataset[index]


def _load(path: str, device: str | None) -> SegmentationModel:
    return load_checkpoint(path).to(rank_device(resolve_device(device)))


def views_of(args: Namespace) -> Views:
    """The views of `--scales`, `--flip`, `--slide H [W]`, `--stride S [S]`, checked."""
    return make_views(args.scales, args.flip, args.slide, args.stride)


def run_eval(args: Namespace) -> dict[str, Any]:
    """Under torchrun the processes share the images (atrous.engine.evaluate); rank 0 reports."""
    with process_group(resolve_device(args.device)) as world:
        metrics = _eval(args)
    if world.is_main:
        print(format_table(metrics))
        if args.json:
            write_json_atomic(args.json, metrics)
    return metrics


def _eval(args: Namespace) -> dict[str, Any]:
    views = views_of(args)
    model = _load(args.checkpoint, args.device)
    dataset = build_dataset(args.dataset, args.split, data_root=args.data_root, num_classes=args.num_classes,
                            synthetic_size=args.synthetic_size)
    info = dataset.info
    if args.max_images is not None:
        if args.max_images < 1:
            raise UserError(f"--max-images must be at least 1, got {args.max_images}")
        dataset = FirstItems(dataset, args.max_images)
    if info.num_classes != model.num_classes:
        raise UserError(
            f"{args.checkpoint} predicts {model.num_classes} classes but dataset {args.dataset} has {info.num_classes}"
        )
    if any(w < 1 for w in args.trimap):
        raise UserError("--trimap widths must be at least 1 pixel")
    crf = build_crf(args.crf, model, args.crf_params)
    metrics = evaluate(model, dataset, batch_size=args.batch_size, precision=args.precision, views=views, crf=crf,
                       trimap_widths=args.trimap, progress=args.progress)
    metrics["checkpoint"] = args.checkpoint
    metrics["crf"] = args.crf
    # an exported .onnx graph computes in its own precision (int8 or fp32), whatever --precision says
    precision = model.precision if isinstance(model, OnnxModel) else args.precision
    metrics["inference"] = {"precision": precision, "scales": list(views.scales), "flip": views.flip,
                            "window": views.window, "stride": views.stride}
    return metrics


def run_predict(args: Namespace) -> list[str]:
    views = views_of(args)
    model = _load(args.checkpoint, args.device)
    crf = build_crf(args.crf, model, args.crf_params)
    return predict(model, args.inputs, args.out, crf=crf, precision=args.precision, views=views,
                   batch_size=args.batch_size, save=args.save, progress=args.progress)
