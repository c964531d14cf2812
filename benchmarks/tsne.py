"""How long the t-SNE of figure 6 takes: scikit-learn's TSNE (what sddlib.viz.features uses), and openTSNE
when it is installed, on CIFAR-100-sized features (10,000 test images, 256 features: resnet8x4's width) made
of 100 Gaussian class clusters, and on the sample sizes the figure draws.

    .venv/bin/python benchmarks/tsne.py                     # 1,000 / 2,000 / 10,000 images
    .venv/bin/python benchmarks/tsne.py --sizes 1000 --record

Timings depend on the machine's load: run it on an idle machine (`uptime` is printed beside the numbers).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
from recording import heading, publish

def features(n: int, dim: int = 256, classes: int = 100, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, dim))
    return (centres[rng.integers(0, classes, n)] + rng.normal(0, 1, (n, dim))).astype(np.float64)


def time_sklearn(x: np.ndarray) -> float:
    from sklearn.manifold import TSNE
    start = time.perf_counter()
    TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", random_state=0).fit_transform(x)
    return time.perf_counter() - start


def time_opentsne(x: np.ndarray) -> float | None:
    try:
        from openTSNE import TSNE
    except ImportError:
        return None
    start = time.perf_counter()
    TSNE(perplexity=min(30.0, (len(x) - 1) / 3), initialization="pca", random_state=0, n_jobs=os.cpu_count()).fit(x)
    return time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 10000])
    ap.add_argument("--record", action="store_true", help="append the table to benchmarks/results.md")
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    rows = []
    for n in args.sizes:
        x = features(n)
        sk, ot = time_sklearn(x), time_opentsne(x)
        rows.append(f"| {n} | {sk:.1f} | {'not installed' if ot is None else f'{ot:.1f}'} |")
        print(rows[-1], flush=True)
    table = (heading("t-SNE time (figure 6)", load) + f"`.venv/bin/python benchmarks/tsne.py --sizes "
             f"{' '.join(map(str, args.sizes))}`: seconds for one embedding of n images x 256 features "
             "(100 Gaussian class clusters; figure 6 draws one per model).\n\n"
             "| images | scikit-learn TSNE (s) | openTSNE (s) |\n|---:|---:|---:|\n" + "\n".join(rows) + "\n")
    publish(table, args.record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
