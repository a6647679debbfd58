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

import numpy as np
import torch

from atrous.checkpoints.exported import INPUT_NAME, ExportedModel, first_line, read_export_metadata
from atrous.errors import UserError


class OnnxModel(ExportedModel):
    """`path`'s ONNX graph behind the model interface; `header` is its atrous metadata."""

    def __init__(self, path: str, header: dict[str, Any], session: Any) -> None:
        super().__init__(path, header)
        self.session = session

    def run_numpy(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {INPUT_NAME: batch})[0]


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

