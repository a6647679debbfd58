"""An exported ONNX file (fp32 or int8) as a segmentation model: `load_checkpoint("m.onnx")`.

`OnnxModel` wraps an onnxruntime session in an nn.Module that carries the export's header
(`num_classes`, `in_channels`, `config`, `meta`: class names, palette, normalisation), so
evaluation, prediction and `atrous.infer` treat it as any other model: `model(x)` takes
(N, C, H, W) normalised float images and returns (N, K, H, W) float32 logits on x's device.
The session runs on the CPU with torch's thread count. The graph fixes its own precision
(int8 where quantized): autocast, channels-last and batch-norm folding asked of it by the
inference path change nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from atrous.checkpoints.exported import INPUT_NAME, first_line, read_export_metadata
from atrous.errors import UserError
from atrous.models import SegmentationModel


class OnnxModel(SegmentationModel):
    """`path`'s ONNX graph behind the model interface; `header` is its atrous metadata."""

    def __init__(self, path: str, header: dict[str, Any], session: Any) -> None:
        graph = header.get("export", {})
        super().__init__(int(graph.get("num_classes") or header["model"]["num_classes"]),
                         int(graph.get("in_channels") or header["model"].get("in_channels", 3)))
        self.path = path
        self.config = dict(header["model"])
        self.meta = dict(header.get("meta", {}))
        self.export_info = dict(graph)
        self.session = session
        # no weights live in torch; an empty parameter tells the device to code that asks
        # `next(model.parameters()).device`
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    @property
    def precision(self) -> str:
        return self.export_info.get("precision", "fp32")

    def forward(self, x: torch.Tensor, return_aux: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        self._check_input(x)
        size = self.export_info.get("size")
        if size and list(x.shape[-2:]) != list(size):
            raise UserError(f"{self.path} takes {size[0]}x{size[1]} images only (a --static export), "
                            f"got {x.shape[-2]}x{x.shape[-1]}")
        batches = [x] if not size else list(x.split(1))  # a static graph takes a batch of one
        inputs = [b.detach().float().contiguous().cpu().numpy() for b in batches]
        logits = torch.cat([torch.from_numpy(self.session.run(None, {INPUT_NAME: i})[0]) for i in inputs])
        logits = logits.to(x.device)
        return {"out": logits} if return_aux else logits

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxModel:
        """The session holds no state that running changes: a copy shares it."""
        return self

    def extra_repr(self) -> str:
        return f"path={self.path!r}, precision={self.precision}"


def load_onnx_model(path: str) -> OnnxModel:
    """`path` (written by `atrous export`, fp32 or --int8) as an `OnnxModel`."""
    header = read_export_metadata(path)
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise UserError(f"running {path} needs onnxruntime: pip install onnxruntime") from err
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    try:
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own exceptions: a damaged or unsupported graph
        raise UserError(f"{path}: onnxruntime cannot load it ({first_line(err)})") from err
    return OnnxModel(path, header, session).eval()

