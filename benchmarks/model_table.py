"""The model table of docs/models.md: parameters, output stride, receptive field and GFLOPs
at 512x512 for every registered model, beside the papers' parameter counts.

    .venv/bin/python benchmarks/model_table.py [--size 512] [--no-rf] [--models a,b]

Writes docs/models.md and benchmarks/results/model_table.json and prints the table.

- Parameters and GFLOPs are counted on the meta device (no memory, no compute):
  GFLOPs = torch.utils.flop_counter.FlopCounterMode's count (1 multiply-add = 2 FLOPs) of
  one forward pass of a 1x3x512x512 input in eval mode (batch 1).
- Output stride: the stride of the coarsest feature map of the backbone / encoder;
  "logit stride" is the stride of the logits before the final upsampling.
- Receptive field: the theoretical one, measured as the extent of the support of the
  gradient of the centre output pixel w.r.t. the input, in a linearised copy of the
  model (ReLUs removed, max pools turned into average pools of the same geometry, every
  weight positive, so that no path is cut by an inactive unit or a zero-initialised layer),
  at 512x512 and therefore capped at 512. SegNet's
  pooling stays max pooling (its unpooling needs the indices; its support follows the
  argmaxes, a lower bound).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from harness import RESULTS_DIR, ROOT, write_file, write_json
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import atrous
from atrous.backbones import Backbone

# the configuration each paper counts its parameters in: (num_classes, in_channels, millions)
PAPER = {
    "fcn8s": (21, 3, 134.0, "Long et al. 2015, Table 1"),
    "deeplab_v1": (21, 3, 20.5, "Chen et al. 2015, Table 2 (LargeFOV)"),
    "segnet": (11, 3, 29.4, "Badrinarayanan et al. 2017, Table 6"),
    "unet": (2, 1, 31.0, "Ronneberger et al. 2015 (1 input channel, 2 classes)"),
}
DEFAULT_CLASSES = 21
# the papers' named variants, each a row of its own: (row, model, options, paper millions, source)
VARIANTS = [
    ("deeplab_v1 (7x7)", "deeplab_v1", {"variant": "7x7"}, 134.3, "Chen et al. 2015, Table 2 (DeepLab-CRF-7x7)"),
    ("deeplab_v1 (4x4)", "deeplab_v1", {"variant": "4x4"}, 65.1, "Chen et al. 2015, Table 2 (DeepLab-CRF-4x4)"),
    ("deeplab_v1 (4x4_rate4)", "deeplab_v1", {"variant": "4x4_rate4"}, 65.1, "Chen et al. 2015, Table 2 (DeepLab-CRF)"),
    ("deeplab_v1 (msc)", "deeplab_v1", {"msc": True}, None, ""),
    ("deeplab_v2 (vgg16)", "deeplab_v2", {"backbone": "vgg16"}, None, ""),
    ("deeplab_v3 (cascade_blocks=3, aspp=False)", "deeplab_v3", {"cascade_blocks": 3, "aspp": False}, None, ""),
    ("unet (padding=valid)", "unet", {"padding": "valid"}, 31.0, "Ronneberger et al. 2015 (1 input channel, 2 classes)"),
]


def configuration(name: str) -> tuple[int, int]:
    num_classes, in_channels, *_ = PAPER.get(name, (DEFAULT_CLASSES, 3))
    return num_classes, in_channels


def output_stride(model: nn.Module) -> int:
    if hasattr(model, "base"):
        return output_stride(model.base)
    for attribute in ("backbone", "encoder"):
        part = getattr(model, attribute, None)
        if isinstance(part, Backbone):
            return part.output_stride
    return getattr(model, "encoder_stride", model.divisor)


def meta_measures(name: str, size: int, options: dict | None = None) -> dict[str, float]:
    num_classes, in_channels = configuration(name)
    with torch.device("meta"):
        model = atrous.create_model(name, num_classes, in_channels=in_channels, **(options or {})).eval()
    x = torch.empty(1, in_channels, size, size, device="meta")
    with torch.no_grad():
        logits = model.segment(x)["out"]
        with FlopCounterMode(display=False) as counter:
            model(x)
    return {
        "num_classes": num_classes,
        "in_channels": in_channels,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "output_stride": output_stride(model),
        "logit_stride": size // logits.shape[-1],
        "gflops": counter.get_total_flops() / 1e9,
    }


def linearised(model: nn.Module, keep_max_pools: bool = False) -> nn.Module:
    """A copy without ReLUs and with max pools as average pools of the same geometry."""
    model = copy.deepcopy(model)
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, child_name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d) and not keep_max_pools:
                pool = nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode)
                setattr(parent, child_name, pool)
    return model


def positive_weights(model: nn.Module) -> None:
    """Every weight positive, each convolution's scaled by its fan-in: no path of the
    architecture is cut by a zero-initialised layer (RefineNet's residual convolutions, FCN's
    skip scores) and none cancels another, so the support is the architecture's."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            for parameter in module.parameters(recurse=False):
                values = torch.rand(parameter.shape, generator=generator) + 0.5
                if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear) and parameter.dim() > 1:
                    values /= parameter[0].numel()
                parameter.copy_(values)


def receptive_field(name: str, size: int, options: dict | None = None) -> int:
    """Side of the bounding box of the input-gradient support of the centre output pixel."""
    torch.manual_seed(0)
    num_classes, in_channels = configuration(name)
    model = atrous.create_model(name, num_classes, in_channels=in_channels, **(options or {}))
    model = linearised(model, keep_max_pools=name == "segnet").eval()  # SegNet needs the indices
    positive_weights(model)
    model.requires_grad_(False)
    x = torch.randn(1, in_channels, size, size, requires_grad=True)
    out = model(x)
    out[0, :, size // 2, size // 2].sum().backward()
    support = x.grad.abs().sum(dim=(0, 1)) > 0  # (size, size)
    rows = support.any(dim=1).nonzero()
    cols = support.any(dim=0).nonzero()
    return int(max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1))


def markdown(rows: list[dict], size: int) -> str:
    lines = [
        "# Models",
        "",
        "Generated by `benchmarks/model_table.py`; do not edit by hand.",
        "",
        f"Measured at {size}x{size}, batch 1, the paper's default configuration of each model and",
        "the papers' named variants (options in brackets), "
        f"{DEFAULT_CLASSES} classes unless the paper's parameter count is given for another setting.",
        "GFLOPs: torch's FlopCounterMode (a multiply-add counts 2 FLOPs; GMACs = GFLOPs / 2).",
        "Output stride: stride of the coarsest backbone/encoder features; logit stride: stride of",
        "the logits before the final upsampling. RF: theoretical receptive field, the extent of the",
        "input-gradient support of the centre output pixel in a linearised copy of the model",
        f"(ReLUs removed, max pools as average pools; SegNet keeps its max pools), capped at {size}:",
        "a value within a few pixels of the image size means the whole image (global pooling).",
        "",
        "| model | classes | in ch. | params (M) | paper params (M) | diff | output stride | logit stride | RF (px) | GFLOPs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        paper = row.get("paper_params_m")
        diff = f"{100 * (row['params_m'] - paper) / paper:+.2f}%" if paper else ""
        rf = row.get("receptive_field")
        lines.append(
            f"| `{row['name']}` | {row['num_classes']} | {row['in_channels']} | {row['params_m']:.2f} "
            f"| {paper if paper else ''} | {diff} | {row['output_stride']} | {row['logit_stride']} "
            f"| {rf if rf is not None else 'n/a'} | {row['gflops']:.1f} |"
        )
    lines += ["", "Paper parameter counts:", ""]
    lines += [f"- `{name}`: {p[2]}M, {p[3]}" for name, p in PAPER.items()]
    lines += [f"- `{row}`: {millions}M, {source}" for row, _, _, millions, source in VARIANTS if millions]
    summaries = {name: text for name, text in atrous.models.model_summaries().items()  # atrous' own, not plugins'
                 if atrous.models.model_family(name).startswith("atrous.models.")}
    lines += ["", "Summaries:", ""] + [f"- `{k}`: {v}" for k, v in summaries.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--no-rf", action="store_true", help="skip the receptive fields (slow)")
    parser.add_argument("--models", default="", help="comma-separated subset")
    parser.add_argument("--json", default=str(RESULTS_DIR / "model_table.json"))
    parser.add_argument("--markdown", default=str(ROOT / "docs" / "models.md"))
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    names = [n for n in args.models.split(",") if n] or atrous.list_models()
    entries = [(name, name, {}, PAPER[name][2] if name in PAPER else None) for name in names]
    entries += [(row, model, options, millions) for row, model, options, millions, _ in VARIANTS if model in names]
    rows = []
    for name, model, options, millions in sorted(entries):
        start = time.perf_counter()
        row = {"name": name, **meta_measures(model, args.size, options)}
        if millions:
            row["paper_params_m"] = millions
        row["receptive_field"] = None if args.no_rf else receptive_field(model, args.size, options)
        rows.append(row)
        print(f"{name:20s} {row['params_m']:8.2f}M  OS {row['output_stride']:2d}  "
              f"RF {row['receptive_field']}  {row['gflops']:7.1f} GFLOPs  ({time.perf_counter() - start:.0f}s)",
              flush=True)
    write_json(args.json, {"size": args.size, "models": rows})
    write_file(args.markdown, markdown(rows, args.size))
    print(f"wrote {args.markdown} and {args.json}")


if __name__ == "__main__":
    main()
