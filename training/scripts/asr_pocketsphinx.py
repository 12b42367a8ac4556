#!/usr/bin/env python3
"""English speech recognition with PocketSphinx for `tolk-train eval` (ASR-BLEU).

Reads a list of WAV files (one path per line; 16-bit PCM, mono, 16 kHz) and writes a JSON
file {"recognizer": "pocketsphinx X (en-us)", "transcripts": [{"wav": PATH, "text": HYP}, ...]}
in the order of the list. Uses the en-us acoustic model, language model and dictionary that the
PyPI package ships (pocketsphinx.get_model_path()), with its default settings. Before decoding,
seeded triangular dither of +-1 LSB is added to every file: PocketSphinx's feature front end fails
on stretches of exact digital silence (espeak-ng and vocoder output have them; "where is the train
station" becomes "frankly" without dither, as with `sox -D`).

Usage: asr_pocketsphinx.py --list wavs.txt --out transcripts.json
"""

import argparse
import json
import sys
import wave

import numpy as np


def read_wav(path):
    with wave.open(path, "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2 or w.getframerate() != 16000:
            raise ValueError(
                f"{path}: expected 16-bit mono 16 kHz PCM, got {w.getnchannels()} channel(s), "
                f"{8 * w.getsampwidth()}-bit, {w.getframerate()} Hz"
            )
        return w.readframes(w.getnframes())


def dither(pcm, seed):
    """Triangular (TPDF) dither of +-1 LSB, seeded, on 16-bit PCM bytes."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    rng = np.random.default_rng(seed)
    x = x + rng.random(len(x)) - rng.random(len(x))
    return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", required=True, help="text file with one WAV path per line")
    ap.add_argument("--out", required=True, help="JSON output")
    args = ap.parse_args()
    try:
        import pocketsphinx
    except ImportError as e:
        sys.exit(
            f"pocketsphinx is not installed in this Python ({sys.executable}): {e}; "
            "install it with `pip install -r tests/reference/requirements.txt`"
        )
    with open(args.list, encoding="utf-8") as f:
        wavs = [line.strip() for line in f if line.strip()]
    decoder = pocketsphinx.Decoder(samprate=16000, loglevel="FATAL")
    out = []
    for path in wavs:
        try:
            pcm = read_wav(path)
        except (OSError, ValueError, EOFError, wave.Error) as e:
            sys.exit(f"cannot read {path}: {e}")
        pcm = dither(pcm, seed=0)
        decoder.start_utt()
        decoder.process_raw(pcm, no_search=False, full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        out.append({"wav": path, "text": hyp.hypstr if hyp is not None else ""})
    version = getattr(pocketsphinx, "__version__", None)
    if version is None:
        from importlib.metadata import version as pkg_version

        version = pkg_version("pocketsphinx")
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"recognizer": f"pocketsphinx {version} (en-us)", "transcripts": out}, f, indent=1)


if __name__ == "__main__":
    main()
