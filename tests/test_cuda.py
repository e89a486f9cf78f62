"""The paper's path on CUDA: extraction, training, prediction and the local cluster's GPU workers.
Run where a CUDA device is present; elsewhere reported as skipped ("no CUDA device"), not passed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dgstudy import datasets, features, tasks, training
from dgstudy.baselines import CenterBias
from dgstudy.config import TrainConfig
from test_features import toy_backbone
from test_training import small_config, synthetic_features

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_auto_is_cuda():
    assert TrainConfig(device="auto").device == "cuda"


def test_extraction_on_cuda_matches_cpu(data_root, tmp_path):
    ds = datasets.load("synthetic", n_images=4, size=(64, 96))
    cpu = features.FeatureStore(features.extract(ds, toy_backbone(), downsample=1, out=tmp_path / "cpu.h5",
                                                 device="cpu", progress=False))
    gpu = features.FeatureStore(features.extract(ds, toy_backbone(), downsample=1, out=tmp_path / "gpu.h5",
                                                 device="cuda", batch_size=2, progress=False))
    for i in range(4):
        for layer in ("p1", "p2"):
            np.testing.assert_allclose(gpu.read(i)[layer].astype(np.float32), cpu.read(i)[layer].astype(np.float32),
                                       rtol=2e-3, atol=2e-3)     # within float16 storage


def test_vgg19_random_features_on_cuda(data_root, tmp_path):
    ds = datasets.load("synthetic", n_images=2, size=(96, 128))
    cpu = features.compute(features.backbones.get("vgg19_random"), ds.image(0), ["relu5_4"])
    gpu = features.compute(features.backbones.get("vgg19_random", device="cuda"), ds.image(0), ["relu5_4"])
    scale = float(np.abs(cpu["relu5_4"].astype(np.float32)).max())
    assert np.abs(gpu["relu5_4"].astype(np.float32) - cpu["relu5_4"].astype(np.float32)).max() <= 1e-2 * scale


def test_training_on_cuda_learns_like_cpu(data_root):
    ds = datasets.load("synthetic", size=(48, 64), n_subjects=10, fixations_per_subject=10, seed=1, beta=8.0)
    feats = synthetic_features(ds)
    train, val, _ = datasets.fold_split(len(ds), 0, 3, 0)
    cb = CenterBias.fit(ds, images=train)
    logs = {}
    for device in ("cpu", "cuda"):
        model, log, _ = training.train_fold(small_config(max_epochs=5, device=device), feats, ds, train, val,
                                            cb.log_density_for_size, seed=0, progress=False)
        assert next(model.parameters()).device.type == device
        logs[device] = log["val_LL"].to_numpy()
    np.testing.assert_allclose(logs["cuda"], logs["cpu"], atol=1e-3)


def test_local_cluster_has_one_worker_per_gpu(monkeypatch):
    monkeypatch.delenv(tasks.WORKERS_ENV, raising=False)
    assert tasks.local_cluster_options()["n_workers"] == torch.cuda.device_count()
