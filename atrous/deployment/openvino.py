"""OpenVINO export: `atrous export --format openvino` (fp32) and `--int8` to a `.xml` (int8 by
NNCF's post-training quantisation), the checkpoint's metadata inside.

The graph is `openvino.convert_model` of the model's trace (free batch, height and width,
checked against the eager model at other sizes, unless `dynamic=False`:
atrous.checkpoints.openvino_model.convert_to_openvino), written as an IR: the `.xml` (topology) and the `.bin` beside it (weights, kept in fp32: OpenVINO's
default fp16 compression is turned off; the CPU picks the arithmetic when it compiles). The
header, `{"format", "model", "meta", "export"}` as JSON, is the IR's rt_info entry "atrous"
(`ov.Model.set_rt_info`), read back without OpenVINO (atrous.checkpoints.exported).

int8: `nncf.quantize` on the converted graph, calibrated on `--calibrate-images` training
images (as the onnxruntime `--int8` path: atrous.deployment.int8), NNCF's defaults
otherwise (the performance preset: symmetric int8 activations and weights, per-channel
weights, fast bias correction). The result is checked against the fp32 model before it is
written: logits of the right shape, labels agreeing on at least `min_agreement` of a
calibration image's pixels.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import torch

from atrous.checkpoints.checkpoint import load_checkpoint
from atrous.checkpoints.exported import OPENVINO_KEY, first_line
from atrous.checkpoints.meta import normalisation
from atrous.checkpoints.openvino_model import OpenVinoModel, convert_to_openvino, require_openvino
from atrous.data import build_dataset
from atrous.deployment.export import (
    DEFAULT_SIZE,
    check_openvino_out,
    check_out,
    export_header,
    make_parent,
)
from atrous.deployment.int8 import DEFAULT_CALIBRATION_IMAGES, _silenced, calibration_images
from atrous.errors import UserError
from atrous.models import SegmentationModel

NNCF_EXTRA = "pip install 'atrous[openvino]'"


def to_openvino(model: SegmentationModel, header: dict[str, Any], *, example_size: tuple[int, int] = DEFAULT_SIZE,
                dynamic: bool = True) -> Any:
    """`model` as an `ov.Model`, `header` in its rt_info (convert_to_openvino)."""
    require_openvino("--format openvino")
    return convert_to_openvino(model, header, example_size=example_size, dynamic=dynamic)


def export_openvino(model: SegmentationModel, path: str, *, example_size: tuple[int, int] = DEFAULT_SIZE,
                    dynamic: bool = True) -> None:
    """Write `model` as an OpenVINO IR at `path` (.xml, its .bin beside it)."""
    header = export_header(model, dynamic=dynamic, example_size=example_size)
    graph = to_openvino(model, header, example_size=example_size, dynamic=dynamic)
    save_ir(graph, path)


def save_ir(graph: Any, xml_path: str) -> None:
    """`graph` as `xml_path` and the .bin of the same name beside it, weights in fp32; the
    .bin is moved into place before the .xml, so that a reader of the .xml finds it."""
    import openvino as ov

    folder = os.path.dirname(os.path.abspath(xml_path))
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".atrous-ir-", dir=folder) as tmp:
            tmp_xml = os.path.join(tmp, "model.xml")
            ov.save_model(graph, tmp_xml, compress_to_fp16=False)
            os.replace(os.path.join(tmp, "model.bin"), os.path.splitext(xml_path)[0] + ".bin")
            os.replace(tmp_xml, xml_path)
    except OSError as err:
        raise UserError(f"cannot write {xml_path}: {err.strerror or err}") from err


def export_openvino_int8(
    model: SegmentationModel,
    path: str,
    images: Sequence[torch.Tensor],
    *,
    source: str = "",
    min_agreement: float = 0.9,
) -> float:
    """Write `model` as an int8 OpenVINO IR at `path`, calibrated on `images` ((1, C, H, W)
    normalised) by NNCF. Returns the label agreement with the fp32 model on the first image,
    checked to be at least `min_agreement` first (0 skips it)."""
    nncf = _require_nncf()
    model = model.eval().cpu()
    header = export_header(model, dynamic=True, example_size=tuple(images[0].shape[-2:]))
    header["export"]["precision"] = "int8"
    header["export"]["quantization"] = {
        "tool": "nncf.quantize", "preset": "performance",
        "weights": "int8, symmetric, per output channel", "activations": "int8, per tensor",
        "calibration": {"images": len(images), "source": source},
    }
    graph = to_openvino(model, header, example_size=tuple(images[0].shape[-2:]))
    try:
        with _silenced():
            quantized = nncf.quantize(graph, nncf.Dataset(list(images), lambda x: x.numpy()),
                                      subset_size=len(images))
    except Exception as err:
        raise UserError(f"NNCF could not quantize the graph: {first_line(err)}") from err
    quantized.set_rt_info(json.dumps(header), OPENVINO_KEY)
    agreement = check_openvino_int8(model, OpenVinoModel(path, header, quantized), images[0], min_agreement)
    save_ir(quantized, path)
    return agreement


def check_openvino_int8(model: SegmentationModel, int8: OpenVinoModel, image: torch.Tensor,
                        min_agreement: float) -> float:
    """The share of `image`'s pixels whose int8 label (f32 arithmetic elsewhere) equals the
    fp32 model's; a UserError below `min_agreement` or for logits of the wrong shape."""
    with torch.no_grad():
        expected, got = model(image), int8(image)
    if got.shape != expected.shape:
        raise UserError(f"the int8 graph gives logits of shape {tuple(got.shape)}, not {tuple(expected.shape)}; "
                        "nothing written")
    agreement = (got.argmax(1) == expected.argmax(1)).float().mean().item()
    if agreement < min_agreement:
        raise UserError(f"the int8 graph's labels agree with fp32 on only {100 * agreement:.1f}% of a calibration "
                        f"image's pixels (at least {100 * min_agreement:.0f}% needed); nothing written")
    return agreement


def run_export_openvino(
    checkpoint: str,
    out: str,
    *,
    int8: bool = False,
    dataset: str | None = None,
    data_root: str | None = None,
    images: int = DEFAULT_CALIBRATION_IMAGES,
    example_size: tuple[int, int] = DEFAULT_SIZE,
    dynamic: bool = True,
) -> float | None:
    """`atrous export --format openvino` (and `--int8`): checks the options, loads
    `checkpoint`, writes the IR `out`. Returns the int8 graph's agreement (None for fp32)."""
    check_out(checkpoint, out)
    check_openvino_out(checkpoint, out)
    if min(example_size) < 1:
        raise UserError(f"example_size (height, width) must be at least 1, got {example_size[0]}x{example_size[1]}",
                        argument=("height", "width"))
    if int8:
        if not dataset:
            raise UserError("int8 needs calibrate_dataset (the training set whose images set the int8 ranges)",
                            argument=("int8", "calibrate_dataset"))
        if not dynamic:
            raise UserError("int8 writes a graph of free size; drop dynamic=False", argument=("int8", "dynamic"))
        if images < 1:
            raise UserError(f"calibrate_images must be at least 1, got {images}", argument="calibrate_images")
        _require_nncf()
    else:
        require_openvino("format openvino", "format")
    make_parent(out)
    model = load_checkpoint(checkpoint)
    if not int8:
        export_openvino(model, out, example_size=example_size, dynamic=dynamic)
        return None
    train = build_dataset(dataset, "train", data_root=data_root, num_classes=model.num_classes)
    chosen = calibration_images(train, images, *normalisation(model.meta))
    return export_openvino_int8(model, out, chosen, source=f"{dataset} train, {len(chosen)} of {len(train)} images")


def _require_nncf() -> Any:
    require_openvino("int8 with format openvino", ("int8", "format"))
    try:
        import nncf
    except ImportError as err:
        raise UserError(f"int8 with format openvino needs NNCF: {NNCF_EXTRA}", argument=("int8", "format")) from err
    return nncf
