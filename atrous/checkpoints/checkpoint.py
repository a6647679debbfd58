"""Checkpoints: one .safetensors file whose header metadata rebuilds the model.

Metadata key "atrous" holds JSON: {"format": 1, "model": model.config, "meta": {...}}
where meta carries class names, palette, normalisation and whatever else the caller
passes (e.g. fitted CRF parameters).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from atrous.checkpoints.sources import is_repo_id, resolve_source
from atrous.errors import UserError
from atrous.models import SegmentationModel, create_model
from atrous.models.registry import options_for_weights
from atrous.outputs import write_atomic

FORMAT_VERSION = 1


def save_checkpoint(model: SegmentationModel, path: str, **meta: Any) -> None:
    """Write `model`'s weights and what rebuilds it to `path`, atomically.

    `meta` is merged over `model.meta` (class_names, palette, mean, std, ...); values must
    be JSON-serialisable."""
    if not getattr(model, "config", None):
        raise ValueError(f"save_checkpoint needs a model that records how it is rebuilt (`config`): "
                         f"{type(model).__name__} is not a registered model class (atrous.models.register_model)")
    meta = {**default_meta(model.num_classes), **model.meta, **meta}
    if len(meta["class_names"]) != model.num_classes:
        raise ValueError(f"{len(meta['class_names'])} class names for a model of {model.num_classes} classes")
    header = {"format": FORMAT_VERSION, "model": model.config, "meta": meta}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"atrous": json.dumps(header)}
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def default_meta(num_classes: int) -> dict[str, Any]:
    """What a checkpoint of a model never trained by atrous' engine still carries."""
    from atrous.data import IMAGENET_MEAN, IMAGENET_STD, default_palette

    return {
        "class_names": [f"class_{i}" for i in range(num_classes)],
        "palette": [list(c) for c in default_palette(num_classes)],
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }


def read_checkpoint_header(path: str) -> dict[str, Any]:
    """The parsed "atrous" header of a checkpoint, with one-line errors for bad files."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable .safetensors checkpoint ({err})") from err
    if "atrous" not in metadata:
        raise UserError(f"{path} is a safetensors file but not an atrous checkpoint (no 'atrous' metadata)")
    try:
        header = json.loads(metadata["atrous"])
        header["model"]["name"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{path}: the checkpoint's metadata is damaged ({err})") from err
    if header.get("format", 0) > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer atrous (format {header['format']}); upgrade atrous")
    return header


def load_checkpoint(path: str, map_location: str | torch.device = "cpu", *,
                    output_stride: int | None = None) -> SegmentationModel:
    """Rebuild the model saved at `path` (architecture, options, weights, meta); `path` may
    also be a pretrained folder or a Hub repo id (atrous.checkpoints.pretrained). A `.onnx`
    file written by `atrous export` (fp32 or int8) comes back as an onnxruntime-backed
    model with the same interface and metadata (atrous.checkpoints.onnx_model), an OpenVINO
    IR's `.xml` an OpenVINO-backed one (atrous.checkpoints.openvino_model)."""
    if os.path.splitext(path)[1].lower() == ".onnx":
        from atrous.checkpoints.onnx_model import load_onnx_model

        return load_onnx_model(path)
    if os.path.splitext(path)[1].lower() == ".xml":
        from atrous.checkpoints.openvino_model import load_openvino_model

        return load_openvino_model(path)
    if os.path.isdir(path) or is_repo_id(path):  # a pretrained folder or a Hub repository
        path = resolve_source(path)
    header = read_checkpoint_header(path)
    config = header["model"]
    state = load_file(path, device=str(map_location))
    try:
        model = create_model(
            config["name"],
            config["num_classes"],
            in_channels=config.get("in_channels", 3),
            backbone=config.get("backbone"),
            output_stride=config.get("output_stride"),
            **options_for_weights(config["name"], config.get("options", {}), set(state)),
        )
    except (ValueError, TypeError) as err:
        raise UserError(f"{path}: cannot rebuild model '{config['name']}': {err}") from err
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise UserError(f"{path}: weights do not fit model '{config['name']}': {detail}") from err
    model.meta = header.get("meta", {})
    if output_stride is not None and output_stride != config.get("output_stride"):
        try:
            model.set_output_stride(output_stride)
        except ValueError as err:
            raise UserError(f"output_stride {output_stride}: {err}", argument="output_stride") from err
    return model.eval()
