"""Speed of dgstudy.metrics.evaluate vs pysaliency 0.2.22 on OSIE, measured side by side in one run.

Both compute LL, IG, AUC, sAUC, NSS, CC, KLDiv and SIM for the same model (random smooth
log-densities times the centre bias, precomputed and kept in memory as float32 so that the model
itself costs nothing) and check that they agree. pysaliency is driven the way the MIT/Tübingen
benchmark code drives it: one saliency-map model per metric. Its empirical saliency maps are not
cached (700 maps would need 2.7 GB), so it blurs them once per image-based metric; the time of
the two extra blurs is measured and the ratio is also given without it.

    python benchmarks/bench_metrics.py [--n-images N]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

if not hasattr(np, "trapz"):          # pysaliency 0.2.22 calls np.trapz (removed in numpy 2.4)
    np.trapz = np.trapezoid


def make_maps(ds, cb, seed=0):
    from scipy.ndimage import zoom
    rng = np.random.default_rng(seed)
    maps = []
    for i, (h, w) in enumerate(ds.sizes):
        noise = zoom(rng.normal(size=(12, 16)), (h / 12, w / 16), order=1)[:h, :w]
        lp = cb.log_density(i) + 1.5 * noise
        lp -= np.log(np.exp(lp).sum())
        maps.append(lp.astype(np.float32))
    return maps


def main(argv=None):
    import pysaliency

    from dgstudy import datasets
    from dgstudy.baselines import CenterBias
    from dgstudy.metrics import KL_EPS, evaluate

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-images", type=int, default=None)
    args = ap.parse_args(argv)
    ds = datasets.load("osie", n_images=args.n_images)
    cb = CenterBias.fit(ds, bandwidth=0.04, uniform_weight=1e-4)
    kernel = 24.0
    print(f"{ds.n_images} images, {ds.n_fixations} fixations; preparing densities ...", flush=True)
    maps = make_maps(ds, cb)
    base = [cb.log_density(i).astype(np.float32) for i in range(len(ds))]

    def model(i):
        lp = maps[i].astype(np.float64)
        return lp - np.log(np.exp(lp).sum())

    def baseline(i):
        lp = base[i].astype(np.float64)
        return lp - np.log(np.exp(lp).sum())

    # -- dgstudy ----------------------------------------------------------------------------------
    t = time.perf_counter()
    ours = evaluate(model, ds, baseline=baseline, kernel_size=kernel)
    t_ours = time.perf_counter() - t
    print(f"dgstudy.metrics.evaluate: {t_ours:.1f} s", flush=True)

    # -- pysaliency -------------------------------------------------------------------------------
    class Wrapped(pysaliency.Model):
        def __init__(self, fn):
            super().__init__(caching=False)
            self.fn = fn

        def _log_density(self, stimulus):
            return self.fn(int(np.asarray(stimulus).flat[0]))

    stimuli = pysaliency.Stimuli([np.full((int(h), int(w)), i, dtype=np.uint16) for i, (h, w) in enumerate(ds.sizes)])
    fx = ds.fixations
    fixations = pysaliency.Fixations.create_without_history(fx["x"].to_numpy(), fx["y"].to_numpy(),
                                                           fx["image"].to_numpy(), subjects=fx["subject"].to_numpy())
    pm, pb = Wrapped(model), Wrapped(baseline)

    def blurred():
        return pysaliency.BluringSaliencyMapModel(pysaliency.DensitySaliencyMapModel(pm), kernel_size=kernel,
                                                  mode="reflect", caching=False)
    empirical = pysaliency.FixationMap(stimuli, fixations, kernel_size=kernel, caching=False)
    ref, times = {}, {}
    jobs = {
        "LL": lambda: pm.information_gain(stimuli, fixations, baseline_model=pysaliency.UniformModel()),
        "IG": lambda: pm.information_gain(stimuli, fixations, baseline_model=pb),
        "AUC": lambda: pysaliency.DensitySaliencyMapModel(pm).AUC(stimuli, fixations, average="image"),
        "sAUC": lambda: pysaliency.ShuffledAUCSaliencyMapModel(pm, pb).AUC(stimuli, fixations,
                                                                         nonfixations="shuffled", average="image"),
        "NSS": lambda: pysaliency.DensitySaliencyMapModel(pm).NSS(stimuli, fixations, average="image"),
        "CC": lambda: blurred().CC(stimuli, empirical),
        "KLDiv": lambda: blurred().image_based_kl_divergence(stimuli, empirical, minimum_value=0,
                                                             log_regularization=KL_EPS,
                                                             quotient_regularization=KL_EPS),
        "SIM": lambda: blurred().SIM(stimuli, empirical),
    }
    for name, job in jobs.items():
        t = time.perf_counter()
        ref[name] = float(job())
        times[name] = time.perf_counter() - t
        print(f"pysaliency {name:<6} {times[name]:7.1f} s   value {ref[name]:.6f}  (dgstudy {ours[name]:.6f})",
              flush=True)
    t = time.perf_counter()
    for s in stimuli:
        empirical.saliency_map(s)
    t_emp = time.perf_counter() - t
    t_ps = sum(times.values())

    worst = max(abs(ours[k] - v) / max(abs(v), 1e-12) for k, v in ref.items())
    print(f"\nagreement: largest relative difference {worst:.2e} over {', '.join(ref)}")
    print(f"pysaliency total {t_ps:.1f} s (of which {2 * t_emp:.1f} s re-blurring empirical maps for KLDiv "
          f"and SIM); dgstudy {t_ours:.1f} s")
    print(f"speed ratio pysaliency / dgstudy: {t_ps / t_ours:.1f}x "
          f"({(t_ps - 2 * t_emp) / t_ours:.1f}x if pysaliency cached its empirical maps)")


if __name__ == "__main__":
    main()
