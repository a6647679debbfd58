"""`atrous predict`: images, folders, patterns and videos segmented into masks and overlays."""

from __future__ import annotations

from dataclasses import dataclass

from atrous.commands.eval import load_model
from atrous.commands.inference_options import CrfOptions, ViewOptions
from atrous.data.display import DisplayOptions
from atrous.data.options import ThresholdOptions
from atrous.inference.engines import on_engine
from atrous.inference.predict import predict
from atrous.inference.refinement import build_crf
from atrous.options import ProgressOptions, check_options, option
from atrous.outputs import require_writable_folder
from atrous.runtime.options import DeviceOptions

HELP = ("segment images and videos: DIR/<stem>.png and DIR/<stem>_overlay.png "
        "(a video: DIR/<stem>_overlay.mp4; a GeoTIFF or large TIFF, window by window: DIR/<stem>.tif)")


@dataclass(kw_only=True)
class PredictOptions(ViewOptions, CrfOptions, DisplayOptions, ThresholdOptions, DeviceOptions, ProgressOptions):
    checkpoint: str = option(help="a checkpoint (.safetensors), or an .onnx or OpenVINO .xml file from atrous export")
    inputs: list[str] = option(help="image or video files, folders (their images and videos) or glob patterns "
                               "('**' recurses)", positional=True, nargs="+", metavar="INPUT")
    out: str = option(help="output folder")
    batch_size: int = option(4, "images, frames or windows of a scene run at once", ge=1)
    save: str | None = option(None, "also write DIR/<stem>_logits.npy or _probs.npy, float32 (K, H, W); "
                              "(T, K, H, W) for a video; a scene: DIR/<stem>_probs.tif", choices=("logits", "probs"))


def run(opts: PredictOptions) -> list[str]:
    """Writes the outputs; returns their paths."""
    check_options(opts)
    views = opts.views()
    require_writable_folder(opts.out, "--out")
    model = on_engine(load_model(opts.checkpoint, opts.device, opts.output_stride), opts.engine, opts.precision)
    crf = build_crf(opts.crf, model, opts.crf_params)
    written = predict(model, opts.inputs, opts.out, crf=crf, precision=opts.precision, views=views,
                      batch_size=opts.batch_size, save=opts.save, progress=opts.progress,
                      display_bands=opts.display_bands, threshold=opts.threshold)
    print(f"wrote {len(written)} files to {opts.out}")
    return written


Options = PredictOptions
