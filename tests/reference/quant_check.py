"""Reference for the weight-only quantization format (models/src/llama/quant.rs), written from the
documented layout alone with numpy, so that a packing or rounding mistake on either side shows.

int8: per output channel, scale = max|w_row| / 127, q = round(w / scale) in [-127, 127], i8 [out, in]
      + f32 scales [out].
int4: groups of G along the input, scale = max|w_group| / 7, q = round(w / scale) in [-7, 7],
      nibble = q + 8, byte j of a row = nibble(2j) | nibble(2j + 1) << 4 (low nibble first):
      u8 [out, in / 2] + f32 scales [out, in / G].
Rounding is half away from zero; an all-zero row/group has scale 0 and codes 0.

Writes into OUT (seeded): weights.safetensors (f32 originals), int8.safetensors and
int4_g32.safetensors (<name>.qweight / <name>.scales), int8_dequant.safetensors and
int4_g32_dequant.safetensors (numpy's dequantization), reference.json.

Usage: quant_check.py OUT
"""

import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file

GROUP = 32


def round_half_away(x):
    x = x.astype(np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def quantize(w, qmax, group):
    """Codes and scales of w [out, in] in blocks of `group` columns (group = in: per row)."""
    out, inp = w.shape
    blocks = w.reshape(out, inp // group, group)
    scales = (np.abs(blocks).max(axis=-1) / np.float32(qmax)).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1))
    ratio = (blocks / safe[..., None]).astype(np.float32)  # f32 division, as in Rust
    q = np.clip(round_half_away(ratio), -qmax, qmax)
    q = np.where(scales[..., None] > 0, q, 0).astype(np.int8)
    return q.reshape(out, inp), scales


def dequantize(q, scales, group):
    out, inp = q.shape
    blocks = q.astype(np.float32).reshape(out, inp // group, group)
    return (blocks * scales[..., None]).reshape(out, inp).astype(np.float32)


def pack_int4(q):
    n = (q.astype(np.int16) + 8).astype(np.uint8)
    return (n[:, 0::2] | (n[:, 1::2] << 4)).astype(np.uint8)


def unpack_int4(p):
    lo = (p & 0x0F).astype(np.int16) - 8
    hi = (p >> 4).astype(np.int16) - 8
    out = np.empty((p.shape[0], p.shape[1] * 2), dtype=np.int8)
    out[:, 0::2] = lo
    out[:, 1::2] = hi
    return out


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(20260107)
    weights = {
        "proj_a": (rng.standard_normal((48, 64)) * 0.05).astype(np.float32),
        "proj_b": (rng.standard_normal((16, 128)) * 0.02).astype(np.float32),
        "proj_c": (rng.standard_normal((32, 96)) * 0.1).astype(np.float32),
    }
    # Outliers, an all-zero row and an all-zero group, exact ties (x.5 steps).
    weights["proj_a"][3, 7] = 1.5
    weights["proj_a"][5, :] = 0.0
    weights["proj_b"][2, 32:64] = 0.0
    weights["proj_c"][0, :4] = np.array([127.0, -3.5, 2.5, -0.5], dtype=np.float32)

    int8, int8_deq, int4, int4_deq = {}, {}, {}, {}
    worst = {}
    for name, w in weights.items():
        q8, s8 = quantize(w, 127, w.shape[1])
        int8[f"{name}.qweight"] = q8
        int8[f"{name}.scales"] = s8.reshape(-1)
        d8 = dequantize(q8, s8, w.shape[1])
        int8_deq[name] = d8
        q4, s4 = quantize(w, 7, GROUP)
        packed = pack_int4(q4)
        assert (unpack_int4(packed) == q4).all()
        int4[f"{name}.qweight"] = packed
        int4[f"{name}.scales"] = s4
        d4 = dequantize(unpack_int4(packed), s4, GROUP)
        int4_deq[name] = d4
        # The documented bound: |w - deq| <= scale / 2 (plus float rounding).
        e8 = np.abs(w - d8) / np.maximum(np.repeat(s8, w.shape[1], axis=1), 1e-30)
        e4 = np.abs(w - d4) / np.maximum(np.repeat(s4, GROUP, axis=1), 1e-30)
        assert e8.max() <= 0.5 + 1e-5 and e4.max() <= 0.5 + 1e-5, (name, e8.max(), e4.max())
        worst[name] = {"int8_max_abs_err": float(np.abs(w - d8).max()),
                       "int4_max_abs_err": float(np.abs(w - d4).max())}

    save_file(weights, os.path.join(out, "weights.safetensors"))
    save_file(int8, os.path.join(out, "int8.safetensors"))
    save_file(int8_deq, os.path.join(out, "int8_dequant.safetensors"))
    save_file(int4, os.path.join(out, f"int4_g{GROUP}.safetensors"))
    save_file(int4_deq, os.path.join(out, f"int4_g{GROUP}_dequant.safetensors"))
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({"names": sorted(weights), "group_size": GROUP, "worst": worst}, f, indent=2)
    print(json.dumps(worst, indent=2))


if __name__ == "__main__":
    main()
