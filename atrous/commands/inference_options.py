"""The options that `eval`, `predict` (and `serve`) share, declared once: the views and
precision of atrous.infer, the CRF, and where the model runs."""

from __future__ import annotations

from dataclasses import dataclass

from atrous.inference.engines import engine_option
from atrous.inference.infer import Views, make_views
from atrous.inference.refinement import CRF_KINDS
from atrous.options import option
from atrous.runtime.device import PRECISIONS


@dataclass(kw_only=True)
class ViewOptions:
    """How atrous.infer runs the model: precision, engine, scales, flips, sliding windows."""

    precision: str = option("auto", "auto: batch norm folded, bf16 + channels-last where the CPU has native bf16 "
                            "and on CUDA, fp32 elsewhere; fp32: the model exactly as trained", choices=PRECISIONS)
    engine: str = engine_option()  # torch, openvino, onnxruntime or auto (atrous.inference.engines)
    scales: list[float] = option(factory=lambda: [1.0], help="average over the input resized by each scale, "
                                 "e.g. 0.5 0.75 1.0 1.25 1.5 1.75", nargs="+", metavar="S", gt=0)
    flip: bool = option(False, "also average over the left-right mirrored input")
    slide: list[int] | None = option(None, "sliding-window inference with H x W windows (W defaults to H)",
                                     nargs="+", metavar=("H", "W"), ge=1)
    stride: list[int] | None = option(None, "window stride (default two thirds of the window)", nargs="+",
                                      metavar=("S", "S_W"), ge=1)
    output_stride: int | None = option(None, "run the model at this output stride with its own weights (DeepLab "
                                       "v3 evaluates at 8 a model trained at 16); default: as trained",
                                       choices=(8, 16, 32))

    def views(self) -> Views:
        """The views of --scales, --flip, --slide H [W], --stride S [S], checked."""
        return make_views(self.scales, self.flip, self.slide, self.stride)


@dataclass(kw_only=True)
class CrfOptions:
    """The CRF that refines the scores."""

    crf: str = option("none", "CRF refinement", choices=CRF_KINDS)
    crf_params: str | None = option(None, "YAML/JSON file of CRF parameters (overrides the checkpoint's)")
