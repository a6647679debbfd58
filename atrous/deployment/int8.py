"""int8 export: ONNX Runtime's static quantization of the exported graph, calibrated on a few
training images.

The fp32 graph (`export_onnx`, free batch, height and width) is prepared by onnxruntime's
`quant_pre_process` (shape inference, batch norm folded into the convolutions), its
activation ranges are measured on `--calibrate-images` images of the training split, spread
evenly over it, and it is rewritten in QDQ form: weights int8 per output channel, activations
uint8 per tensor (the U8S8 pair that onnxruntime runs with VNNI instructions on x86). The
result is checked against the fp32 model before the file is written: logits of the right
shape at the calibration size and at an odd size, and labels agreeing on at least
`MIN_AGREEMENT` of the pixels of a calibration image.

Why onnxruntime and not PyTorch's PT2E x86 quantizer: both were measured on the same CamVid
checkpoint (benchmarks/int8_backends.py, docs/benchmarks.md); see there for the figures.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from atrous.checkpoints.checkpoint import load_checkpoint
from atrous.checkpoints.exported import INPUT_NAME, first_line, quiet_warnings
from atrous.checkpoints.meta import normalisation
from atrous.data import build_dataset, eval_transform
from atrous.deployment.export import (
    _metadata_props,
    _write,
    check_out,
    export_header,
    export_onnx,
    format_from_path,
    make_parent,
)
from atrous.errors import UserError
from atrous.models import SegmentationModel

DEFAULT_CALIBRATION_IMAGES = 32
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_CALIBRATION_METHOD = "minmax"
MIN_AGREEMENT = 0.9  # labels of the int8 graph that must equal fp32's on a calibration image


def calibration_images(
    dataset: torch.utils.data.Dataset, count: int, mean: Sequence[float], std: Sequence[float]
) -> list[torch.Tensor]:
    """`count` images of `dataset` spread evenly over it, each (1, C, H, W) float32,
    normalised as the model expects."""
    if count < 1:
        raise UserError(f"calibrate_images must be at least 1, got {count}", argument="calibrate_images")
    if len(dataset) == 0:
        raise UserError("the calibration dataset has no images")
    normalise = eval_transform(mean, std)
    indices = np.unique(np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int))
    images = []
    for index in indices:
        image, mask = dataset[int(index)]
        images.append(normalise(image, mask, None)[0][None].float())
    return images


def quantize_header(model: SegmentationModel, images: Sequence[torch.Tensor], method: str,
                    source: str) -> dict[str, Any]:
    """The export header of the int8 graph: how it was made and calibrated."""
    header = export_header(model, dynamic=True, example_size=tuple(images[0].shape[-2:]))
    header["export"]["precision"] = "int8"
    header["export"]["quantization"] = {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "weights": "int8, per output channel",
        "activations": "uint8, per tensor",
        "calibration": {"method": method, "images": len(images), "source": source},
    }
    return header


def export_int8(
    model: SegmentationModel,
    path: str,
    images: Sequence[torch.Tensor],
    *,
    method: str = DEFAULT_CALIBRATION_METHOD,
    opset: int | None = None,
    source: str = "",
    min_agreement: float = MIN_AGREEMENT,
) -> float:
    """Write `model` as an int8 ONNX graph at `path` (atomically), calibrated on `images`.
    Returns the label agreement with the fp32 model on the first image, checked to be at
    least `min_agreement` first (an untrained model's labels are near ties: 0 skips it)."""
    _check_method(method)
    onnx = _require_onnx_tools()
    model = model.eval().cpu()
    header = quantize_header(model, images, method, source)
    agreement = 0.0
    with tempfile.TemporaryDirectory(prefix="atrous-int8-") as folder:
        fp32 = os.path.join(folder, "fp32.onnx")
        export_onnx(model, fp32, example_size=tuple(images[0].shape[-2:]), dynamic=True, opset=opset)
        prepared = os.path.join(folder, "prepared.onnx")
        with _silenced():
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(fp32, prepared)

        def write(tmp: str) -> None:
            nonlocal agreement
            with _silenced():
                _quantize(prepared, tmp, images, method)
            proto = onnx.load(tmp)
            onnx.helper.set_model_props(proto, _metadata_props(header))
            proto.producer_name = "atrous"
            proto.doc_string = f"atrous {header['model'].get('name')} int8: {header['export']['layout']} -> logits"
            onnx.save(proto, tmp)
            agreement = check_int8(model, tmp, images[0], min_agreement)

        _write(model, path, "int8 ONNX", write)
    return agreement


def check_int8(model: SegmentationModel, path: str, image: torch.Tensor, min_agreement: float = MIN_AGREEMENT) -> float:
    """The int8 graph at `path` against the fp32 `model`: same logits shape at the image's
    size and at an odd crop of it, labels agreeing on at least `min_agreement` of the pixels.
    Returns the agreement; a UserError when a check fails."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    height, width = image.shape[-2:]
    odd = image[..., : max(1, (height - 7) | 1), : max(1, (width - 11) | 1)]  # odd sides, smaller
    agreement = 1.0
    for x in (image, odd):
        with torch.no_grad():
            expected = model(x)
        got = torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])
        if got.shape != expected.shape:
            raise UserError(f"the int8 graph gives logits of shape {tuple(got.shape)} at {x.shape[-2]}x{x.shape[-1]}, "
                            f"not {tuple(expected.shape)}; nothing written")
        if x is image:
            agreement = (got.argmax(1) == expected.argmax(1)).float().mean().item()
    if agreement < min_agreement:
        raise UserError(f"the int8 graph's labels agree with fp32 on only {100 * agreement:.1f}% of a calibration "
                        f"image's pixels (at least {100 * min_agreement:.0f}% needed); nothing written")
    return agreement


def run_export_int8(
    checkpoint: str,
    out: str,
    *,
    dataset: str | None,
    data_root: str | None = None,
    images: int = DEFAULT_CALIBRATION_IMAGES,
    method: str = DEFAULT_CALIBRATION_METHOD,
    fmt: str | None = None,
    dynamic: bool = True,
    opset: int | None = None,
) -> float:
    """`atrous export --int8`: checks the options, loads `checkpoint`, calibrates on
    `images` images of `dataset`'s training split, writes `out`. Returns the agreement."""
    if not dataset:
        raise UserError("int8 needs calibrate_dataset (the training set whose images set the int8 ranges)",
                        argument=("int8", "calibrate_dataset"))
    if (fmt or format_from_path(out)) != "onnx":
        raise UserError("int8 writes ONNX or OpenVINO: give out a .onnx or .xml name (or format onnx or openvino)",
                        argument=("int8", "out", "format"))
    if not dynamic:
        raise UserError("int8 writes a graph of free size; drop dynamic=False", argument=("int8", "dynamic"))
    _check_method(method)
    if images < 1:
        raise UserError(f"calibrate_images must be at least 1, got {images}", argument="calibrate_images")
    check_out(checkpoint, out)
    _require_onnx_tools()
    make_parent(out)
    model = load_checkpoint(checkpoint)
    mean, std = normalisation(model.meta)
    train = build_dataset(dataset, "train", data_root=data_root, num_classes=model.num_classes,
                          task=model.meta.get("task", "multiclass"))
    chosen = calibration_images(train, images, mean, std)
    return export_int8(model, out, chosen, method=method, opset=opset,
                       source=f"{dataset} train, {len(chosen)} of {len(train)} images")


def _check_method(method: str) -> None:
    if method not in CALIBRATION_METHODS:
        raise UserError(f"calibrate_method must be one of {', '.join(CALIBRATION_METHODS)}, got '{method}'",
                        argument="calibrate_method")


def _require_onnx_tools() -> Any:
    """The onnx module, once onnx and onnxruntime are both known to be installed."""
    try:
        import onnx
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise UserError("int8 needs onnx and onnxruntime: pip install 'atrous[export]' onnxruntime",
                        argument="int8") from err
    return onnx


def _quantize(prepared: str, out: str, images: Sequence[torch.Tensor], method: str) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        """The images, one range of them at a time (onnxruntime's strided calibration)."""

        def __init__(self) -> None:
            self.set_range(0, len(images))

        def __len__(self) -> int:
            return len(images)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.pending = iter(images[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(self.pending, None)
            return None if image is None else {INPUT_NAME: image.numpy()}

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    try:
        quantize_static(prepared, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method],
                        # one image at a time, ranges merged: memory stays that of one image
                        # (onnxruntime's CalibMaxIntermediateOutputs drops data instead)
                        extra_options={"CalibStridedMinMax": 1})
    except Exception as err:
        raise UserError(f"onnxruntime could not quantize the graph: {first_line(err)}") from err


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """onnxruntime's quantization tools print progress and shape-inference notes."""
    quiet_loggers = [logging.getLogger(), logging.getLogger("onnxruntime")]
    levels = [lg.level for lg in quiet_loggers]
    for lg in quiet_loggers:
        lg.setLevel(logging.ERROR)
    try:
        with quiet_warnings(), contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(quiet_loggers, levels, strict=True):
            lg.setLevel(level)
