"""Pictures of a CamVid run for docs/benchmarks.md: input | ground truth | prediction |
DenseCRF-refined prediction for a few images of a split (val, or seq_test: the held-out
sequence), and the training curves of the run (train loss per epoch and, with
`--eval-every`, val mIoU) from its log.jsonl; and, from benchmarks/results/camvid.json, the
val against held-out mIoU of every sequence-held-out row; or the train loss of several runs
on one axis (a run that diverges, beside its fix).

    .venv/bin/python benchmarks/camvid_figure.py --checkpoint RUN/model.safetensors \
        [--split val|seq_test] [--images 0 25 50 75] [--crf-params FILE] [--target ENet 0.513] [--out docs/images/camvid]
    .venv/bin/python benchmarks/camvid_figure.py --gap docs/images/camvid_heldout_gap.png [--protocol light]
    .venv/bin/python benchmarks/camvid_figure.py --losses OUT.png --logs LABEL=RUN/log.jsonl ...

Writes OUT_examples.png and OUT_curves.png (needs matplotlib, the `bench` extra). The CRF is
DenseCRF with `--crf-params` (a YAML/JSON file as `atrous eval --crf-params` takes), else
the setting that did best in benchmarks/crf_effect.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from harness import CAMVID_DATA, RESULTS_DIR, ROOT  # noqa: E402

from atrous.checkpoints.checkpoint import load_checkpoint  # noqa: E402
from atrous.checkpoints.meta import normalisation, palette_of
from atrous.crf import DenseCRF  # noqa: E402
from atrous.data import build_dataset  # noqa: E402
from atrous.data.transforms import Normalize  # noqa: E402
from atrous.inference.evaluate import predict_logits  # noqa: E402
from atrous.options import read_mapping_file  # noqa: E402

# the best DenseCRF setting of benchmarks/crf_effect.py on CamVid val
BEST_DENSE = dict(pos_xy_std=3, pos_w=3, bi_xy_std=50, bi_rgb_std=10, bi_w=5)


def label_rows(model, dataset, indices: list[int], crf: torch.nn.Module) -> list[tuple[np.ndarray, ...]]:
    """(image, truth, prediction, refined) per index: HxWx3 uint8 and HxW label maps
    (void -1 in the truth)."""
    mean, std = normalisation(model.meta)
    normalise = Normalize(mean, std)
    rows = []
    for index in indices:
        raw, mask = dataset[index]
        image, _ = normalise(raw, mask)
        with torch.no_grad():
            logits = predict_logits(model, image[None])
            refined = crf(logits, raw[None].float())
        truth = mask.numpy().astype(np.int64)
        truth[truth == 255] = -1
        rows.append((raw.permute(1, 2, 0).numpy(), truth, logits[0].argmax(0).numpy(), refined[0].argmax(0).numpy()))
    return rows


def colour(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    out = palette[np.clip(labels, 0, None)].copy()
    out[labels < 0] = 0  # void in black
    return out


def accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    valid = truth >= 0
    return float((pred[valid] == truth[valid]).mean())


def examples_figure(rows, palette: np.ndarray, class_names: list[str], path: str) -> None:
    titles = ("input", "ground truth (void black)", "prediction", "DenseCRF-refined")
    fig, axes = plt.subplots(len(rows), 4, figsize=(16, 3.1 * len(rows) + 0.8), squeeze=False)
    for r, (image, truth, pred, refined) in enumerate(rows):
        panels = (image, colour(truth, palette), colour(pred, palette), colour(refined, palette))
        notes = ("", "", f"pixel acc {accuracy(pred, truth):.3f}", f"pixel acc {accuracy(refined, truth):.3f}")
        for c, (panel, note) in enumerate(zip(panels, notes, strict=True)):
            ax = axes[r][c]
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c])
            if note:
                ax.set_xlabel(note)
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette[i] / 255) for i in range(len(class_names))]
    fig.legend(handles, class_names, loc="lower center", ncol=len(class_names), frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=72)
    plt.close(fig)


# what the curve of each evaluation split measures, for the axis label
SPLIT_LABELS = {"val": "val (0016E5) mIoU", "seq_test": "held-out (0006R0) mIoU"}


def curves_figure(log_path: str, title: str, path: str, targets: dict[str, float] | None = None) -> None:
    """Train loss per epoch and the evaluation curve of a run's log.jsonl; `targets`
    ({"ENet": 0.513}) are drawn as dashed lines on the mIoU axis."""
    with open(log_path) as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    epochs = [r for r in records if "epoch" in r]
    evals = [r for r in records if any(k.endswith("_mIoU") for k in r)]
    fig, loss_ax = plt.subplots(figsize=(8, 4.5))
    loss_ax.plot([r["step"] for r in epochs], [r["loss"] for r in epochs], color="tab:blue", label="train loss")
    loss_ax.set_xlabel("iteration")
    loss_ax.set_ylabel("train loss (epoch mean)", color="tab:blue")
    if evals:
        key = next(k for k in evals[0] if k.endswith("_mIoU"))
        miou_ax = loss_ax.twinx()
        miou_ax.plot([r["step"] for r in evals], [r[key] for r in evals], "o-", color="tab:red", label=key)
        split = key[: -len("_mIoU")]
        miou_ax.set_ylabel(SPLIT_LABELS.get(split, key.replace("_", " ")), color="tab:red")
        for name, value in (targets or {}).items():
            miou_ax.axhline(value, color="tab:gray", linestyle="--", linewidth=1)
            miou_ax.annotate(f"{name} {value:.3f}", (0, value), xycoords=("axes fraction", "data"),
                             textcoords="offset points", xytext=(4, 3), color="tab:gray", fontsize=9)
        best = evals[-1]
        miou_ax.annotate(f"{best[key]:.3f}", (best["step"], best[key]), textcoords="offset points",
                         xytext=(-12, -16), color="tab:red")
    finished = [r for r in records if r.get("event") == "finished"]
    if finished:
        title += f" — {finished[-1]['step']} iterations, {finished[-1]['elapsed_s'] / 60:.0f} min of training"
    loss_ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def read_epochs(log_path: str) -> list[dict]:
    """The per-epoch records (step, train loss) of a run's log.jsonl."""
    with open(log_path) as handle:
        return [r for r in (json.loads(line) for line in handle if line.strip()) if "epoch" in r]


def losses_figure(logs: dict[str, str], title: str, path: str) -> None:
    """The train loss (epoch means, log scale) of several runs on one axis: a run that
    diverges or stops learning shows as a spike or a flat line near ln(classes)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, log_path in logs.items():
        epochs = read_epochs(log_path)
        ax.plot([r["step"] for r in epochs], [r["loss"] for r in epochs], "o-", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("train loss (epoch mean, log scale)")
    ax.set_title(title, fontsize=11)
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def gap_figure(results_path: Path, protocol: str, path: str) -> int:
    """Grouped bars: val and held-out (seq_test) mIoU of each row of `protocol` trained on
    seq_train, seeds averaged (the spread drawn where there are several); returns the bar count."""
    with open(results_path) as handle:
        rows = [r for r in json.load(handle)["rows"].values()
                if "heldout" in r and r.get("protocol") == protocol and not r.get("smoke")]
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["recipe_name"].split("/", 1)[-1], []).append(row)
    names = sorted(groups, key=lambda n: -np.mean([r["heldout"]["mIoU"] for r in groups[n]]))
    if not names:
        raise SystemExit(f"no sequence-held-out rows of protocol '{protocol}' in {results_path}")
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.0 + 0.9 * len(names)), 4.8))
    for offset, (split, label, color) in ((-0.2, ("val", "val (0016E5, seen sequence)", "tab:gray")),
                                          (0.2, ("heldout", "held-out (0006R0, never seen)", "tab:red"))):
        values = [[100 * r[split]["mIoU"] for r in groups[n]] for n in names]
        spread = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values]
        ax.bar(x + offset, [np.mean(v) for v in values], 0.4, yerr=spread, label=label, color=color)
    ax.set_xticks(x, [f"{n} ({len(groups[n])} seeds)" if len(groups[n]) > 1 else n for n in names],
                  rotation=30, ha="right")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"CamVid ({protocol} protocol): val vs a sequence never seen", fontsize=11)
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return len(names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="the run to draw (not needed with --gap alone)")
    parser.add_argument("--split", default="val", help="the split whose images are drawn (val, seq_test)")
    parser.add_argument("--gap", help="also draw the val / held-out mIoU bars of camvid.json to this PNG")
    parser.add_argument("--protocol", default="light", help="the rows --gap draws (light, recipe)")
    parser.add_argument("--losses", help="draw the train loss of the runs of --logs to this PNG")
    parser.add_argument("--logs", nargs="+", default=[], metavar="LABEL=LOG",
                        help="runs for --losses: a label and a log.jsonl each")
    parser.add_argument("--log", help="the run's log.jsonl (default: next to the checkpoint)")
    parser.add_argument("--data-root", default=str(CAMVID_DATA))
    parser.add_argument("--images", type=int, nargs="+", default=[0, 40, 70, 100])
    parser.add_argument("--crf-params", help="DenseCRF parameters (YAML/JSON)")
    parser.add_argument("--title", default="CamVid")
    parser.add_argument("--target", nargs=2, action="append", default=[], metavar=("NAME", "MIOU"),
                        help="a reference mIoU drawn on the curve, e.g. --target ENet 0.513 (repeatable)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "camvid"))
    args = parser.parse_args()
    if args.gap:
        count = gap_figure(RESULTS_DIR / "camvid.json", args.protocol, args.gap)
        print(f"wrote {args.gap} ({count} rows)")
    if args.losses:
        if not args.logs or any("=" not in item for item in args.logs):
            parser.error("--losses needs --logs LABEL=PATH/log.jsonl ...")
        losses_figure(dict(item.split("=", 1) for item in args.logs), args.title, args.losses)
        print(f"wrote {args.losses} ({len(args.logs)} runs)")
    if not args.checkpoint:
        if not (args.gap or args.losses):
            parser.error("--checkpoint is required unless --gap or --losses is given")
        return 0

    model = load_checkpoint(args.checkpoint)
    dataset = build_dataset("camvid", args.split, data_root=args.data_root)
    params = read_mapping_file(args.crf_params, "--crf-params") if args.crf_params else BEST_DENSE
    crf = DenseCRF(num_classes=model.num_classes, **params).eval()
    palette = palette_of(model.meta, model.num_classes)
    rows = label_rows(model, dataset, args.images, crf)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    examples_figure(rows, palette, list(dataset.info.class_names), f"{args.out}_examples.png")
    log = args.log or os.path.join(os.path.dirname(args.checkpoint), "log.jsonl")
    targets = {name: float(value) for name, value in args.target}
    curves_figure(log, args.title, f"{args.out}_curves.png", targets)
    print(f"wrote {args.out}_examples.png and {args.out}_curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
