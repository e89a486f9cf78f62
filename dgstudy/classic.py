"""Classic saliency models, for the study's model comparison: their maps written as a folder.

:data:`MODELS` are OpenCV's contrib ``saliency`` module (``opencv-contrib-python-headless``):

- ``spectral_residual``: Hou & Zhang (CVPR 2007), the log amplitude spectrum's residual after a
  local average, on a 64 x 64 grayscale thumbnail (``StaticSaliencySpectralResidual``);
- ``fine_grained``: Montabone & Soto (2010), centre-surround differences of intensity at several
  scales on the full image (``StaticSaliencyFineGrained``).

:func:`write_maps` computes a model's map for every image of a data set into
``<folder>/<stimulus stem>.npy`` (float32, the size OpenCV returns), one atomic file at a time,
skipping maps already there (an interrupted run resumes). A map folder is then any saliency
model's: :func:`dgstudy.map_density.density_from_maps` makes it a cross-validated density.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .io import DataError, atomic_path
from .paths import cache_dir

MODELS = {
    "spectral_residual": "StaticSaliencySpectralResidual_create",
    "fine_grained": "StaticSaliencyFineGrained_create",
}
LABELS = {"spectral_residual": "Spectral residual (Hou & Zhang 2007)",
          "fine_grained": "Fine-grained (Montabone & Soto 2010)"}


def _saliency_module():
    try:
        import cv2
    except ImportError as e:
        raise ImportError("the classic saliency models need OpenCV's contrib modules: "
                          "pip install opencv-contrib-python-headless (make env installs it)") from e
    if not hasattr(cv2, "saliency"):
        raise ImportError(f"OpenCV {cv2.__version__} at {cv2.__file__} has no saliency module: it is "
                          "not the contrib build; pip install opencv-contrib-python-headless (and "
                          "uninstall opencv-python, which shadows it)")
    return cv2


def compute_map(model: str, rgb: np.ndarray) -> np.ndarray:
    """The saliency map of ``model`` (a key of :data:`MODELS`) for an (H, W, 3) uint8 RGB image."""
    if model not in MODELS:
        raise ValueError(f"unknown classic model {model!r}; choose from {sorted(MODELS)}")
    cv2 = _saliency_module()
    detector = getattr(cv2.saliency, MODELS[model])()
    ok, sal = detector.computeSaliency(np.ascontiguousarray(rgb[..., ::-1]))   # OpenCV wants BGR
    if not ok:
        raise RuntimeError(f"OpenCV's {MODELS[model]} failed on an image of shape {rgb.shape}")
    return np.asarray(sal, dtype=np.float32)


def maps_folder(model: str, dataset) -> Path:
    """Where :func:`write_maps` keeps ``model``'s maps of ``dataset`` by default:
    ``cache_dir()/maps/<model>-<data set>-<checksum>/`` (a changed data set gets a new folder)."""
    return cache_dir() / "maps" / f"{model}-{dataset.name}-{dataset.checksum[:16]}"


def write_maps(model: str, dataset, folder=None, progress: bool = False) -> Path:
    """``model``'s map of every image of ``dataset`` as ``folder/<stem>.npy`` (module docstring;
    default :func:`maps_folder`); returns the folder. A constant map (a flat image) is an error
    naming the image."""
    folder = Path(folder) if folder is not None else maps_folder(model, dataset)
    folder.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(len(dataset)), desc=model, unit="img", disable=not progress, leave=False):
        path = folder / f"{Path(dataset.stimuli[i]).stem}.npy"
        if path.exists():
            continue
        sal = compute_map(model, dataset.image(i))
        if sal.max() == sal.min():
            raise DataError(f"{dataset.stimuli[i]}: {model} gives a constant map for this image")
        with atomic_path(path, suffix=".npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, sal)
    return folder
