"""A folder of saliency maps, one per image of a fixation data set, read and checked.

:class:`SaliencyMaps` ``(folder, dataset)`` finds the map of image ``i`` by the stem of its stimulus
file (``<stem>.npy``, ``.png``, ``.jpg`` or ``.jpeg``; :data:`MAP_SUFFIXES`, in that order of
preference) and reads it as a float64 2-D array:

- NPY: a 2-D array (or ``(H, W, 1)``) of finite numbers, any scale and sign;
- PNG/JPEG: grayscale, or RGB (or a palette) whose three channels are equal (a colour-mapped
  picture of a map is not a map); an alpha channel is ignored; 16-bit PNGs keep their 16 bits.

A map may have any size with the image's aspect ratio (within one pixel of rounding, either way):
:meth:`SaliencyMaps.at_size` resamples it (bilinear, antialiased when shrinking). Every problem is a
:class:`~dgstudy.io.DataError` naming the file: no map for an image (the names tried are listed),
an unreadable file, a wrong shape (not 2-D, or another aspect ratio), non-finite values or a
constant map (no information about where people look). :meth:`SaliencyMaps.check` reads every map
once and records the data set's range, ``value_range``, for :meth:`SaliencyMaps.normalized`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .io import DataError

MAP_SUFFIXES = (".npy", ".png", ".jpg", ".jpeg")


def read_map(path: Path) -> np.ndarray:
    """One map file as a 2-D float64 array (see the module docstring); DataError naming ``path``."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            a = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as im:
                im.seek(0)
                if im.mode.startswith("I;16"):
                    im = im.convert("I")
                elif im.mode in ("P", "PA", "LA"):        # a palette's indices are not values
                    im = im.convert("RGB")
                a = np.asarray(im)
    except FileNotFoundError as e:
        raise DataError(f"{path}: saliency map file is missing") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise DataError(f"{path}: saliency map does not read ({e})") from e
    if a.ndim == 3 and a.shape[2] in (3, 4):
        rgb = a[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise DataError(f"{path}: a colour image is not a saliency map (its RGB channels differ); "
                            "save the map itself, as one channel")
        a = rgb[..., 0]
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim != 2 or min(a.shape) < 1:
        raise DataError(f"{path}: a saliency map must be a 2-D array, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise DataError(f"{path}: a saliency map must hold real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise DataError(f"{path}: saliency map holds {int((~np.isfinite(a)).sum())} non-finite values")
    if a.max() == a.min():
        raise DataError(f"{path}: saliency map is constant ({a.min():g} everywhere): it says nothing "
                        "about where people look")
    return a


def resample(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``a`` (2-D) resampled to ``size`` = (h, w): bilinear (``align_corners=False``), antialiased
    when shrinking (so that a map shrunk to a coarse grid is its local average, not a sample)."""
    size = (int(size[0]), int(size[1]))
    if a.shape == size:
        return a
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))[None, None]
    shrink = size[0] < a.shape[0] or size[1] < a.shape[1]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=shrink)[0, 0].numpy()


class SaliencyMaps:
    """The saliency maps in ``folder`` for the images of ``dataset`` (module docstring)."""

    def __init__(self, folder, dataset):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"{self.folder}: saliency map folder does not exist")
        self.dataset = dataset
        self.value_range: tuple[float, float] | None = None
        present = {p.name: p for p in self.folder.iterdir() if p.is_file()}
        self.paths: list[Path] = []
        for stim in dataset.stimuli:
            stem = Path(stim).stem
            found = next((present[stem + s] for s in MAP_SUFFIXES if stem + s in present), None)
            if found is None:      # a case-insensitive suffix (MAP.PNG) counts too
                found = next((p for n, p in sorted(present.items())
                              if Path(n).stem == stem and Path(n).suffix.lower() in MAP_SUFFIXES), None)
            if found is None:
                raise DataError(f"{self.folder}: no saliency map for image {Path(stim).name} (looked for "
                                f"{', '.join(stem + s for s in MAP_SUFFIXES)})")
            self.paths.append(found)

    def __len__(self) -> int:
        return len(self.paths)

    def raw(self, i: int) -> np.ndarray:
        """Map ``i`` as stored (2-D float64), its aspect ratio checked against image ``i``'s."""
        a = read_map(self.paths[i])
        H, W = (int(s) for s in self.dataset.sizes[i])
        h, w = a.shape
        # the same aspect ratio: one side of the map within one map pixel of the other scaled
        if abs(h - w * H / W) > 1.0 and abs(w - h * W / H) > 1.0:
            raise DataError(f"{self.paths[i]}: saliency map is {w}x{h} px, which does not have the "
                            f"aspect ratio of its image {Path(self.dataset.stimuli[i]).name} ({W}x{H} px)")
        return a

    def at_size(self, i: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """Map ``i`` resampled to ``size`` (default: image ``i``'s size), float64."""
        size = tuple(int(s) for s in self.dataset.sizes[i]) if size is None else size
        return resample(self.raw(i), size)

    def check(self, progress: bool = False) -> "SaliencyMaps":
        """Read every map once (all problems surface here, naming the file); record
        ``value_range``, the smallest and largest value over the data set's maps."""
        from tqdm.auto import tqdm

        lo, hi = np.inf, -np.inf
        for i in tqdm(range(len(self)), desc="read maps", unit="map", disable=not progress, leave=False):
            a = self.raw(i)
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
        self.value_range = (lo, hi)
        return self

    def normalized(self, i: int, size: tuple[int, int] | None = None, per: str = "dataset") -> np.ndarray:
        """Map ``i`` at ``size`` scaled to [0, 1]: ``per='dataset'`` by the data set's range
        (:meth:`check`; a map's values keep their meaning across images, as pysaliency's
        ``optimize_saliency_map_conversion`` does), ``per='image'`` by the map's own range."""
        a = self.at_size(i, size)
        if per == "image":
            lo, hi = float(a.min()), float(a.max())
            if hi == lo:
                raise DataError(f"{self.paths[i]}: saliency map is constant at size {size}")
        elif per == "dataset":
            if self.value_range is None:
                self.check()
            lo, hi = self.value_range
        else:
            raise ValueError(f"per must be 'dataset' or 'image', got {per!r}")
        return np.clip((a - lo) / (hi - lo), 0.0, 1.0)
