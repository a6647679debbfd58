"""What predict reads: files, folders, glob patterns and videos, expanded and checked
before anything is written."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass

from atrous.data import DataError, read_image
from atrous.errors import UserError
from atrous.inference.video import VIDEO_SUFFIXES, VideoInfo, probe_video

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")


@dataclass(frozen=True)
class Source:
    """One input: an image, or a video (with what probing it told)."""

    path: str
    video: VideoInfo | None = None

    @property
    def stem(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]

    @property
    def count(self) -> int | None:
        """Images it holds: 1, a video's frame count, or None when the video does not say."""
        return 1 if self.video is None else self.video.frames


def is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_SUFFIXES)


def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """Paths in order: a folder gives its images and videos (sorted, not recursive), a glob
    pattern its matching files (sorted; `**` recurses); a file is kept as given. A path seen
    twice is kept once."""
    paths: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, name) for name in os.listdir(item)
                           if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES + VIDEO_SUFFIXES))
            if not found:
                raise UserError(f"{item}: no images or videos in this folder")
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise UserError(f"{item}: no file matches this pattern")
        else:
            found = [item]
        paths += found
    seen: set[str] = set()
    unique = []
    for path in paths:
        if os.path.abspath(path) not in seen:
            seen.add(os.path.abspath(path))
            unique.append(path)
    return unique


def check_sources(paths: Sequence[str], bands: int | None = None) -> list[Source]:
    """Every input decoded once (a video: opened, its first frame decoded), so that a missing
    or broken file, or an image of other than `bands` bands, stops the run before anything is
    written; images are read again later, so memory holds one batch at a time."""
    sources = []
    for path in paths:
        if is_video(path):
            if not os.path.isfile(path):
                raise UserError(f"video not found: {path}")
            sources.append(Source(path, probe_video(path)))
            continue
        try:
            image = read_image(path)
        except DataError as err:
            raise UserError(str(err)) from err
        if bands is not None and image.shape[0] != bands:
            raise UserError(f"image {path} has {image.shape[0]} bands; the model takes {bands} "
                            f"({'8-bit RGB' if bands == 3 else 'as it was trained'})")
        sources.append(Source(path))
    return sources
