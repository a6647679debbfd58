"""`atrous models [NAME]`: every registered model with its summary, or one model's options,
parameter count and FLOPs at an input size."""

from __future__ import annotations

from dataclasses import dataclass

from atrous.models import describe_model, model_summaries
from atrous.models.registry import model_cost
from atrous.options import check_options, option

HELP = "list the registered models; with NAME, that model's paper, options, defaults, parameters and FLOPs"
DEFAULT_INPUT = (512, 512)
CLASSES = 21  # PASCAL VOC's: the classes of the models counted
CONVENTION = ("FLOPs as torch.utils.flop_counter counts them: convolutions and matrix products, "
              "1 multiply-add = 2 FLOPs; MACs = multiply-adds, what fvcore and mmsegmentation call FLOPs")


@dataclass(kw_only=True)
class ModelsOptions:
    name: str | None = option(None, "a model name: print its documentation, options, parameters and FLOPs",
                              positional=True, nargs="?")
    input_size: list[int] | None = option(None, "the input for the FLOPs (default 512 512); without NAME, "
                                          "every model's parameters and FLOPs at this size", nargs=2,
                                          metavar=("H", "W"), ge=1)


def run(opts: ModelsOptions) -> int:
    check_options(opts)
    size = (opts.input_size[0], opts.input_size[1]) if opts.input_size else DEFAULT_INPUT
    if opts.name is not None:
        description = describe_model(opts.name)  # an unknown name: the registry's one-line error
        params, flops = model_cost(opts.name, CLASSES, size)
        print(description)
        print(f"\ncost at {size[0]}x{size[1]}, {CLASSES} classes, one image ({CONVENTION}):")
        print(f"  parameters  {params / 1e6:.2f} M ({params:,})")
        print(f"  FLOPs       {flops / 1e9:.2f} G")
        print(f"  MACs        {flops / 2e9:.2f} G")
        return 0
    summaries = model_summaries()
    width = max(len(n) for n in summaries)
    if opts.input_size:
        print(f"{'model':<{width}}  {'params (M)':>10}  {'GFLOPs':>8}  {'GMACs':>8}   at {size[0]}x{size[1]}, "
              f"{CLASSES} classes ({CONVENTION})")
        for name in summaries:
            params, flops = model_cost(name, CLASSES, size)
            print(f"{name:<{width}}  {params / 1e6:>10.2f}  {flops / 1e9:>8.2f}  {flops / 2e9:>8.2f}")
        return 0
    for name, summary in summaries.items():
        print(f"{name:<{width}}  {summary}")
    return 0


Options = ModelsOptions
