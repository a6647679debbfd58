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


RASTER_SUFFIXES = (".tif", ".tiff", ".npy")  # read with every band, at their bit depth


def read_image(path: str) -> torch.Tensor:
    """An image as (C, H, W), read without loss.

    8-bit photographs (PNG, JPEG, BMP, WebP; 8-bit greyscale, palette, RGB or RGBA, 8-bit
    TIFF of 1 or 3 bands) are uint8 (3, H, W) RGB as they have always been, EXIF orientation
    applied. Everything else is float32 (C, H, W) holding the stored values: 16-bit and float
    PNG/TIFF, TIFF of any number of bands (tifffile, the `tiff` extra) and `.npy` arrays
    (H, W), (H, W, C) or (C, H, W) when C < H, W."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npy" or (suffix in RASTER_SUFFIXES and _installed("tifffile")):
        if not os.path.isfile(path):
            raise DataError(f"image not found: {path}")
        return as_image_tensor(_read_raster(path, suffix), path)
    image = ImageOps.exif_transpose(_open(path, "image"))
    if suffix in RASTER_SUFFIXES and image.mode not in ("1", "L", "P", "RGB", *_DEEP_MODES):
        raise UserError(f"image {path} is a {image.mode} TIFF; reading all its bands needs tifffile: "
                        "pip install 'atrous[tiff]'")  # PIL would drop bands without a word
    if image.mode in _DEEP_MODES:
        return as_image_tensor(np.asarray(image), path)
    return _as_rgb_tensor(image)


_DEEP_MODES = ("I", "I;16", "I;16B", "I;16L", "F")  # PIL's 32-bit, 16-bit and float single-band modes


def _read_raster(path: str, suffix: str) -> np.ndarray:
    """The array of a .npy or TIFF file, bands last: (H, W) or (H, W, C)."""
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise DataError(f"cannot read image {path}: {err}") from err
        return bands_last(array, path)
    tifffile = _tifffile()
    try:
        with tifffile.TiffFile(path) as tiff:
            array = _tiff_pixels(tiff.series[0])
    except Exception as err:  # tifffile raises many types on damaged files
        raise DataError(f"cannot read image {path}: {str(err).strip() or type(err).__name__}") from err
    return bands_last(array, path)


def _tiff_pixels(series) -> np.ndarray:
    """A tifffile series' pixels, bands last (planar TIFFs store them first)."""
    array, axes = series.asarray(), series.axes
    if len(axes) == 3 and axes[0] in "SCI" and axes[1:] == "YX":
        array = np.moveaxis(array, 0, -1)
    return array


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _tifffile():
    try:
        import tifffile
    except ImportError as err:
        raise UserError("reading TIFF images needs tifffile: pip install 'atrous[tiff]'") from err
    return tifffile


def bands_last(array: np.ndarray, path: str) -> np.ndarray:
    """(H, W) or (H, W, C); an array stored (C, H, W) with C smaller than H and W is moved."""
    if array.ndim == 3 and array.shape[0] < min(array.shape[1:]) and array.shape[-1] > array.shape[0]:
        array = np.moveaxis(array, 0, -1)
    if array.ndim not in (2, 3) or 0 in array.shape:
        raise DataError(f"image {path} has shape {array.shape}; expected (H, W) or (H, W, bands)")
    return array


def as_image_tensor(array: np.ndarray, path: str) -> torch.Tensor:
    """An (H, W[, C]) array as atrous' image tensor: uint8 (3, H, W) for an 8-bit image of 1 or 3
    bands (a photograph: grey repeated, as PIL's RGB conversion does), float32 (C, H, W) for
    anything else (other band counts, 16-bit, float), the values kept."""
    if array.dtype.kind not in "uifb":
        raise DataError(f"image {path} holds {array.dtype} values; expected integers or floats")
    array = array[..., None] if array.ndim == 2 else array
    if array.dtype == np.uint8 and array.shape[-1] in (1, 3):
        return torch.from_numpy(np.repeat(array, 3 // array.shape[-1], axis=-1)).permute(2, 0, 1).contiguous()
    values = array.astype(np.float32)
    if not np.isfinite(values).all():
        raise DataError(f"image {path} holds NaN or infinite values; fill them (e.g. with the band's mean) first")
    return torch.from_numpy(values).permute(2, 0, 1).contiguous()


def decode_image(data: bytes, what: str = "image", *, max_pixels: int | None = None,
                 formats: Sequence[str] | None = None) -> torch.Tensor:
    """An image file's bytes (e.g. an upload) as uint8 (3, H, W), converted as `read_image`
    does. The size declared in the header is checked against `max_pixels` before any pixel
    is decoded, so a small file that expands to gigabytes is refused cheaply. `formats`
    limits the PIL decoders tried (e.g. ("PNG", "JPEG")); None tries all."""
    if not data:
        raise DataError(f"{what} is empty (0 bytes)")
    if data.startswith(_NPY_MAGIC) or (data[:4] in _TIFF_MAGIC and (formats is None or "TIFF" in formats)):
        return _decode_raster(data, what, max_pixels)
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
        image = ImageOps.exif_transpose(image)
        return as_image_tensor(np.asarray(image), what) if image.mode in _DEEP_MODES else _as_rgb_tensor(image)
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(f"{what} is too large: {err}") from err
    except _DECODE_ERRORS as err:
        raise DataError(f"cannot decode {what} ({image.format}, {width}x{height}; damaged or truncated): "
                        f"{str(err).strip() or type(err).__name__}") from err


_NPY_MAGIC = b"\x93NUMPY"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


def _decode_raster(data: bytes, what: str, max_pixels: int | None) -> torch.Tensor:
    """A TIFF's or .npy file's bytes as `read_image` reads the file."""
    if data.startswith(_NPY_MAGIC):
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise DataError(f"cannot decode {what} (.npy): {err}") from err
    else:
        tifffile = _tifffile()
        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tiff:
                series = tiff.series[0]
                height, width = (series.shape[i] for i in (series.axes.index("Y"), series.axes.index("X")))
                if max_pixels is not None and height * width > max_pixels:
                    raise ImageTooLarge(f"{what} is {width}x{height} = {width * height / 1e6:.1f} megapixels; "
                                        f"the limit is {max_pixels / 1e6:.1f}")
                array = _tiff_pixels(series)
        except DataError:
            raise
        except Exception as err:  # tifffile raises many types on damaged data
            raise DataError(f"cannot decode {what} (TIFF; damaged or truncated): "
                            f"{str(err).strip() or type(err).__name__}") from err
    image = as_image_tensor(bands_last(array, what), what)
    if max_pixels is not None and image.shape[-1] * image.shape[-2] > max_pixels:
        raise ImageTooLarge(f"{what} is {image.shape[-1]}x{image.shape[-2]}; the limit is {max_pixels / 1e6:.1f} "
                            "megapixels")
    return image


def _as_rgb_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) uint8 of a loaded 8-bit PIL image."""
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
