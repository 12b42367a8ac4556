#!/usr/bin/env python3
"""Reference-free speech quality: DNSMOS P.835 (SIG, BAK, OVRL) and P.808 of WAV files, with the
ONNX models the PyPI package `speechmos` bundles (its `dnsmos.run`, non-personalized).

DNSMOS scores 9.01-s windows; speechmos repeats a shorter clip until it is that long. A clip
shorter than 0.1 s (or empty: no speech came out) has no score (null) instead of looping.
Samples are clipped to [-1, 1] as the package requires.

Usage: dnsmos.py --list wavs.txt --out scores.json
Writes {"scorer", "scores": [{"wav", "ovrl", "sig", "bak", "p808"} or null fields]}.
"""

import argparse
import json
import os
import sys
import wave

import numpy as np

SETUP = "run deploy/host/setup.sh (installs tests/reference/requirements*.txt into .venv)"


def read_wav(path):
    with wave.open(path, "rb") as w:
        n, ch, sw, rate = w.getnframes(), w.getnchannels(), w.getsampwidth(), w.getframerate()
        raw = w.readframes(n)
    if sw != 2:
        raise ValueError(f"{8 * sw}-bit PCM is not supported (16-bit expected)")
    x = np.frombuffer(raw, dtype="<i2").astype(np.float32).reshape(-1, ch).mean(axis=1) / 32768.0
    if rate != 16000:
        import soxr

        x = soxr.resample(x, rate, 16000).astype(np.float32)
    return np.clip(np.nan_to_num(x), -1.0, 1.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    try:
        from speechmos import dnsmos
    except ImportError as e:
        sys.exit(f"dnsmos: DNSMOS needs the PyPI packages speechmos, librosa and onnxruntime ({e}); {SETUP}")
    with open(args.list, encoding="utf-8") as f:
        wavs = [l.rstrip("\n") for l in f if l.strip()]
    scores = []
    for path in wavs:
        try:
            x = read_wav(path)
        except (OSError, ValueError, EOFError, wave.Error) as e:
            sys.exit(f"dnsmos: cannot read {path}: {e}")
        s = {"wav": path, "ovrl": None, "sig": None, "bak": None, "p808": None}
        if len(x) >= 1600 and np.max(np.abs(x)) > 0:
            r = dnsmos.run(x, sr=16000)
            s.update(ovrl=float(r["ovrl_mos"]), sig=float(r["sig_mos"]), bak=float(r["bak_mos"]),
                     p808=float(r["p808_mos"]))
        scores.append(s)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"scorer": "DNSMOS P.835 + P.808 (speechmos 0.0.1.1)", "scores": scores}, f, indent=1)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
