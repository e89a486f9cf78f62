"""Reading any user image as RGB for prediction.

The EXIF orientation tag is applied first (``ImageOps.exif_transpose``, so the image is the way a
viewer shows it), grayscale is replicated to three channels, an alpha channel is **composited on
white**, 16-bit images are scaled to 8 bits, and only the first frame of a multi-frame file is used.
Anything that does not decode raises :class:`dgstudy.io.DataError` naming the file.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .io import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


# ----------------------------------------------------------------------------------------------
# Reading images
# ----------------------------------------------------------------------------------------------
def read_rgb(image, exif_transpose: bool = True) -> np.ndarray:
    """Any image (file path, encoded bytes, binary file object or array) as an (H, W, 3) uint8 RGB array.

    Paths, bytes and file objects (e.g. an upload; messages name a file object by its ``name``):
    EXIF orientation applied (unless ``exif_transpose=False``: dataset stimuli are read as
    stored, the way the eye-tracking software showed them), grayscale → RGB, alpha composited on white, 16-bit → 8-bit,
    first frame only. Arrays: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) of uint8 (0–255), other
    integers (0–255), or floats in [0, 1]; (H, W, 4) is composited on white like a file.
    Raises :class:`DataError` naming the file (or describing the array) if it cannot be used.
    """
    if isinstance(image, (str, os.PathLike)):
        return _read_rgb_file(Path(image), str(Path(image)), exif_transpose)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _read_rgb_file(io.BytesIO(image), "image data", exif_transpose)
    if hasattr(image, "read"):
        return _read_rgb_file(image, str(getattr(image, "name", "image data")), exif_transpose)
    return _rgb_from_array(np.asarray(image), what="image array")


def _read_rgb_file(source, what: str, exif_transpose: bool = True) -> np.ndarray:
    """``source``: a path or a binary file object; ``what`` names it in messages."""
    try:
        with Image.open(source) as im:
            im.seek(0)
            if exif_transpose:
                im = ImageOps.exif_transpose(im)
            arr = _pil_to_array(im)
    except FileNotFoundError as e:
        raise DataError(f"{what}: image file is missing") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise DataError(f"{what}: image does not decode ({e})") from e
    return _rgb_from_array(arr, what=what)


def _pil_to_array(im) -> np.ndarray:
    """PIL image → array with 1, 3 or 4 channels in the 0..255 range (uint8)."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        return np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8)   # 65535 → 255
    if mode == "F":
        return np.clip(np.round(np.asarray(im, dtype=np.float64)), 0, 255).astype(np.uint8)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        return np.asarray(im.convert("RGBA"), dtype=np.uint8)
    if mode in ("L", "1"):
        return np.asarray(im.convert("L"), dtype=np.uint8)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _rgb_from_array(a: np.ndarray, what: str) -> np.ndarray:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise DataError(f"{what}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise DataError(f"{what}: empty image of shape {a.shape}")
    if a.dtype == np.uint8:
        u = a
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise DataError(f"{what}: a float image must hold finite values in [0, 1]")
        u = np.round(a * 255.0).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer) or a.dtype == bool:
        if a.min() < 0 or a.max() > 255:
            raise DataError(f"{what}: an integer image must hold values in 0..255 "
                            f"(got {a.min()}..{a.max()})")
        u = a.astype(np.uint8)
    else:
        raise DataError(f"{what}: unsupported image dtype {a.dtype}")
    if u.ndim == 2:
        return np.repeat(u[..., None], 3, axis=2)
    if u.shape[2] == 4:
        return composite_on_white(u)
    return np.ascontiguousarray(u)


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 RGBA → (H, W, 3) uint8 RGB over a white background."""
    rgb = rgba[..., :3].astype(np.float64)
    alpha = rgba[..., 3:4].astype(np.float64) / 255.0
    return np.round(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)


def expand_image_args(args: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; folders replaced by their image files (sorted, not recursive)."""
    out: list[Path] = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                warnings.warn(f"{p}: folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        else:
            out.append(p)
    return out
