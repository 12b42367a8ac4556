"""Exports the centroids of an sklearn k-means model (joblib/pickle, such as fairseq's
`mhubert_base_vp_en_es_fr_it3_L11_km1000.bin`, a MiniBatchKMeans) to safetensors.

Usage: python models/convert/kmeans_joblib.py KM.bin OUT.safetensors
Writes one float32 tensor `centroids` [K, D] (`cluster_centers_`), which tolk's
`units::KMeans::load` reads. Needs scikit-learn (to unpickle) and joblib.
"""

import sys
from pathlib import Path

import joblib
import numpy as np
import torch
from safetensors.torch import save_file


def main() -> None:
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    km = joblib.load(src)
    centers = getattr(km, "cluster_centers_", None)
    if centers is None:
        raise SystemExit(f"{src}: {type(km).__name__} has no cluster_centers_ (not a fitted k-means)")
    c = np.ascontiguousarray(np.asarray(centers, dtype=np.float32))
    if c.ndim != 2:
        raise SystemExit(f"{src}: cluster_centers_ has shape {c.shape}, expected [K, D]")
    save_file({"centroids": torch.from_numpy(c)}, str(dst),
              metadata={"source": src.name, "class": type(km).__name__})
    print(f"{src} -> {dst}: K={c.shape[0]} D={c.shape[1]}", file=sys.stderr)


if __name__ == "__main__":
    main()
