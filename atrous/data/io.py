"""Reading images and masks, with errors that name the file and what is wrong."""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from atrous.errors import UserError

# what PIL's decoders raise on damaged or hostile data
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


class DataError(UserError, ValueError):
    """A dataset file is missing, unreadable or does not fit (one-line message)."""


class ImageTooLarge(DataError):
    """An image whose header declares more pixels than allowed (a decompression bomb)."""


def _open(path: str, what: str) -> Image.Image:
    if not os.path.isfile(path):
        raise DataError(f"{what} not found: {path}")
    try:
        image = Image.open(path)
        image.load()
    except _DECODE_ERRORS as err:
        raise DataError(f"cannot read {what} {path}: {err}") from err
    return image


def read_image(path: str) -> torch.Tensor:
    """An RGB image as uint8 (3, H, W); greyscale, 16-bit and palette images are converted,
    EXIF orientation is applied."""
    return _as_rgb_tensor(ImageOps.exif_transpose(_open(path, "image")))


def decode_image(data: bytes, what: str = "image", *, max_pixels: int | None = None,
                 formats: Sequence[str] | None = None) -> torch.Tensor:
    """An image file's bytes (e.g. an upload) as uint8 (3, H, W), converted as `read_image`
    does. The size declared in the header is checked against `max_pixels` before any pixel
    is decoded, so a small file that expands to gigabytes is refused cheaply. `formats`
    limits the PIL decoders tried (e.g. ("PNG", "JPEG")); None tries all."""
    if not data:
        raise DataError(f"{what} is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(f"{what} is too large: {err}") from err
    except _DECODE_ERRORS as err:
        allowed = f" (accepted formats: {', '.join(formats)})" if formats else ""
        raise DataError(f"{what} is not an image that can be read{allowed}") from err
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(f"{what} is {width}x{height} = {width * height / 1e6:.1f} megapixels; "
                            f"the limit is {max_pixels / 1e6:.1f}")
    try:
        image.load()
        return _as_rgb_tensor(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(f"{what} is too large: {err}") from err
    except _DECODE_ERRORS as err:
        raise DataError(f"cannot decode {what} ({image.format}, {width}x{height}; damaged or truncated): "
                        f"{str(err).strip() or type(err).__name__}") from err


def _as_rgb_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) uint8 of a loaded PIL image of any mode."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float: scale to 8 bits
        values = np.asarray(image, dtype=np.float64)
        peak = values.max() if values.max() > 0 else 1.0
        image = Image.fromarray((values * (255.0 / max(peak, 255.0))).round().astype(np.uint8))
    image = image.convert("RGB")
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def read_mask(path: str) -> np.ndarray:
    """A label image as uint8 (H, W) class indices: 'L' or 'P' (palette indices) PNGs."""
    mask = _open(path, "mask")
    if mask.mode == "1":
        return np.asarray(mask, dtype=np.uint8)  # a binary mask: classes 0 and 1
    if mask.mode not in ("L", "P", "I", "I;16"):
        raise DataError(
            f"mask {path} is a {mask.mode} image; masks must hold class indices "
            "(8-bit greyscale or palette PNG)"
        )
    return np.array(mask)


def check_pair(image: torch.Tensor, mask: np.ndarray, *, num_classes: int, ignore_index: int,
               mask_path: str) -> torch.Tensor:
    """Checks that the mask fits the image and the classes; returns it as int64 (H, W)."""
    if tuple(mask.shape) != tuple(image.shape[-2:]):
        raise DataError(
            f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image is "
            f"{image.shape[-1]}x{image.shape[-2]}"
        )
    values = np.unique(mask)
    bad = values[((values >= num_classes) | (values < 0)) & (values != ignore_index)]
    if bad.size:
        raise DataError(
            f"mask {mask_path} has label values {bad.tolist()[:5]} outside 0..{num_classes - 1} "
            f"and the void label {ignore_index}"
        )
    return torch.from_numpy(mask.astype(np.int64))
