"""The synthetic data set: generated images whose true fixation density is known.

- :func:`load_synthetic` (``datasets.load('synthetic', ...)``): seeded smooth colour-blob images,
  written as PNG, with fixations drawn from :func:`synthetic_log_density` (brighter red = more
  fixations, times a centre bias).
- :class:`SyntheticDataset`: a :class:`~dgstudy.datasets.core.FixationDataset` whose
  ``log_density(i)`` is that generating density (natural log, sums to 1 over the pixels), so the
  data set is also a perfect model of itself.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from ..io import atomic_path
from ..paths import cache_dir
from .core import FixationDataset, make_fixation_table


class SyntheticDataset(FixationDataset):
    """A generated dataset whose true fixation density is known.

    ``log_density(i)`` returns the natural-log density (sums to 1 over pixels) from
    which the fixations of image ``i`` were drawn, so it is also a perfect model.
    """

    true_log_densities: list[np.ndarray]

    def log_density(self, i: int) -> np.ndarray:
        return self.true_log_densities[i]

    def subset(self, images):
        sub = super().subset(images)  # dataclasses.replace keeps the subclass
        sub.true_log_densities = [self.true_log_densities[i] for i in np.asarray(images)]
        return sub


def synthetic_log_density(img: np.ndarray, beta: float = 4.0, center_sigma: float = 0.3) -> np.ndarray:
    """The generating density of the synthetic set: brighter red = more fixations, times a centre bias."""
    h, w = img.shape[:2]
    red = img[..., 0].astype(np.float64) / 255.0
    yy, xx = np.mgrid[0:h, 0:w]
    cb = -0.5 * (((xx + 0.5) / w - 0.5) ** 2 + ((yy + 0.5) / h - 0.5) ** 2) / center_sigma ** 2
    logit = beta * red + cb
    logit -= logit.max()
    return logit - np.log(np.exp(logit).sum())


def load_synthetic(n_images: int = 20, size: tuple[int, int] = (48, 64), n_subjects: int = 5,
                   fixations_per_subject: int = 8, seed: int = 0, beta: float = 4.0,
                   folder: str | os.PathLike | None = None) -> SyntheticDataset:
    """Seeded generated images (smooth colour blobs) with fixations drawn from a known density.

    Images are written as PNG to ``folder`` (default: ``data/cache/synthetic-<hash>/``) so that
    they behave like any other stimuli. ``size`` is (height, width).
    """
    h, w = size
    key = hashlib.sha256(repr((n_images, size, n_subjects, fixations_per_subject, seed, beta)).encode()).hexdigest()[:12]
    folder = Path(folder) if folder else cache_dir() / f"synthetic-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    stimuli, logds, rows = [], [], []
    for i in range(n_images):
        noise = rng.normal(size=(h, w, 3))
        img = np.stack([gaussian_filter(noise[..., c], sigma=max(h, w) / 10) for c in range(3)], -1)
        img = (img - img.min()) / (np.ptp(img) + 1e-12)
        img = (255 * img).astype(np.uint8)
        path = folder / f"{i:04d}.png"
        if not path.exists():
            with atomic_path(path, suffix=".png") as tmp:
                Image.fromarray(img).save(tmp, format="PNG")
        stimuli.append(str(path))
        logd = synthetic_log_density(img, beta=beta)
        logds.append(logd)
        p = np.exp(logd).ravel()
        for s in range(n_subjects):
            idx = rng.choice(p.size, size=fixations_per_subject, p=p / p.sum())
            r, c = np.divmod(idx, w)
            jitter = rng.uniform(0, 1, size=(2, fixations_per_subject))
            for k in range(fixations_per_subject):
                rows.append((i, s, c[k] + jitter[0, k], r[k] + jitter[1, k], k))
    arr = np.array(rows, dtype=np.float64).reshape(-1, 5)
    sizes = np.tile([h, w], (n_images, 1))
    fx, _ = make_fixation_table(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], arr[:, 4], sizes=sizes,
                                origin="synthetic")
    ds = SyntheticDataset(name="synthetic", stimuli=stimuli, sizes=sizes, fixations=fx,
                          source=f"generated (seed={seed})",
                          notes={"generator": "red-channel saliency x centre bias", "beta": beta})
    ds.true_log_densities = logds
    return ds
