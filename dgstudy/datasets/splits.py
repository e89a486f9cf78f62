"""Image-wise cross-validation splits, deterministic in ``seed``.

- :func:`kfold` ``(n_images, k, seed)``: the sorted test images of each of ``k`` folds (a partition
  of ``range(n_images)``, sizes differing by at most one).
- :func:`fold_split` ``(n_images, fold, k, seed)``: (train, validation, test) of fold ``fold``:
  test = fold ``fold``, validation = fold ``(fold + 1) % k``, train = the others.
"""
from __future__ import annotations

import numpy as np


def kfold(n_images: int, k: int = 10, seed: int = 0) -> list[np.ndarray]:
    """Deterministic image-wise K-fold split: the sorted test images of each fold.

    The folds partition ``range(n_images)``; sizes differ by at most one.
    """
    if not 2 <= k <= n_images:
        raise ValueError(f"need 2 <= k <= n_images, got k={k}, n_images={n_images}")
    perm = np.random.default_rng(seed).permutation(n_images)
    return [np.sort(part) for part in np.array_split(perm, k)]


def fold_split(n_images: int, fold: int, k: int = 10, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) images for cross-validation fold ``fold``.

    Test is fold ``fold``; validation (for early stopping) is fold ``(fold + 1) % k``;
    training is every other fold. The three are disjoint and cover all images.
    """
    folds = kfold(n_images, k, seed)
    test, val = folds[fold], folds[(fold + 1) % k]
    train = np.sort(np.concatenate([f for j, f in enumerate(folds) if j not in (fold, (fold + 1) % k)]))
    return train, val, test
