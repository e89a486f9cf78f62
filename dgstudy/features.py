"""Backbone features of every image of a dataset, in a resumable, crash-safe HDF5 store.

:func:`extract` writes (or completes) a store; :class:`FeatureStore` reads it; :func:`compute`
gives one image's features exactly as the store holds them. One image: uint8 RGB -> float in
[0, 1] -> downsampled by ``downsample`` (antialiased bilinear, :func:`input_size`) -> the
backbone (its own normalisation) -> each layer ``(C, h, w)`` (with ``pool_stride``: a layer
finer than that stride average-pooled down to it, :func:`pool_layer`) cast to ``dtype`` (float16 by
default; overflow raises). The readout's input, :func:`stack_layers` (``FeatureStore.stacked``,
:func:`compute_stacked`), puts every layer onto one grid laid evenly over the image, each cell's
value taken where its receptive fields are centred (:mod:`dgstudy.backbones.geometry`). A store's root attributes (:data:`ATTR_KEYS`) say which network made
it (backbone, architecture, weights hash, :data:`NETWORK_KEYS`), for which dataset (checksum),
layers, downsample and dtype; an existing store that differs in any of :data:`MATCH_KEYS` is
refused, never reused. No file is modified in place: finished images go to atomically written
shards that are merged at the end, so a kill at any moment loses at most the unfinished shard,
and a rerun resumes. Layout, pipeline details and measurements: ``docs/features.md``.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import backbones
from .backbones import geometry
from ._version import __version__
from .feature_shards import (consolidate, image_key, parts_dir, read_attrs, scan, stored_images,
                             write_part, writer_lock)
from .datasets.pixels import round_half_up
from .io import DataError
from .paths import data_dir
from .util import to_device

FORMAT_VERSION = 3        # 3: the geometry version recorded (features placed by their receptive fields)
ATTR_KEYS = ("backbone", "architecture", "weights_sha256", "network_id", "layers", "downsample",
             "dtype", "dataset", "dataset_checksum", "n_images", "dgstudy_version", "autocast_bf16",
             "resize", "format_version", "pool_stride", "mirror", "geometry_version")
OPTIONAL_KEYS = ("pool_stride", "mirror")   # absent = None (not pooled), as in every store written before them
# attributes that must agree for a store to be resumed / reused
MATCH_KEYS = ("backbone", "architecture", "weights_sha256", "network_id", "layers", "downsample",
              "dtype", "dataset_checksum", "autocast_bf16", "format_version", "pool_stride", "mirror",
              "geometry_version")
# what defines the network a store's features came from (checked again by training and predict)
NETWORK_KEYS = ("backbone", "architecture", "weights_sha256")
RESIZE_METHOD = ("torch bilinear antialias=True align_corners=False on float [0,1]; "
                 "size floor(H/d + 1/2), floor(W/d + 1/2)")
DTYPES = ("float16", "float32")
REBUILD = ("delete the file (and its .parts folder) and extract again: dgstudy.features.extract(...), "
           "or make reproduce, which extracts what is missing")
OUTDATED = ("it was written before dgstudy placed each layer's cells where their receptive fields are "
            f"(geometry version {geometry.GEOMETRY_VERSION}): its features and every run trained on them "
            "are outdated; " + REBUILD)


# -- paths ---------------------------------------------------------------------------
def default_store_path(dataset, backbone, downsample=2, layers: Sequence[str] | None = None,
                       dtype: str = "float16", pool_stride: int | None = None, mirror: bool = False) -> Path:
    """``data/features/<dataset>-<checksum[:12]>-<backbone>-a<architecture id>-ds<d>.h5``.

    The dataset checksum keeps subsets apart, the architecture id
    (:func:`dgstudy.backbones.architecture_id`) architecture variants under one backbone name
    (the weights hash is a checked attribute). A non-default layer set adds ``-L<hash>`` and a
    non-default dtype adds ``-<dtype>``, a ``pool_stride`` ``-p<stride>`` and ``mirror`` (the
    features of the left-right mirrored images) ``-mirror``, so differing stores never collide.
    """
    name = backbone if isinstance(backbone, str) else backbone.name
    stem = (f"{dataset.name}-{dataset.checksum[:12]}-{name}-a{backbones.architecture_id(backbone)}"
            f"-ds{_fmt_downsample(downsample)}")
    if layers is not None and list(layers) != backbones.default_layers(name):
        stem += "-L" + hashlib.sha256(",".join(layers).encode()).hexdigest()[:8]
    if dtype != "float16":
        stem += f"-{dtype}"
    if pool_stride:
        stem += f"-p{int(pool_stride)}"
    if mirror:
        stem += "-mirror"
    return data_dir() / "features" / f"{stem}.h5"


def _fmt_downsample(d) -> str:
    return str(int(d)) if float(d).is_integer() else str(float(d))


# -- one image -------------------------------------------------------------------------
def input_size(height: int, width: int, downsample: float) -> tuple[int, int]:
    """The size fed to the backbone: (H / d, W / d) rounded, halves up, at least 1."""
    return round_half_up(height / downsample), round_half_up(width / downsample)


def prepare(image: np.ndarray, downsample: float = 2, mirror: bool = False):
    """uint8 (H, W, 3) -> float32 tensor (3, h, w) in [0, 1], downsampled (module docstring);
    ``mirror``: of the left-right mirrored image."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    if mirror:
        image = image[:, ::-1]
    x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).to(torch.float32) / 255.0
    size = input_size(image.shape[0], image.shape[1], downsample)
    if size != tuple(image.shape[:2]):
        x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return x


def pool_layer(t: torch.Tensor, stride: int, pool_stride: int | None) -> torch.Tensor:
    """A layer (B, C, h, w) of backbone stride ``stride`` average-pooled to stride ``pool_stride``
    (windows of ``pool_stride // stride`` pixels, the last partial row and column dropped as a
    strided convolution drops them); unchanged if ``pool_stride`` is None or not finer."""
    if not pool_stride or stride >= pool_stride:
        return t
    if pool_stride % stride:
        raise ValueError(f"pool_stride {pool_stride} is not a multiple of the layer's stride {stride}")
    k = pool_stride // stride
    return F.avg_pool2d(t.to(torch.float32), kernel_size=k, stride=k)


def _run_batch(backbone, x, layers, dtype: str, autocast_bf16: bool, pool_stride: int | None = None
               ) -> list[dict[str, np.ndarray]]:
    """Features of a batch (B, 3, h, w) as one {layer: (C, h, w) array of ``dtype``} per image."""
    device = backbone.mean.device
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
        feats = backbone.features(to_device(x, device), layers)
        feats = {layer: pool_layer(t, int(backbone.strides[layer]), pool_stride) for layer, t in feats.items()}
    out = [dict() for _ in range(x.shape[0])]
    for layer, t in feats.items():
        arr = t.to(torch.float32).cpu().numpy()
        with np.errstate(over="ignore"):
            cast = arr.astype(dtype)
        if not np.isfinite(cast).all():
            raise FloatingPointError(f"{backbone.name}/{layer}: features overflow {dtype} "
                                     f"(max |x| = {np.abs(arr).max():.3g}); use dtype='float32'")
        for b in range(len(out)):
            out[b][layer] = cast[b]
    return out


def compute(backbone, image: np.ndarray, layers: Sequence[str] | None = None, downsample: float = 2,
            dtype: str = "float16", autocast_bf16: bool = False, pool_stride: int | None = None
            ) -> dict[str, np.ndarray]:
    """The features of one uint8 (H, W, 3) image exactly as :func:`extract` stores them.

    Returns {layer: (C, h, w) ndarray of ``dtype``} (the dtype round-trip included). ``backbone``
    is a backbone object (:func:`dgstudy.backbones.get`); it runs on its own device.
    Bitwise equal to the stored features when ``extract`` ran with ``batch_size=1`` (the
    default) on the same device with the same number of CPU threads (oneDNN's reductions depend
    on both); otherwise equal up to float rounding (1 float16 ulp seen between 1 and 2 threads).
    """
    _check_dtype(dtype)
    layers = backbone.check_layers(layers)
    return _run_batch(backbone, prepare(image, downsample)[None], layers, dtype, autocast_bf16,
                      pool_stride)[0]


def compute_stacked(backbone, image: np.ndarray, layers: Sequence[str] | None = None,
                    downsample: float = 2, dtype: str = "float16", autocast_bf16: bool = False,
                    pool_stride: int | None = None) -> np.ndarray:
    """The readout input of one image exactly as ``FeatureStore.stacked`` gives it: :func:`compute`
    then :func:`stack_layers`."""
    layers = backbone.check_layers(layers)
    feats = compute(backbone, image, layers, downsample, dtype, autocast_bf16, pool_stride)
    size = input_size(image.shape[0], image.shape[1], downsample)
    return stack_layers(feats, layer_axes(backbone.axes(*size), layers, pool_stride), size, layers)


def _check_dtype(dtype):
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")


# -- attributes ----------------------------------------------------------------------------
def store_attrs(dataset, backbone, layers, downsample, dtype, autocast_bf16=False, pool_stride=None,
                mirror=False) -> dict:
    """The root attributes of a store (:data:`ATTR_KEYS`)."""
    return dict(backbone=backbone.name, architecture=backbone.architecture,
                weights_sha256=backbone.weights_sha256, network_id=backbone.network_id, layers=list(layers),
                downsample=float(downsample) if not float(downsample).is_integer() else int(downsample),
                dtype=dtype, dataset=dataset.name, dataset_checksum=dataset.checksum,
                n_images=int(len(dataset)), dgstudy_version=__version__,
                autocast_bf16=bool(autocast_bf16), resize=RESIZE_METHOD, format_version=FORMAT_VERSION,
                pool_stride=int(pool_stride) if pool_stride else None, mirror=True if mirror else None,
                geometry_version=geometry.GEOMETRY_VERSION)


def _check_attrs(path: Path, have: dict, want: dict) -> None:
    diff = [f"{k}: file has {have.get(k)!r}, requested {want[k]!r}" for k in MATCH_KEYS
            if have.get(k) != want[k]]
    if diff:
        raise DataError(f"{path}: existing feature store does not match the request ("
                        + "; ".join(diff) + "). Delete it (and its .parts folder) or choose another out="
                        + (f"; {OUTDATED}" if have.get("format_version", 1) < FORMAT_VERSION else ""))


def extract(dataset, backbone, layers: Sequence[str] | None = None, downsample: float = 2,
            dtype: str = "float16", device: str = "cpu", out: str | os.PathLike | None = None,
            batch_size: int = 1, compression: str | None = None, images: Sequence[int] | None = None,
            autocast_bf16: bool = False, part_size: int = 16, progress: bool = True,
            pool_stride: int | None = None, mirror: bool = False) -> Path:
    """Extract features of ``images`` (default: all) of ``dataset`` into an HDF5 store; return its path.

    ``backbone``: a name for :func:`dgstudy.backbones.get` or a backbone object (moved to
    ``device``; ``'auto'`` = CUDA if available). ``layers``: default = the backbone's defaults.
    ``out``: default :func:`default_store_path`. Images of equal size are batched
    (``batch_size``); a shard is written every ``part_size`` images. ``compression``: None,
    ``'gzip'`` or ``'lzf'`` (h5py filters). ``pool_stride``: layers finer than this backbone
    stride are stored average-pooled to it (:func:`pool_layer`; early layers of a large image would
    take gigabytes). ``mirror``: the features of every image mirrored left-right (image ``i``'s
    entry holds the mirrored image's features; flip augmentation, ``TrainConfig.flip_source``). Resumable and crash-safe (module docstring); an
    existing store with other attributes raises DataError naming what differs.
    """


    _check_dtype(dtype)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    bb = backbones.get(backbone, device=device) if isinstance(backbone, str) else backbone.to(device).eval()
    layers = bb.check_layers(layers)
    out = Path(out) if out is not None else default_store_path(dataset, bb, downsample, layers, dtype,
                                                               pool_stride, mirror)
    pdir = parts_dir(out)
    attrs = store_attrs(dataset, bb, layers, downsample, dtype, autocast_bf16, pool_stride, mirror)
    wanted = list(range(len(dataset))) if images is None else sorted({int(i) for i in images})
    bad = [i for i in wanted if not 0 <= i < len(dataset)]
    if bad:
        raise IndexError(f"images {bad[:5]} out of range for {dataset.name} ({len(dataset)} images)")

    out.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(out):
        return _extract_locked(dataset, bb, layers, downsample, dtype, out, pdir, attrs, wanted,
                               batch_size, compression, autocast_bf16, part_size, progress)


def _extract_locked(dataset, bb, layers, downsample, dtype, out, pdir, attrs, wanted, batch_size,
                    compression, autocast_bf16, part_size, progress) -> Path:

    done = scan(out, pdir, attrs, _check_attrs)
    todo = [i for i in wanted if i not in done]
    groups: dict[tuple, list[int]] = defaultdict(list)   # equal sizes batch together
    for i in todo:
        groups[tuple(int(s) for s in dataset.sizes[i])].append(i)
    buffer: dict[int, tuple] = {}
    t0 = time.perf_counter()
    with tqdm(total=len(todo), unit="img", desc=f"{bb.name} features", disable=not progress or not todo) as bar:
        for size, idx in groups.items():
            for s in range(0, len(idx), batch_size):
                batch = idx[s:s + batch_size]
                x = torch.stack([prepare(dataset.image(i), downsample, bool(attrs["mirror"])) for i in batch])
                axes = layer_axes(bb.axes(*x.shape[-2:]), layers, attrs["pool_stride"])
                where = {"axes": json.dumps({l: geometry.axes_to_list(a) for l, a in axes.items()})}
                for i, feats in zip(batch, _run_batch(bb, x, layers, dtype, autocast_bf16,
                                                      attrs["pool_stride"])):
                    buffer[i] = (feats, size, tuple(x.shape[-2:]), where)
                bar.update(len(batch))
                if len(buffer) >= part_size:
                    _written(write_part, pdir, attrs, buffer, compression)
                    buffer = {}
    if buffer:
        _written(write_part, pdir, attrs, buffer, compression)
    if pdir.exists():
        _written(consolidate, out, pdir, attrs)
    if todo and progress:
        dt = time.perf_counter() - t0
        print(f"{bb.name}: {len(todo)} images in {dt:.1f} s ({len(todo) / dt:.2f} img/s) -> {out} "
              f"({out.stat().st_size / 2**20:.1f} MiB)")
    return out


def _written(write, out, *args):
    """``write(out, *args)``; a full disk becomes an OSError that says what is kept (the shards
    and the store written so far: every finished image) and how to resume."""
    try:
        return write(out, *args)
    except OSError as e:
        if e.errno != errno.ENOSPC and "No space left" not in str(e):
            raise
        raise OSError(errno.ENOSPC, f"no space left on the device while writing features into {out} "
                                    "(nothing was half-written: the images finished before are kept in "
                                    "their shards); free some space and extract again to resume") from e


# -- reading -------------------------------------------------------------------------------------
def layer_axes(axes: dict, layers: Sequence[str], pool_stride: int | None = None) -> dict:
    """{layer: (rows, columns)} of ``layers`` as stored, from the backbone's ``axes`` at the input
    size (``SequentialBackbone.axes``): a layer finer than ``pool_stride`` as :func:`pool_layer`
    pools it."""
    out = {}
    for layer in layers:
        ay, ax = axes[layer]
        if pool_stride and ay.step < pool_stride:
            k = int(pool_stride // ay.step)
            ay, ax = ay.pooled(k), ax.pooled(k)
        out[layer] = (ay, ax)
    return out


def stack_layers(feats: dict[str, np.ndarray], axes: dict, input_hw, layers: Sequence[str] | None = None
                 ) -> np.ndarray:
    """Every layer ``(C_k, h_k, w_k)`` resampled onto one image-aligned grid and concatenated
    along channels: float32 ``(sum C_k, h, w)``.

    ``axes``: each layer's cell centres (:func:`layer_axes`) in the network input of ``input_hw``.
    The grid has as many cells as the layer with the most (the first such layer on ties), laid
    evenly over the input: cell ``(i, j)`` is centred at ``((i + 1/2) H / h, (j + 1/2) W / w)``
    (:func:`dgstudy.backbones.geometry.image_aligned`), the convention of every other grid in
    dgstudy, so the readout's map can be resized to the image like any map. Each layer is
    linearly interpolated from the centres of its receptive fields to those positions
    (:func:`dgstudy.backbones.geometry.resample_matrix`; beyond its outermost centres, the edge
    value), so a cell's value lands where its receptive field is centred.
    """
    layers = list(feats) if layers is None else list(layers)
    target = max(layers, key=lambda l: feats[l].shape[-2] * feats[l].shape[-1])
    h, w = feats[target].shape[-2:]
    grid_y = geometry.image_aligned(h, float(input_hw[0])).centres()
    grid_x = geometry.image_aligned(w, float(input_hw[1])).centres()
    out = np.empty((sum(feats[l].shape[0] for l in layers), h, w), dtype=np.float32)
    c = 0
    for l in layers:
        arr = np.asarray(feats[l], dtype=np.float32)
        ay, ax = axes[l]
        if (ay.n, ax.n) != arr.shape[-2:]:
            raise ValueError(f"layer {l}: features {arr.shape[-2:]} but its grid is {(ay.n, ax.n)}")
        ry = geometry.resample_matrix(ay, grid_y).astype(np.float32)
        rx = geometry.resample_matrix(ax, grid_x).astype(np.float32)
        out[c:c + arr.shape[0]] = ry @ arr @ rx.T
        c += arr.shape[0]
    return out


class FeatureStore:
    """Read-only access to a feature store written by :func:`extract`.

    ``.attrs`` (root attributes, ``layers`` as a list), ``.layers``, ``.images`` (sorted stored
    image indices), ``.has(i)``, ``.read(i, layers)`` ({layer: (C, h, w) array of the stored
    dtype}), ``.stacked(i, layers)`` (float32 ``(C_total, h, w)``, see :func:`stack_layers`).
    The HDF5 file is opened lazily once per process.
    """
    def __init__(self, path: str | os.PathLike):

        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: feature store is missing (run dgstudy.features.extract)")
        try:
            with h5py.File(self.path, "r") as f:
                self.attrs = read_attrs(f)
                self.images = sorted(stored_images(f))
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"{self.path}: not a readable HDF5 feature store, truncated or corrupt "
                            f"({type(e).__name__}: {e}); {REBUILD}") from e
        if self.attrs.get("format_version", 1) < FORMAT_VERSION or \
                self.attrs.get("geometry_version") != geometry.GEOMETRY_VERSION:
            raise DataError(f"{self.path}: feature store of format {self.attrs.get('format_version', 1)}, "
                            f"geometry {self.attrs.get('geometry_version')}: {OUTDATED}")
        missing = [k for k in ATTR_KEYS if k not in self.attrs and k not in OPTIONAL_KEYS]
        if missing:
            raise DataError(f"{self.path}: feature store lacks attributes {missing} (written before "
                            "dgstudy 0.2, by a builder whose network is not recorded); delete it and "
                            "extract again")
        self.layers = list(self.attrs["layers"])
        self._have = set(self.images)
        self._file = None
        self._pid = None

    def __repr__(self) -> str:
        a = self.attrs
        return (f"FeatureStore({str(self.path)!r}: {a['backbone']} {self.layers} ds{a['downsample']} "
                f"{a['dtype']}, {len(self.images)}/{a['n_images']} images of {a['dataset']})")

    def __len__(self) -> int:
        return len(self.images)

    def has(self, i: int) -> bool:
        return int(i) in self._have

    @property
    def complete(self) -> bool:
        return len(self.images) == self.attrs["n_images"]

    def _h5(self):

        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def read(self, i: int, layers: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        layers = self.layers if layers is None else list(layers)
        unknown = [l for l in layers if l not in self.layers]
        if unknown:
            raise KeyError(f"{self.path}: layers {unknown} not stored (stored: {self.layers})")
        if not self.has(i):
            raise DataError(f"{self.path}: image {i} is not in the store "
                            f"({len(self.images)} of {self.attrs['n_images']} images stored)")
        try:
            g = self._h5()["images"][image_key(i)]
            out = {l: g[l][()] for l in layers}
        except (OSError, KeyError, ValueError) as e:   # a corrupt chunk fails its fletcher32 checksum
            raise DataError(f"{self.path}: the features of image {i} are unreadable, the store is "
                            f"corrupt ({type(e).__name__}: {e}); {REBUILD}") from e
        bad = {l: a.shape for l, a in out.items() if a.ndim != 3 or a.dtype != np.dtype(self.attrs["dtype"])}
        if bad:
            raise DataError(f"{self.path}: image {i} has features of the wrong shape or dtype {bad} "
                            f"(expected (C, h, w) {self.attrs['dtype']}); {REBUILD}")
        return out

    def input_size(self, i: int) -> tuple[int, int]:
        """The size (h, w) of image ``i`` as fed to the backbone."""
        return tuple(int(v) for v in self._h5()["images"][image_key(i)].attrs["input_size"])

    def axes(self, i: int, layers: Sequence[str] | None = None) -> dict:
        """{layer: (rows, columns)} :class:`~dgstudy.backbones.geometry.Axis` of image ``i``'s
        layers as stored (its ``axes`` attribute, traced from the network when it was extracted)."""
        layers = self.layers if layers is None else list(layers)
        entry = json.loads(self._h5()["images"][image_key(i)].attrs["axes"])
        return {l: geometry.axes_from_list(entry[l]) for l in layers}

    def stacked(self, i: int, layers: Sequence[str] | None = None) -> np.ndarray:
        """Image ``i``'s layers on one image-aligned grid (:func:`stack_layers`)."""
        layers = self.layers if layers is None else list(layers)
        return stack_layers(self.read(i, layers), self.axes(i, layers), self.input_size(i), layers)

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state
