"""Export a model to ONNX or TorchScript, with the checkpoint's metadata inside the file
(OpenVINO's IR: atrous.deployment.openvino).

Both formats come from one `torch.jit.trace` of the model in eval mode (for ONNX through
torch's TorchScript-based exporter, `dynamo=False`). The traced graph takes (N, C, H, W)
float input, normalised as in training (`(pixel / 255 - mean) / std`), and returns
(N, num_classes, H, W) logits. With `dynamic=True` the trace keeps the shape arithmetic
of the base class (pad to the divisor, upsample, crop back), so any batch size, height and
width work; the trace is checked against the eager model at other sizes before anything is
written. With `dynamic=False` the graph takes exactly (1, C, H, W).

The metadata is the checkpoint header, `{"format", "model", "meta"}`, as JSON: in ONNX under
the metadata_props key "atrous" (with "class_names", "palette", "mean", "std", "task" (multiclass:
softmax over the logits; binary, multilabel: a sigmoid on each), "threshold" (binary and
multilabel) and "model" also under their own keys for deployers), in TorchScript as the extra
file "atrous.json".
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch

from atrous.checkpoints.checkpoint import FORMAT_VERSION, default_meta, load_checkpoint
from atrous.checkpoints.exported import (  # noqa: F401  (read_export_metadata: also read here)
    EXTRA_FILE,
    INPUT_NAME,
    OUTPUT_NAME,
    first_line,
    quiet_warnings,
    read_export_metadata,
)
from atrous.errors import UserError
from atrous.models import SegmentationModel
from atrous.outputs import write_atomic

FORMATS = ("onnx", "torchscript", "openvino")
SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".torchscript": "torchscript", ".xml": "openvino"}
DEFAULT_OPSET = 17
# 11: Resize with half-pixel coordinates (bilinear, align_corners=False); 20: the newest
# opset of torch's TorchScript-based exporter
OPSETS = range(11, 21)
DEFAULT_SIZE = (512, 512)
_CHECK_TOLERANCE = 1e-4


def format_from_path(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise UserError(f"cannot tell the export format from '{path}' (use .onnx, .xml, .pt or .torchscript, "
                        "or give format onnx|openvino|torchscript|pretrained)", argument="format")
    return SUFFIXES[suffix]


def export_header(model: SegmentationModel, *, dynamic: bool, example_size: tuple[int, int]) -> dict[str, Any]:
    """The checkpoint header of `model` plus how the exported graph is called."""
    meta = {**default_meta(model.num_classes), **model.meta}
    graph = {
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "layout": "NCHW float32, (pixel / 255 - mean) / std",
        "in_channels": model.in_channels,
        "num_classes": model.num_classes,
        "dynamic": dynamic,
        "size": None if dynamic else list(example_size),
    }
    return {"format": FORMAT_VERSION, "model": model.config, "meta": meta, "export": graph}


def export_onnx(
    model: SegmentationModel,
    path: str,
    *,
    example_size: tuple[int, int] = DEFAULT_SIZE,
    dynamic: bool = True,
    opset: int | None = None,
) -> None:
    """Write `model` as an ONNX file at `path` (atomically). `dynamic`: batch, height and
    width are free; otherwise the graph takes exactly (1, C, *example_size)."""
    try:
        import onnx
    except ImportError as err:
        raise UserError("ONNX export needs the 'onnx' package: pip install 'atrous[export]'") from err
    opset = DEFAULT_OPSET if opset is None else opset
    if opset not in OPSETS:
        raise UserError(f"opset must be between {OPSETS[0]} and {OPSETS[-1]}, got {opset}", argument="opset")
    traced, example = _trace(model, example_size, dynamic=dynamic)
    header = export_header(model, dynamic=dynamic, example_size=example_size)
    axes = {0: "batch", 2: "height", 3: "width"}

    def write(tmp: str) -> None:
        with _native_output_discarded():
            torch.onnx.export(traced, (example,), tmp, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes} if dynamic else None)
        proto = onnx.load(tmp)
        onnx.helper.set_model_props(proto, _metadata_props(header))
        proto.producer_name = "atrous"
        proto.doc_string = f"atrous {_model_name(model)}: {header['export']['layout']} -> logits"
        onnx.save(proto, tmp)

    _write(model, path, "ONNX", write)


def export_torchscript(
    model: SegmentationModel,
    path: str,
    *,
    example_size: tuple[int, int] = DEFAULT_SIZE,
    dynamic: bool = True,
) -> None:
    """Write `model` as a traced TorchScript file at `path` (atomically), its header in the
    extra file "atrous.json". `dynamic`: the trace is checked at a second size."""
    traced, _ = _trace(model, example_size, dynamic=dynamic)
    header = export_header(model, dynamic=dynamic, example_size=example_size)
    extra = {EXTRA_FILE: json.dumps(header)}
    _write(model, path, "TorchScript", lambda tmp: torch.jit.save(traced, tmp, _extra_files=extra))


def run_export(
    checkpoint: str,
    out: str,
    *,
    fmt: str | None = None,
    example_size: tuple[int, int] = DEFAULT_SIZE,
    dynamic: bool = True,
    opset: int | None = None,
) -> str:
    """`atrous export`: load `checkpoint`, write `out` in `fmt` (default: from the suffix).
    Returns the format written."""
    check_out(checkpoint, out)
    fmt = fmt or format_from_path(out)
    if fmt not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)}, got '{fmt}'", argument="format")
    if fmt == "openvino":  # written by atrous.deployment.openvino.run_export_openvino
        raise UserError("format openvino is written by atrous.deployment.openvino.run_export_openvino",
                        argument="format")
    if min(example_size) < 1:
        raise UserError(f"example_size (height, width) must be at least 1, got {example_size[0]}x{example_size[1]}",
                        argument=("height", "width"))
    if opset is not None and fmt != "onnx":
        raise UserError("opset applies to format onnx only", argument=("opset", "format"))
    make_parent(out)
    model = load_checkpoint(checkpoint)
    if fmt == "onnx":
        export_onnx(model, out, example_size=example_size, dynamic=dynamic, opset=opset)
    else:
        export_torchscript(model, out, example_size=example_size, dynamic=dynamic)
    return fmt


def check_out(checkpoint: str, out: str) -> None:
    """`out` must name a file that is not the checkpoint."""
    if os.path.isdir(out):
        raise UserError(f"out {out} is a folder; give a file name such as {os.path.join(out, 'model.onnx')}",
                        argument="out")
    if os.path.abspath(out) == os.path.abspath(checkpoint):
        raise UserError(f"out {out} would replace the checkpoint", argument="out")


def check_openvino_out(checkpoint: str, out: str) -> None:
    """An OpenVINO IR is a .xml and the .bin of the same name: --out must end in .xml, and
    the .bin must not be the checkpoint."""
    if os.path.splitext(out)[1].lower() != ".xml":
        raise UserError(f"format openvino writes a .xml (and the .bin beside it): give out a .xml name, got {out}",
                        argument=("format", "out"))
    if os.path.abspath(os.path.splitext(out)[0] + ".bin") == os.path.abspath(checkpoint):
        raise UserError(f"out {out} would replace the checkpoint with its .bin", argument="out")


def make_parent(out: str) -> None:
    """Makes --out's folder, failing before the slow part when it cannot be made."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot write {out}: {err.strerror or err}") from err


def _model_name(model: SegmentationModel) -> str:
    return (model.config or {}).get("name") or type(model).__name__


def _trace(
    model: SegmentationModel, example_size: tuple[int, int], *, dynamic: bool
) -> tuple[torch.jit.ScriptModule, torch.Tensor]:
    """The eval-mode trace of `model` and the input it was traced on.

    Static: traced on (1, C, *example_size). Dynamic: on a size that is not a multiple of
    the model's divisor, so that the trace records the base class's padding (`F.pad` by
    amounts computed from the input's size; a multiple would skip it and the graph would
    serve multiples only), and the trace must then give the eager model's logits at an odd
    size and at a multiple of the divisor, with a batch of two."""
    model = model.eval().cpu()
    generator = torch.Generator().manual_seed(0)
    height, width = example_size
    if dynamic and height % model.divisor == 0 and width % model.divisor == 0:
        height += 1
    example = torch.randn(1, model.in_channels, height, width, generator=generator)
    name = _model_name(model)
    try:
        with quiet_warnings(), torch.no_grad():
            traced = torch.jit.trace(model, (example,), check_trace=False)
    except Exception as err:
        raise UserError(f"model '{name}' cannot be traced for export: {first_line(err)}") from err
    if dynamic:
        for size in [(37, 53), (model.divisor, 2 * model.divisor)]:
            other = torch.randn(2, model.in_channels, *size, generator=generator)
            with torch.no_grad():
                expected, got = model(other), traced(other)
            scale = max(1.0, expected.abs().max().item())  # rounding grows with the logits
            if got.shape != expected.shape or (got - expected).abs().max().item() > _CHECK_TOLERANCE * scale:
                raise UserError(f"model '{name}' traced at {height}x{width} does not give the same logits at "
                                f"{size[0]}x{size[1]}; export it with dynamic=False at the size you need",
                                argument="dynamic")
    return traced, example


def _write(model: SegmentationModel, path: str, kind: str, write: Callable[[str], None]) -> None:
    try:
        with quiet_warnings():
            write_atomic(path, write)
    except UserError:
        raise
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from err
    except Exception as err:  # the exporter's own errors: unsupported operators, opsets, ...
        raise UserError(f"model '{_model_name(model)}' cannot be exported to {kind}: {first_line(err)}") from err


def _metadata_props(header: dict[str, Any]) -> dict[str, str]:
    meta = header["meta"]
    props = {"atrous": json.dumps(header), "model": json.dumps(header["model"])}
    props.update({key: json.dumps(meta[key]) for key in ("class_names", "palette", "mean", "std", "task", "threshold")
                  if key in meta})
    return props


@contextlib.contextmanager
def _native_output_discarded() -> Iterator[None]:
    """Sends file descriptors 1 and 2 to /dev/null: torch's TorchScript-based exporter prints
    the whole graph from C++ when a conversion fails (its log switch stays on in torch 2.x),
    and the failure is reported in one line instead."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        ctypes.CDLL(None).fflush(None)  # C stdio buffers (std::cout) may still hold the dump
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


