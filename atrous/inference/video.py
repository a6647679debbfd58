"""Videos for predict, decoded and encoded by PyAV (FFmpeg's libraries; the optional extra
`atrous[video]`): frames in as (H, W, 3) uint8 RGB arrays, overlays out as H.264 MP4."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from types import ModuleType

import numpy as np

from atrous.errors import UserError
from atrous.outputs import atomic_path

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg")
DEFAULT_RATE = Fraction(25)


def require_av(path: str) -> ModuleType:
    """PyAV, or a one-line error naming the video that needs it."""
    try:
        import av
    except ImportError as err:
        raise UserError(f"reading the video {path} needs PyAV: pip install 'atrous[video]'") from err
    return av


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    frames: int | None  # None when the container does not say
    rate: Fraction  # frames per second


def probe_video(path: str) -> VideoInfo:
    """Opens the video and decodes its first frame: a file that cannot be played fails here,
    before anything is written."""
    av = require_av(path)
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise UserError(f"{path} has no video stream")
            stream = container.streams.video[0]
            first = next(container.decode(stream), None)
            if first is None:
                raise UserError(f"video {path} has no frames")
            rate = stream.average_rate or stream.base_rate or DEFAULT_RATE
            return VideoInfo(first.width, first.height, stream.frames or None, Fraction(rate))
    except (av.FFmpegError, OSError) as err:
        raise UserError(f"cannot read video {path}: {err}") from err


def read_frames(path: str) -> Iterator[np.ndarray]:
    """Every frame of the first video stream, (H, W, 3) uint8 RGB."""
    av = require_av(path)
    try:
        with av.open(path) as container:
            for frame in container.decode(container.streams.video[0]):
                yield frame.to_ndarray(format="rgb24")
    except av.FFmpegError as err:
        raise UserError(f"cannot read video {path}: {err}") from err


@contextlib.contextmanager
def video_writer(path: str, rate: Fraction, width: int, height: int) -> Iterator:
    """Yields `write(frame)` for (height, width, 3) uint8 RGB frames; the MP4 appears at
    `path` complete or not at all. H.264 in yuv420p needs even sides: odd ones are padded by
    repeating the last row or column."""
    av = require_av(path)
    even_w, even_h = width + width % 2, height + height % 2
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with atomic_path(path) as tmp, av.open(tmp, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = even_w, even_h, "yuv420p"

        def write(frame: np.ndarray) -> None:
            frame = np.pad(frame, ((0, even_h - height), (0, even_w - width), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)

        yield write
        for packet in stream.encode():  # flush the encoder
            container.mux(packet)
