"""Reading back what `atrous export` wrote: the metadata embedded in an ONNX, OpenVINO IR or
TorchScript file, the names of the exported graph's input and output, and `ExportedModel`,
the model interface that the runtimes' wrappers (onnxruntime, OpenVINO) share."""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from atrous.errors import UserError
from atrous.models import SegmentationModel

EXTRA_FILE = "atrous.json"


INPUT_NAME, OUTPUT_NAME = "input", "logits"


def read_export_metadata(path: str) -> dict[str, Any]:
    """The header embedded by `export_onnx` / `export_openvino` / `export_torchscript` in
    `path` (ONNX or TorchScript whatever the suffix: a TorchScript file is a zip archive; an
    OpenVINO IR is a .xml file, read without openvino)."""
    import zipfile

    if not os.path.isfile(path):
        raise UserError(f"exported model not found: {path}")
    if os.path.splitext(path)[1].lower() == ".xml":
        text = _openvino_metadata(path)
    elif not zipfile.is_zipfile(path):
        import onnx

        try:
            proto = onnx.load(path, load_external_data=False)
        except Exception as err:  # protobuf's DecodeError and the like
            raise UserError(f"{path} is neither an ONNX file nor a TorchScript archive ({first_line(err)})") from err
        text = {p.key: p.value for p in proto.metadata_props}.get("atrous")
    else:
        extra = {EXTRA_FILE: ""}
        with quiet_warnings():
            torch.jit.load(path, map_location="cpu", _extra_files=extra)
        text = extra[EXTRA_FILE]
    if not text:
        raise UserError(f"{path} holds no atrous metadata")
    return json.loads(text)


def _openvino_metadata(path: str) -> str | None:
    """The "atrous" entry of an OpenVINO IR's rt_info (ov.Model.set_rt_info writes
    `<rt_info><atrous value="..."/></rt_info>` at the end of the .xml)."""
    import xml.etree.ElementTree as ElementTree

    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as err:
        raise UserError(f"{path} is not an OpenVINO IR (.xml): {first_line(err)}") from err
    entry = root.find(f"./rt_info/{OPENVINO_KEY}")
    return None if entry is None else entry.get("value")


OPENVINO_KEY = "atrous"  # the rt_info entry of an OpenVINO IR that holds the header


class ExportedModel(SegmentationModel):
    """An exported graph behind the model interface, run by another engine; `header` is its
    atrous metadata (`num_classes`, `in_channels`, `config`, `meta`: class names, palette,
    normalisation). `model(x)` takes (N, C, H, W) normalised float images and returns
    (N, K, H, W) float32 logits on x's device; subclasses run one batch in `run_numpy`."""

    def __init__(self, path: str, header: dict[str, Any]) -> None:
        graph = header.get("export", {})
        super().__init__(int(graph.get("num_classes") or header["model"]["num_classes"]),
                         int(graph.get("in_channels") or header["model"].get("in_channels", 3)))
        self.path = path
        self.config = dict(header["model"])
        self.meta = dict(header.get("meta", {}))
        self.export_info = dict(graph)
        # no weights live in torch; an empty parameter tells the device to code that asks
        # `next(model.parameters()).device`
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    @property
    def precision(self) -> str:
        """What the graph stores: "fp32", or "int8" (quantized)."""
        return self.export_info.get("precision", "fp32")

    def run_numpy(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> (N, K, H, W) float32 logits."""
        raise NotImplementedError

    def precision_run(self, asked: str) -> str:
        """The precision that runs when `asked` is: the graph's own (onnxruntime computes
        what the graph stores)."""
        return self.precision

    def forward(self, x: torch.Tensor, return_aux: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        logits = self.logits(x)
        return {"out": logits} if return_aux else logits

    def logits(self, x: torch.Tensor, **run: Any) -> torch.Tensor:
        """(N, C, H, W) -> (N, K, H, W) on x's device, through `run_numpy(batch, **run)`."""
        self._check_input(x)
        size = self.export_info.get("size")
        if size and list(x.shape[-2:]) != list(size):
            raise UserError(f"{self.path} takes {size[0]}x{size[1]} images only (a static export), "
                            f"got {x.shape[-2]}x{x.shape[-1]}")
        batches = [x] if not size else list(x.split(1))  # a static graph takes a batch of one
        inputs = [b.detach().float().contiguous().cpu().numpy() for b in batches]
        return torch.cat([torch.from_numpy(self.run_numpy(i, **run)) for i in inputs]).to(x.device)

    def __deepcopy__(self, memo: dict[int, Any]) -> ExportedModel:
        """The engine's session holds no state that running changes: a copy shares it."""
        return self

    def extra_repr(self) -> str:
        return f"path={self.path!r}, precision={self.precision}"


def first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


class quiet_warnings(warnings.catch_warnings):
    """Silences the tracer's warnings (the trace is checked instead) and the exporters'
    deprecation notices, which a user of `atrous export` cannot act on."""

    def __enter__(self) -> None:
        super().__enter__()
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "no signature found for", UserWarning)  # a ScriptModule to ONNX
        warnings.filterwarnings("ignore", module=r"torch\.onnx")

