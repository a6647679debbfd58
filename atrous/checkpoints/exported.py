"""Reading back what `atrous export` wrote: the metadata embedded in an ONNX or TorchScript
file, and the names of the exported graph's input and output."""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import torch

from atrous.errors import UserError

EXTRA_FILE = "atrous.json"


INPUT_NAME, OUTPUT_NAME = "input", "logits"


def read_export_metadata(path: str) -> dict[str, Any]:
    """The header embedded by `export_onnx` / `export_torchscript` in `path` (either format,
    whatever its suffix: a TorchScript file is a zip archive)."""
    import zipfile

    if not os.path.isfile(path):
        raise UserError(f"exported model not found: {path}")
    if not zipfile.is_zipfile(path):
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

