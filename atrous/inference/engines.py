"""Which engine runs the model: PyTorch, OpenVINO or onnxruntime (`--engine`), chosen by hand
or automatically among the installed ones.

- "torch": the checkpoint's PyTorch model through atrous.infer (batch norm folded, bf16
  autocast and channels-last at precision auto on a CPU with native bf16).
- "openvino": a checkpoint converted in memory to an OpenVINO graph at load (its trace,
  checked against the eager model: a few seconds for a ResNet-50 model), an exported ONNX
  file read by OpenVINO, or an OpenVINO IR (.xml); OpenVINO computes in bf16 where
  `--precision` resolves to bf16, in f32 at fp32. CPU only.
- "onnxruntime": an exported .onnx file (fp32 or int8) run by onnxruntime (a checkpoint must
  be exported first: `atrous export`). CPU only.
- "auto" (the default of the commands): an exported file runs in its own runtime (.onnx in
  onnxruntime, .xml in OpenVINO); a checkpoint runs in PyTorch. Converting a checkpoint to
  OpenVINO at load takes seconds (about 10 s for a ResNet-50 DeepLab v3+ on one core) that its
  per-image gain over PyTorch's bf16 path (within 10 %: docs/inference.md) repays only over
  hundreds of images; to deploy on OpenVINO, export once (`atrous export --format openvino`)
  and run the .xml, which auto runs in OpenVINO.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from atrous.checkpoints.exported import ExportedModel
from atrous.checkpoints.onnx_model import OnnxModel
from atrous.checkpoints.openvino_model import OpenVinoModel, load_openvino_model, on_openvino
from atrous.errors import UserError
from atrous.options import option

ENGINES = ("auto", "torch", "openvino", "onnxruntime")


def engine_option() -> Any:
    """The `--engine` option of eval, predict and serve, declared once."""
    return option("auto", "what runs the model: torch, openvino (a checkpoint converted at load, an .onnx or "
                  ".xml file), onnxruntime (.onnx files); auto: an exported file's own runtime, torch for a "
                  "checkpoint", choices=ENGINES)


def resolve_engine(engine: str, model: nn.Module, precision: str = "auto") -> str:
    """The engine that runs `model` when `engine` is asked for ("auto" resolved)."""
    if engine not in ENGINES:
        raise UserError(f"engine must be one of {', '.join(ENGINES)}, got '{engine}'", argument="engine")
    if engine != "auto":
        return engine
    if isinstance(model, OpenVinoModel):
        return "openvino"
    if isinstance(model, OnnxModel):
        return "onnxruntime"
    return "torch"  # a checkpoint: converting it at every load costs more than it saves (see the docstring)


def on_engine(model: nn.Module, engine: str = "auto", precision: str = "auto") -> nn.Module:
    """`model` (a checkpoint's model or an exported file's) as the engine `engine` runs it:
    the model itself, or a model of the same interface backed by that engine."""
    chosen = resolve_engine(engine, model, precision)
    if chosen != "torch" and _device(model).type != "cpu":
        raise UserError(f"engine {chosen} runs on the CPU only; give device cpu or engine torch", argument="engine")
    if chosen == "torch":
        if isinstance(model, ExportedModel):
            raise UserError(f"{model.path} is an exported graph: engine torch runs checkpoints (.safetensors); "
                            "use engine auto, openvino or onnxruntime", argument="engine")
        return model
    if chosen == "onnxruntime":
        if not isinstance(model, OnnxModel):
            raise UserError("engine onnxruntime runs .onnx files: export the checkpoint to a .onnx file first "
                            "(`atrous export`) or use engine openvino", argument="engine")
        return model
    if isinstance(model, OpenVinoModel):
        return model
    if isinstance(model, OnnxModel):
        return load_openvino_model(model.path)  # OpenVINO reads ONNX
    return on_openvino(model)


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
