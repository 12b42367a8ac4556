"""K-means reference: sklearn `KMeans.predict` for 10,000 vectors, K = 1000, D = 768.

Usage: python tests/reference/kmeans.py OUT_DIR
Writes OUT_DIR/centroids.npy (float32 [1000, 768]), OUT_DIR/km1000.bin (the fitted sklearn model
as joblib, the format of fairseq's `..._L11_km1000.bin`; models/convert/kmeans_joblib.py exports
it), OUT_DIR/reference.safetensors (`x`: float32 [10000, 768], `labels`: int64 sklearn predict,
`margin`: second-nearest minus nearest squared distance, float64) and OUT_DIR/reference.json.
"""

import json
import sys
from pathlib import Path

import joblib
import numpy as np
import sklearn
import torch
from safetensors.torch import save_file
from sklearn.cluster import KMeans

K, D, N_FIT, N_TEST = 1000, 768, 12000, 10000


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    # A mixture of K Gaussians (HuBERT-like: clustered, not uniform), fitted with a few Lloyd
    # iterations so the centroids are sklearn's own.
    means = rng.normal(size=(K, D)).astype(np.float32)
    fit = (means[rng.integers(0, K, N_FIT)] + rng.normal(scale=0.7, size=(N_FIT, D))).astype(np.float32)
    km = KMeans(n_clusters=K, init=means, n_init=1, max_iter=3, random_state=0).fit(fit)
    # Test vectors: half from the mixture, half broad noise (many near-equidistant points).
    x = np.concatenate([
        means[rng.integers(0, K, N_TEST // 2)] + rng.normal(scale=0.7, size=(N_TEST // 2, D)),
        rng.normal(scale=1.5, size=(N_TEST - N_TEST // 2, D)),
    ]).astype(np.float32)
    labels = km.predict(x)
    c64 = km.cluster_centers_.astype(np.float64)
    d = (c64 ** 2).sum(1)[None] - 2 * x.astype(np.float64) @ c64.T
    d.sort(axis=1)
    margin = d[:, 1] - d[:, 0]
    np.save(out / "centroids.npy", km.cluster_centers_.astype(np.float32))
    joblib.dump(km, out / "km1000.bin")
    save_file({"x": torch.from_numpy(x), "labels": torch.from_numpy(labels.astype(np.int64)),
               "margin": torch.from_numpy(margin)}, str(out / "reference.safetensors"))
    (out / "reference.json").write_text(json.dumps({
        "k": K, "d": D, "n": N_TEST, "sklearn": sklearn.__version__,
        "centroid_dtype": str(km.cluster_centers_.dtype), "min_margin": float(margin.min()),
        "distinct_labels": int(len(set(labels.tolist()))),
    }, indent=1))


if __name__ == "__main__":
    main()
