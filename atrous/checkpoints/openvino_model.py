"""An OpenVINO IR (`atrous export --format openvino`: a .xml beside its .bin, fp32 or int8)
as a segmentation model: `load_checkpoint("m.xml")`; a model converted to OpenVINO in
memory (`on_openvino`, the engine "openvino": atrous.checkpoints.engines).

`OpenVinoModel` wraps an `ov.Model` as `OnnxModel` wraps an onnxruntime session (the
interface of atrous.checkpoints.exported.ExportedModel: the export's header, `model(x)`
taking (N, C, H, W) normalised float images to (N, K, H, W) float32 logits), so evaluation,
prediction, serving and `atrous.infer` run it as any other model. OpenVINO compiles the
graph for the CPU with torch's thread count and an inference precision: "fp32" keeps f32
arithmetic (OpenVINO's `INFERENCE_PRECISION_HINT` f32), "bf16" lets OpenVINO run in bf16
where the CPU has it (its default on such CPUs). `model(x)` runs at `model.arithmetic`
("fp32" unless set); the inference path asks for the precision it resolved through
`at_precision` (atrous.inference.infer.InferenceModel). One compiled model is kept per
(arithmetic, threads); each call makes its own infer request, so concurrent calls are safe.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from torch import nn

from atrous.checkpoints.exported import (
    OPENVINO_KEY,
    ExportedModel,
    first_line,
    quiet_warnings,
    read_export_metadata,
)
from atrous.errors import UserError
from atrous.models import SegmentationModel

OPENVINO_EXTRA = "pip install 'atrous[openvino]'"
_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}  # atrous precision -> OpenVINO's hint
CHECK_TOLERANCE = 1e-4  # the converted graph's largest difference from the eager model, relative


def require_openvino(purpose: str, argument: str | tuple[str, ...] | None = None) -> Any:
    """The openvino module, or a one-line UserError naming the extra (and the `argument`
    that asked for it)."""
    try:
        import openvino
    except ImportError as err:
        raise UserError(f"{purpose} needs OpenVINO: {OPENVINO_EXTRA}", argument=argument) from err
    return openvino


class OpenVinoModel(ExportedModel):
    """An `ov.Model` (read from `path`, or converted in memory) behind the model interface;
    `header` is its atrous metadata."""

    def __init__(self, path: str, header: dict[str, Any], graph: Any, arithmetic: str = "fp32") -> None:
        super().__init__(path, header)
        self.graph = graph  # ov.Model
        self.arithmetic = arithmetic
        self._compiled: dict[tuple[str, int], Any] = {}

    def compiled(self, arithmetic: str | None = None) -> Any:
        """The graph compiled for the CPU at `arithmetic` (default `self.arithmetic`) and
        torch's current thread count (ov.CompiledModel), made once per pair."""
        arithmetic = arithmetic or self.arithmetic
        if arithmetic not in _HINTS:
            raise ValueError(f"arithmetic must be one of {', '.join(_HINTS)}, got {arithmetic!r}")
        key = (arithmetic, torch.get_num_threads())
        if key not in self._compiled:
            import openvino as ov

            config = {"INFERENCE_PRECISION_HINT": _HINTS[arithmetic], "INFERENCE_NUM_THREADS": key[1],
                      "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
            try:
                self._compiled[key] = ov.Core().compile_model(self.graph, "CPU", config)
            except RuntimeError as err:
                raise UserError(f"{self.path}: OpenVINO cannot compile it ({first_line(err)})") from err
        return self._compiled[key]

    def run_numpy(self, batch: np.ndarray, arithmetic: str | None = None) -> np.ndarray:
        request = self.compiled(arithmetic).create_infer_request()
        request.infer({0: batch})
        return request.get_output_tensor(0).data.copy()

    def at_precision(self, precision: str) -> nn.Module:
        """This model running at `precision`'s arithmetic ("fp32", "bf16" or "fp16"): what
        the inference path runs instead of autocast."""
        return _AtArithmetic(self, precision)

    def precision_run(self, asked: str) -> str:
        """int8 where the graph is quantized, else what the inference path asked for."""
        return "int8" if self.precision == "int8" else asked

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, arithmetic={self.arithmetic}"


class _AtArithmetic(nn.Module):
    """`model` run at another arithmetic, its compiled graph shared."""

    def __init__(self, model: OpenVinoModel, arithmetic: str) -> None:
        super().__init__()
        self.model, self.arithmetic = model, arithmetic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.logits(x, arithmetic=self.arithmetic)


def convert_to_openvino(model: SegmentationModel, header: dict[str, Any], *, example_size: tuple[int, int],
                        dynamic: bool = True) -> Any:
    """`model` as an `ov.Model` (`openvino.convert_model` of its trace), `header` in its
    rt_info under "atrous". Dynamic: traced at a size that is not a multiple of the model's
    divisor (the trace then records the padding; see atrous.deployment.export._trace), free
    batch, height and width, and checked against the eager model at two other sizes with a
    batch of two; else exactly (1, C, *example_size)."""
    training = model.training
    try:
        return _convert(model.eval(), header, example_size=example_size, dynamic=dynamic)
    finally:
        model.train(training)  # the user's model keeps its mode


def _convert(model: SegmentationModel, header: dict[str, Any], *, example_size: tuple[int, int],
             dynamic: bool) -> Any:
    ov = require_openvino("converting a model to OpenVINO")
    height, width = example_size
    if dynamic and height % model.divisor == 0 and width % model.divisor == 0:
        height += 1
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(1, model.in_channels, height, width, generator=generator)
    name = (model.config or {}).get("name") or type(model).__name__
    try:
        with quiet_warnings(), torch.no_grad():
            graph = ov.convert_model(model, example_input=example,
                                     input=None if dynamic else [tuple(example.shape)])
    except Exception as err:  # the tracer's and OpenVINO's conversion errors
        raise UserError(f"model '{name}' cannot be converted to OpenVINO: {first_line(err)}") from err
    graph.set_rt_info(json.dumps(header), OPENVINO_KEY)
    if dynamic:
        converted = OpenVinoModel("<converted>", header, graph)
        for size in [(37, 53), (model.divisor, 2 * model.divisor)]:
            other = torch.randn(2, model.in_channels, *size, generator=generator)
            with torch.no_grad():
                expected, got = model(other), converted(other)
            scale = max(1.0, expected.abs().max().item())
            if got.shape != expected.shape or (got - expected).abs().max().item() > CHECK_TOLERANCE * scale:
                raise UserError(f"model '{name}' converted to OpenVINO at {height}x{width} does not give the same "
                                f"logits at {size[0]}x{size[1]}; export it with dynamic=False at the size you need",
                                argument="dynamic")
    return graph


def on_openvino(model: SegmentationModel) -> OpenVinoModel:
    """`model` converted in memory and run by OpenVINO (the engine "openvino" of a
    checkpoint): free input size, its config and meta kept."""
    if isinstance(model, OpenVinoModel):
        return model
    size = (4 * model.divisor + 1, 5 * model.divisor + 1)  # small: the trace runs the model once
    header = {"model": dict(model.config or {"num_classes": model.num_classes}), "meta": dict(model.meta),
              "export": {"num_classes": model.num_classes, "in_channels": model.in_channels, "dynamic": True,
                         "size": None, "precision": "fp32"}}
    return OpenVinoModel("<converted>", header, convert_to_openvino(model, header, example_size=size)).eval()


def load_openvino_model(path: str) -> OpenVinoModel:
    """`path` (a .xml written by `atrous export --format openvino`, fp32 or int8; its .bin
    beside it) as an `OpenVinoModel`."""
    header = read_export_metadata(path)
    ov = require_openvino(f"running {path}")
    try:
        graph = ov.Core().read_model(path)
    except RuntimeError as err:
        raise UserError(f"{path}: OpenVINO cannot read it ({first_line(err)})") from err
    return OpenVinoModel(path, header, graph).eval()
