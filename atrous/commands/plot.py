"""`atrous plot RUN [RUN ...]`: the training curves of one run, or of several overlaid, from
each run folder's log.jsonl, as one PNG or SVG (atrous.inference.curves)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from atrous.errors import UserError
from atrous.inference.curves import UnknownQuantity, plot_curves
from atrous.inference.plots import FORMATS, require_matplotlib
from atrous.options import check_options, option
from atrous.outputs import require_writable_file

HELP = "draw training curves (loss, learning rate, evaluated metrics) of one or more runs"


@dataclass(kw_only=True)
class PlotOptions:
    runs: list[str] = option(help="training output folders (each holding log.jsonl); several are overlaid",
                             positional=True, nargs="+", metavar="RUN")
    out: str = option("curves.png", "the picture; .png or .svg (the format comes from the suffix)", metavar="FILE")
    metrics: list[str] | None = option(None, "only these quantities, as log.jsonl names them or as patterns "
                                       "(loss lr val_mIoU 'val_*'); default every one logged", nargs="+",
                                       metavar="NAME")


def run(opts: PlotOptions) -> int:
    check_options(opts)
    suffix = os.path.splitext(opts.out)[1].lower()
    if suffix not in FORMATS:
        raise UserError(f"--out {opts.out}: the format comes from the suffix, one of {', '.join(FORMATS)}; "
                        f"got '{suffix or 'none'}'")
    require_matplotlib("atrous plot")
    require_writable_file(opts.out, "--out")
    try:
        figure = plot_curves(opts.runs, opts.out, opts.metrics)
    except UnknownQuantity as err:
        raise UserError(f"--metrics: {err}") from err
    print(f"wrote {opts.out}: {len(figure.axes)} curves of {len(opts.runs)} run{'s' * (len(opts.runs) > 1)}")
    return 0


Options = PlotOptions
