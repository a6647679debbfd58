"""The inference engines on a trained model: PyTorch fp32 / default / torch.compile, OpenVINO
f32 / bf16 / int8 (NNCF), onnxruntime fp32 / int8, each with its time per image, its label
agreement with PyTorch fp32 and its mIoU, on CamVid val images.

    .venv/bin/python benchmarks/engines.py [--checkpoint PATH] [--images 20] [--threads 1]
        [--repeats 3] [--calibrate-images 32] [--compile] [--data-root DIR]

Model: `--checkpoint` (default: the DeepLab v3+ ResNet-18 CamVid run in /tmp/seedruns, about
36 held-out mIoU). Images: the first `--images` CamVid val images at 360x480, normalised as
the checkpoint says. int8: calibrated on `--calibrate-images` train images, as `atrous export
--int8` does (onnxruntime: minmax, QDQ; OpenVINO: nncf.quantize's defaults). Agreement: the
share of the val pixels whose label equals PyTorch fp32's; mIoU over the same images (void
ignored). Time: the median of `--repeats` runs on the first image, after a warm-up, paths
interleaved, at `--threads` threads. Writes benchmarks/results/engines.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from functools import partial

import torch
from harness import CAMVID_DATA, RESULTS_DIR, command_line, cpu_name, interleaved, write_json

import atrous
from atrous.checkpoints.meta import normalisation
from atrous.checkpoints.openvino_model import on_openvino
from atrous.data import build_dataset
from atrous.deployment.export import export_onnx
from atrous.deployment.int8 import calibration_images, export_int8
from atrous.deployment.openvino import export_openvino_int8
from atrous.inference.infer import prepare
from atrous.metrics import ConfusionMatrix

RESULTS = RESULTS_DIR / "engines.json"
DEFAULT_CHECKPOINT = "/tmp/seedruns/camvid/heldout_v3plus_sqrtmf_600@seed1/model.safetensors"
Runner = Callable[[torch.Tensor], torch.Tensor]


def compiled_runner(model: torch.nn.Module) -> Runner:
    """atrous' default path (folded, bf16 autocast, channels-last) through torch.compile with
    inductor's CPU freezing (weights as constants, oneDNN weight prepacking)."""
    import torch._inductor.config as inductor

    inductor.freezing = True
    fast = prepare(model)
    network = torch.compile(fast.network)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast.autocast):
            return network(x.contiguous(memory_format=torch.channels_last)).float()

    return run


def build_paths(model: torch.nn.Module, calibration: list[torch.Tensor], folder: str, compile_: bool
                ) -> dict[str, tuple[str, Runner]]:
    """{path: (precision, run)}: (N, C, H, W) normalised -> (N, K, H, W) logits."""
    fast = prepare(model)
    in_openvino = on_openvino(model)
    paths: dict[str, tuple[str, Runner]] = {
        "torch fp32": ("fp32", partial(atrous.infer, model, precision="fp32")),
        "torch default": (fast.precision, partial(atrous.infer, fast)),
        "openvino f32": ("fp32", partial(in_openvino.logits, arithmetic="fp32")),
        "openvino bf16": ("bf16", partial(in_openvino.logits, arithmetic="bf16")),
    }
    if compile_:
        paths["torch.compile freezing"] = (fast.precision, compiled_runner(model))
    ov_int8 = os.path.join(folder, "int8.xml")
    export_openvino_int8(model, ov_int8, calibration, min_agreement=0.0)
    ov_int8_model = atrous.load_checkpoint(ov_int8)
    paths["openvino int8 (f32 elsewhere)"] = ("int8", partial(ov_int8_model.logits, arithmetic="fp32"))
    paths["openvino int8 (bf16 elsewhere)"] = ("int8+bf16", partial(ov_int8_model.logits, arithmetic="bf16"))
    onnx_fp32, onnx_int8 = os.path.join(folder, "fp32.onnx"), os.path.join(folder, "int8.onnx")
    export_onnx(model, onnx_fp32, example_size=tuple(calibration[0].shape[-2:]))
    export_int8(model, onnx_int8, calibration, min_agreement=0.0)
    paths["onnxruntime fp32"] = ("fp32", atrous.load_checkpoint(onnx_fp32))
    paths["onnxruntime int8"] = ("int8", atrous.load_checkpoint(onnx_int8))
    return paths


def scores(paths: dict[str, tuple[str, Runner]], images: list[torch.Tensor], masks: list[torch.Tensor],
           num_classes: int, ignore_index: int) -> dict[str, dict[str, float]]:
    """Per path: agreement with "torch fp32" and mIoU over the images."""
    labels = {name: [run(x).argmax(1) for x in images] for name, (_, run) in paths.items()}
    reference = labels["torch fp32"]
    total = sum(t.numel() for t in reference)
    result = {}
    for name, predicted in labels.items():
        matrix = ConfusionMatrix(num_classes, ignore_index=ignore_index)
        for pred, mask in zip(predicted, masks, strict=True):
            matrix.update(pred, mask[None])
        same = sum(int((a == b).sum()) for a, b in zip(predicted, reference, strict=True))
        result[name] = {"agreement": same / total, "mIoU": matrix.compute()["mIoU"]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calibrate-images", type=int, default=32)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile with freezing")
    parser.add_argument("--data-root", default=str(CAMVID_DATA))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = atrous.load_checkpoint(args.checkpoint).eval()
    mean, std = normalisation(model.meta)
    calibration = calibration_images(build_dataset("camvid", "train", data_root=args.data_root),
                                     args.calibrate_images, mean, std)
    val = build_dataset("camvid", "val", data_root=args.data_root)
    count = min(args.images, len(val))
    images = calibration_images(val, count, mean, std)[:count]  # evenly spread over val
    masks = [_mask(val, i, count) for i in range(count)]
    with tempfile.TemporaryDirectory(prefix="atrous-engines-") as folder:
        paths = build_paths(model, calibration, folder, args.compile)
        with torch.no_grad():
            quality = scores(paths, images, masks, model.num_classes, val.info.ignore_index)
            seconds = interleaved({n: partial(run, images[0]) for n, (_, run) in paths.items()},
                                  args.repeats, warmup=1).medians
    rows = [{"path": name, "precision": precision, "seconds": seconds[name], **quality[name]}
            for name, (precision, _) in paths.items()]
    print(f"CPU: {cpu_name(bf16=True)}; {args.threads} thread(s); {count} CamVid val images, 360x480")
    print("| path | precision | s / image | labels = torch fp32 | mIoU |\n|---|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['path']} | {row['precision']} | {row['seconds']:.3f} | {100 * row['agreement']:.2f} % | "
              f"{100 * row['mIoU']:.2f} |")
    write_json(RESULTS, {"command": command_line(__file__, python=True), "cpu": cpu_name(bf16=True),
                         "threads": args.threads, "images": count, "checkpoint": args.checkpoint, "rows": rows})


def _mask(dataset: torch.utils.data.Dataset, position: int, count: int) -> torch.Tensor:
    """The mask of the `position`-th of `count` images spread evenly over `dataset` (the
    indices calibration_images picks)."""
    import numpy as np

    indices = np.unique(np.linspace(0, len(dataset) - 1, count).round().astype(int))
    return torch.as_tensor(np.asarray(dataset[int(indices[position])][1]), dtype=torch.long)


if __name__ == "__main__":
    main()
