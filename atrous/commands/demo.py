"""`atrous demo` (`make demo`): DeepLab v3+ (ResNet-18) trained on the synthetic scenes on a CPU in under
three minutes, evaluated on the held-out synthetic split, with overlays and a picture.

The demo keeps the paper's architecture (output stride 16, ASPP rates 6/12/18, multi-grid,
48-channel low-level projection) with one named deviation for speed on two CPU cores:
`decoder_channels=128` (the paper's decoder has 256), which halves the cost of a step.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from atrous.checkpoints import load_checkpoint, palette_of
from atrous.data import SyntheticScenes
from atrous.inference.evaluate import format_table, predict_logits
from atrous.inference.predict import index_png, overlay
from atrous.models import SegmentationModel
from atrous.options import ProgressOptions, check_options, option
from atrous.outputs import require_writable_folder
from atrous.training import TrainConfig, train

HELP = "train DeepLab v3+ on synthetic scenes, evaluate, write overlays"

DEMO_TARGET_MIOU = 0.70


def demo_config(out: str, iters: int | None = None, progress: bool = True) -> TrainConfig:
    return TrainConfig(
        model="deeplab_v3plus",
        backbone="resnet18",
        dataset="synthetic",
        out=out,
        model_options={"decoder_channels": 128},
        iters=iters or 220,
        batch_size=8,
        crop_size=128,
        scale_min=0.75,
        scale_max=1.5,
        optimizer="adamw",
        lr=2e-3,
        weight_decay=1e-4,
        precision="auto",  # bf16 where native; emulated bf16 (e.g. AVX2-only CPUs) is many times slower
        channels_last=True,
        synthetic_length=700,
        overwrite=True,
        progress=progress,
    )


def write_examples(model: SegmentationModel, out: str, count: int = 6) -> str:
    """Overlays of the first `count` validation scenes under out/overlays and one picture,
    out/demo.png: a row per scene with input | ground truth | prediction."""
    from atrous.data.transforms import Normalize

    dataset = SyntheticScenes("val", length=count)
    palette = palette_of(model.meta, model.num_classes)
    normalise = Normalize(model.meta["mean"], model.meta["std"])
    folder = os.path.join(out, "overlays")
    os.makedirs(folder, exist_ok=True)
    rows = []
    for index in range(count):
        raw, mask = dataset[index]
        labels = predict_logits(model, normalise(raw, None)[0][None])[0].argmax(0).cpu().numpy()
        image = raw.permute(1, 2, 0).numpy()
        truth = mask.numpy().copy()
        truth[truth == 255] = 0
        index_png(labels, palette).save(os.path.join(folder, f"val_{index}.png"))
        Image.fromarray(overlay(image, labels, palette)).save(os.path.join(folder, f"val_{index}_overlay.png"))
        rows.append(np.concatenate([image, palette[truth], palette[labels]], axis=1))
    picture = os.path.join(out, "demo.png")
    Image.fromarray(np.concatenate(rows, axis=0)).save(picture)
    return picture


@dataclass(kw_only=True)
class DemoOptions(ProgressOptions):
    out: str = option("runs/demo", "output folder")
    iters: int | None = option(None, "override the demo's iteration count", ge=1)


def run(opts: DemoOptions) -> dict:
    check_options(opts)
    require_writable_folder(opts.out, "--out")
    return run_demo(opts.out, opts.iters, opts.progress)


def run_demo(out: str = "runs/demo", iters: int | None = None, progress: bool = True) -> dict:
    cfg = demo_config(out, iters, progress)
    print(f"atrous demo: training {cfg.model} ({cfg.backbone}) on synthetic scenes for {cfg.iters} iterations")
    started = time.perf_counter()
    result = train(cfg)
    metrics = result["val"]
    print(format_table(metrics))
    model = load_checkpoint(os.path.join(out, "model.safetensors"))
    picture = write_examples(model, out)
    seconds = result["train"]["seconds"]
    verdict = "reached" if metrics["mIoU"] >= DEMO_TARGET_MIOU else "MISSED"
    print(f"demo: mIoU {metrics['mIoU']:.3f} on {metrics['images']} held-out scenes ({verdict} the "
          f"{DEMO_TARGET_MIOU:.2f} target); training {seconds:.0f} s, total {time.perf_counter() - started:.0f} s")
    print(f"demo: model {out}/model.safetensors, overlays {out}/overlays/, picture {picture}")
    return result


Options = DemoOptions
