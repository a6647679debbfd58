"""DenseCRF / ConvCRF against pydensecrf on CamVid val images: speed and label agreement.

    .venv/bin/python benchmarks/crf.py [--images 5] [--repeats 3] [--threads 1]
                                       [--checkpoint FILE] [--data-root DIR]
                                       [--backward] [--memory]

Unaries: a trained model's logits with --checkpoint; otherwise a deterministic stand-in made
from the ground truth (noisy one-hot, smoothed). Each timing covers the whole refinement of
one 480x360 image with 11 classes and 10 iterations (pydensecrf: building the CRF, its two
lattices and inference; atrous: one forward under no_grad), the two alternating run by run; the ratio is pydensecrf
time / atrous time of the medians (> 1: atrous is faster). --backward adds forward and
backward with autograd on the first image; --memory the peak memory a 2048x1024 image adds
(a fresh process' ru_maxrss). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from harness import CAMVID_DATA, RESULTS_DIR, command_line, cpu_name, interleaved, timed, write_json
from PIL import Image

from atrous.crf import ConvCRF, DenseCRF

NUM_CLASSES = 11
PARAMS = dict(pos_xy_std=3.0, pos_w=3.0, bi_xy_std=80.0, bi_rgb_std=13.0, bi_w=10.0)


def stand_in_logits(labels: np.ndarray, seed: int) -> torch.Tensor:
    """(1, 11, H, W) logits: one-hot of the labels (void uniform), noise, 7x7 box smoothing."""
    g = torch.Generator().manual_seed(seed)
    target = torch.from_numpy(labels.astype(np.int64))
    onehot = F.one_hot(target.clamp(max=NUM_CLASSES), NUM_CLASSES + 1)[..., :NUM_CLASSES]
    return noisy_smoothed(onehot.permute(2, 0, 1).float()[None], g)


def noisy_smoothed(onehot: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Stand-in logits from (N, K, H, W) one-hot labels: scaled, Gaussian noise added (from
    `generator`), 7x7 box smoothing (benchmarks/gpu_check.py makes its unaries the same way)."""
    noisy = 3.0 * onehot + 2.0 * torch.randn(onehot.shape, generator=generator)
    return 2.0 * F.avg_pool2d(noisy, 7, stride=1, padding=3, count_include_pad=False)


def model_logits(model, image: torch.Tensor) -> torch.Tensor:
    meta = getattr(model, "meta", {}) or {}
    mean = torch.tensor(meta.get("mean", [0.0, 0.0, 0.0])).view(1, 3, 1, 1)
    std = torch.tensor(meta.get("std", [1.0, 1.0, 1.0])).view(1, 3, 1, 1)
    with torch.no_grad():
        return model((image / 255.0 - mean) / std).float()


def run_pydensecrf(dcrf, logits: torch.Tensor, rgb: np.ndarray, iterations: int) -> np.ndarray:
    _, c, h, w = logits.shape
    unary = np.ascontiguousarray(-torch.log_softmax(logits[0], 0).reshape(c, -1).numpy())
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(unary.astype(np.float32))
    d.addPairwiseGaussian(sxy=PARAMS["pos_xy_std"], compat=PARAMS["pos_w"])
    d.addPairwiseBilateral(
        sxy=PARAMS["bi_xy_std"], srgb=PARAMS["bi_rgb_std"], rgbim=rgb, compat=PARAMS["bi_w"]
    )
    return np.array(d.inference(iterations)).reshape(c, h, w)


def backward_timing(logits: torch.Tensor, image: torch.Tensor, iterations: int, repeats: int) -> dict:
    """Forward with autograd recording, and forward + backward (gradients for the logits and
    the CRF's weights), on one image: the cost of training through the CRF."""
    crf = DenseCRF(num_iterations=iterations, **PARAMS)
    logits = logits.clone().requires_grad_(True)
    target = logits.detach().argmax(1)

    def forward():
        return crf(logits, image)

    def forward_backward():
        crf.zero_grad()
        logits.grad = None
        F.nll_loss(crf(logits, image), target).backward()

    with torch.enable_grad():
        forward_backward()  # warm-up
        t_forward = timed(forward, repeats).median
        t_both = timed(forward_backward, repeats).median
    return dict(forward_with_grad_s=t_forward, forward_backward_s=t_both, backward_s=t_both - t_forward)


MEMORY_PROBE = """
import resource, sys, time, torch, torch.nn.functional as F
torch.set_num_threads(int(sys.argv[3]))
from atrous.crf import DenseCRF
h, w, iterations = 1024, 2048, int(sys.argv[2])
g = torch.Generator().manual_seed(0)
image = (torch.rand(1, 3, h // 32, w // 32, generator=g) * 255)
image = F.interpolate(image, size=(h, w), mode="bicubic").clamp(0, 255).round()
logits = F.interpolate(torch.randn(1, 11, h // 16, w // 16, generator=g) * 3, size=(h, w), mode="bilinear")
crf = DenseCRF(num_iterations=iterations, **{params})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
with torch.no_grad():
    crf(logits, image)
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after, seconds)
"""


def peak_memory(iterations: int, threads: int) -> dict:
    """Peak resident memory added by one DenseCRF forward on a 1024x2048 image (11 classes),
    in a fresh process: ru_maxrss after the forward minus before it (inputs already made)."""
    import subprocess

    code = MEMORY_PROBE.replace("{params}", repr(PARAMS))
    out = subprocess.run(
        [sys.executable, "-c", code, "probe", str(iterations), str(threads)],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    before_kib, after_kib, seconds = int(out[0]), int(out[1]), float(out[2])
    inputs_mib = (1024 * 2048 * (3 + 11) * 4) / 2**20
    return dict(size="2048x1024", peak_added_mib=(after_kib - before_kib) / 1024,
                inputs_mib=inputs_mib, seconds=seconds)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (pydensecrf: 1)")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--data-root", type=Path, default=CAMVID_DATA)
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "crf.json")
    parser.add_argument("--backward", action="store_true", help="also time a backward pass (first image)")
    parser.add_argument("--memory", action="store_true", help="also measure the peak memory at 2048x1024")
    return parser.parse_args()


def image_and_logits(path: Path, index: int, data_root: Path, model) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """The image (HxWx3 uint8 and 1x3xHxW float) and its unaries: the model's logits, else
    the stand-in made from its ground truth."""
    rgb = np.ascontiguousarray(np.array(Image.open(path).convert("RGB")))
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    if model is not None:
        return rgb, image, model_logits(model, image)
    labels = np.array(Image.open(data_root / "valannot" / path.name))
    return rgb, image, stand_in_logits(labels, seed=index)


def measure_image(name: str, rgb: np.ndarray, image: torch.Tensor, logits: torch.Tensor, args: argparse.Namespace,
                  crfs: tuple[DenseCRF, ConvCRF], dcrf) -> dict[str, Any]:
    """One image's row: the times of DenseCRF (cold and warm), ConvCRF and pydensecrf, and
    their label agreement."""
    dense, conv = crfs
    # cold: a fresh module builds both lattices (the position lattice is then cached
    # per image size, as it does not depend on the image)
    fresh = DenseCRF(num_iterations=args.iterations, **PARAMS)
    t_cold = timed(lambda: fresh(logits, image), 1).median
    dense(logits, image)  # warm-up (allocator, kernels, position lattice)
    # pydensecrf and atrous alternate, run by run, so that both see the same machine
    # (on a shared machine, absolute times drift between seconds)
    runs = {"dense": lambda: dense(logits, image)}
    if dcrf is not None:
        runs["pydensecrf"] = lambda: run_pydensecrf(dcrf, logits, rgb, args.iterations)
    medians, _, results = interleaved(runs, args.repeats, keep_results=True)
    t_dense, ours = medians["dense"], results["dense"]
    t_conv, _, conv_out = timed(lambda: conv(logits, image), args.repeats)
    labels_ours = ours[0].argmax(0).numpy()
    row = dict(
        image=name,
        atrous_dense_s=t_dense,
        atrous_dense_cold_s=t_cold,
        atrous_conv_s=t_conv,
        conv_vs_dense_agreement=float((conv_out[0].argmax(0).numpy() == labels_ours).mean()),
        unary_vs_dense_agreement=float((logits[0].argmax(0).numpy() == labels_ours).mean()),
    )
    if dcrf is not None:
        t_ref, q = medians["pydensecrf"], results["pydensecrf"]
        row.update(
            pydensecrf_s=t_ref,
            speedup_vs_pydensecrf=t_ref / t_dense,
            speedup_vs_pydensecrf_cold=t_ref / t_cold,
            agreement=float((q.argmax(0) == labels_ours).mean()),
            max_abs_q_difference=float(np.abs(q - ours[0].exp().numpy()).max()),
        )
    return row


def summarise(rows: list[dict[str, Any]], args: argparse.Namespace, conv: ConvCRF, unaries: str,
              reference: bool) -> dict[str, Any]:
    """The run's summary: its settings, the medians over the images, the machine."""

    def med(key):
        values = [r[key] for r in rows if key in r]
        return statistics.median(values) if values else None

    return dict(
        command=command_line(__file__),
        size="480x360", classes=NUM_CLASSES, iterations=args.iterations, images=len(rows),
        threads=args.threads, unaries=unaries,
        parameters=PARAMS, conv_filter_size=conv.filter_size, conv_blur=conv.blur,
        median_atrous_dense_s=med("atrous_dense_s"), median_atrous_conv_s=med("atrous_conv_s"),
        median_pydensecrf_s=med("pydensecrf_s"),
        median_speedup_vs_pydensecrf=med("speedup_vs_pydensecrf"),
        median_speedup_vs_pydensecrf_cold=med("speedup_vs_pydensecrf_cold"),
        machine_load_1min=float(open("/proc/loadavg").read().split()[0]),
        cpu=cpu_name(bf16=True, fallback="?"), precision="fp32",
        min_agreement=min((r["agreement"] for r in rows if "agreement" in r), default=None),
        mean_agreement=(statistics.mean(r["agreement"] for r in rows) if reference else None),
        torch=torch.__version__,
    )


def print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'image':<18}{'pydensecrf s':>14}{'atrous s':>10}{'ratio':>8}{'agree':>9}{'conv s':>9}"
    print(header)
    for r in rows:
        ref = r.get("pydensecrf_s", float("nan"))
        print(
            f"{r['image']:<18}{ref:>14.3f}{r['atrous_dense_s']:>10.3f}"
            f"{r.get('speedup_vs_pydensecrf', float('nan')):>8.2f}"
            f"{r.get('agreement', float('nan')):>9.4f}{r['atrous_conv_s']:>9.3f}"
        )


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        dcrf = None
        print("pydensecrf not installed (pip install pydensecrf2): atrous timings only")

    model = None
    if args.checkpoint is not None:
        import atrous

        model = atrous.load_checkpoint(args.checkpoint).eval()
    dense = DenseCRF(num_iterations=args.iterations, **PARAMS)
    conv = ConvCRF(num_iterations=args.iterations, **PARAMS)

    paths = sorted((args.data_root / "val").glob("*.png"))[: args.images]
    if not paths:
        raise SystemExit(f"no images in {args.data_root / 'val'}")
    rows = []
    with torch.no_grad():
        for i, path in enumerate(paths):
            rgb, image, logits = image_and_logits(path, i, args.data_root, model)
            rows.append(measure_image(path.name, rgb, image, logits, args, (dense, conv), dcrf))
            if args.backward and i == 0:
                backward = backward_timing(logits, image, args.iterations, args.repeats)

    summary = summarise(rows, args, conv, "checkpoint" if model is not None else "stand-in", dcrf is not None)
    if args.backward:
        summary["backward_first_image"] = backward
    if args.memory:
        summary["memory_2048x1024"] = peak_memory(args.iterations, args.threads)
    print_table(rows)
    print(json.dumps(summary, indent=2))
    write_json(args.json, dict(summary=summary, images=rows))


if __name__ == "__main__":
    main()
