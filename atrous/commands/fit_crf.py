"""`atrous fit-crf`: CRF parameters fitted on a frozen model's outputs, saved in its checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atrous.data import list_datasets
from atrous.data.options import DatasetOptions
from atrous.options import ProgressOptions, check_options, option
from atrous.outputs import require_writable_file
from atrous.runtime.options import DeviceOptions
from atrous.training.crf_fit import fit_checkpoint_crf

HELP = "fit CRF parameters on a frozen model's outputs (decoupled training)"


@dataclass(kw_only=True)
class FitCrfOptions(DatasetOptions, DeviceOptions, ProgressOptions):
    checkpoint: str = option(help="the checkpoint whose outputs the CRF refines")
    dataset: str = option(help="the dataset fitted on", choices=list_datasets)
    split: str = option("train", "split to fit on")
    crf: str = option("conv", "the CRF fitted", choices=("dense", "conv"))
    crf_params: str | None = option(None, "YAML/JSON file of starting parameters")
    iters: int = option(200, "Adam steps", ge=1)
    lr: float = option(0.01, "Adam's learning rate", gt=0)
    batch_size: int = option(2, "images per step", ge=1)
    crop_size: int | None = option(None, "random crops of this side (default: whole images)", ge=1)
    max_images: int | None = option(None, "use at most this many images of the split", ge=1)
    precision: str = option("fp32", "the frozen network's arithmetic", choices=("fp32", "bf16"))
    seed: int = option(0, "random seed (crops, order)")
    out: str | None = option(None, "checkpoint to write (default: update --checkpoint in place, atomically)")


def run(opts: FitCrfOptions) -> dict[str, Any]:
    check_options(opts)
    if opts.out:
        require_writable_file(opts.out, "--out")
    result = fit_checkpoint_crf(
        opts.checkpoint, opts.dataset, out=opts.out, kind=opts.crf, crf_params=opts.crf_params,
        data_root=opts.data_root, split=opts.split, num_classes=opts.num_classes, iters=opts.iters,
        lr=opts.lr, batch_size=opts.batch_size, crop_size=opts.crop_size, max_images=opts.max_images,
        precision=opts.precision, device=opts.device, seed=opts.seed, synthetic_size=opts.synthetic_size,
        progress=opts.progress,
    )
    print(f"fitted {result['kind']} CRF on {result['images']} images of {result['dataset']}/{result['split']}: "
          f"{result['iters']} iterations in {result['seconds']:.1f} s")
    print(f"loss (NLL on {result['monitor_images']} training images): network {result['network_loss']:.4f}, "
          f"CRF before {result['loss_before']:.4f}, after {result['loss_after']:.4f}")
    params = {k: v for k, v in result["entry"]["state"].items() if not isinstance(v, list)}
    print("parameters: " + ", ".join(f"{k}={v:.4g}" for k, v in params.items()))
    print(f"-> {result['out']} (meta['crf']['{result['kind']}']; used by eval/predict --crf {result['kind']})")
    return result



Options = FitCrfOptions
