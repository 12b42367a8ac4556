"""The README's table "As a visitor hears it": a translator folder on speech it never trained on,
through the kiosk's live front end, scored by what a visitor reads and hears.

Usage: python training/scripts/visitor_table.py --model models/demo --work runs/visitor
                                                [--limit 30] [--human-limit 80] [--jobs 2]
                                                [--sets a,b] [--sets-dir DIR] [--ceiling-set pico]

Steps (each cached under WORK; re-running continues where it stopped):
 1. the held-out sentences: `tolk-train synth-corpus --no-audio` with the options of
    `make demo-model` (the demo model's own test split; text only);
 2. the test sets: `tolk-train voices` (see training/scripts/voices.py): espeak-ng voices the
    model was trained on and others, MBROLA, SVOX Pico, Piper, Kokoro's Japanese voices speaking
    English and French, human French and English recordings, simulated rooms, babble and sound
    effects;
 3. every entry through `tolk translate --events` (energy VAD, endpointing, streaming unit
    extraction, decoder, vocoder: the kiosk's path), subtitles, confidence and speech kept;
 4. Whisper base (training/scripts/asr_whisper.py) on the output speech in the target language,
    and, for human recordings, on the source (to flag recordings that do not say their text);
 5. DNSMOS (training/scripts/dnsmos.py) of the output speech and of the reference speech (the
    espeak-ng rendition of the target sentence; for human sets, the recording itself), on the
    first --dnsmos-limit utterances of each row.
Prints the markdown table and writes WORK/table.json.

Columns: exact = subtitle equals the reference translation (case, punctuation and spaces aside);
BLEU / chrF of the subtitles (sacreBLEU, 13a / chrF2); ASR-BLEU / ASR-chrF of Whisper's
transcript of the output speech against the reference translation, both normalised with
Whisper's normalisers, beside the same recognizer on the reference speech (ceiling); DNSMOS
overall of output / reference; no speech = share of utterances with no translated audio at all.
"""
import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import subprocess
import sys

import sacrebleu

TRAIN = "target/release/tolk-train"
TOLK = "target/release/tolk"
PY = sys.executable
HERE = os.path.dirname(os.path.abspath(__file__))
# The first five are the voices --ceiling-set may name (voices a translator's vocoders imitate).
SYNTH_SETS = ["espeak-seen", "espeak-other", "mbrola", "pico", "piper", "kokoro", "room-small-1m",
              "room-office-2m", "room-hall-4m", "babble-10db", "effects-5db"]
HUMAN_SETS = ["human-fr", "human-en"]
LABELS = {
    "espeak-seen": "espeak-ng en-us / fr-fr (trained on)",
    "espeak-other": "espeak-ng, other voices and variants",
    "mbrola": "MBROLA (13 voices)",
    "pico": "SVOX Pico",
    "piper": "Piper en_US-joe",
    "kokoro": "Kokoro, Japanese-accented (5 voices)",
    "human-fr": "human French (Tux Paint)",
    "human-en": "human English (Tux Paint, KTuberling)",
    "room-small-1m": "room 3.5x3 m, RT60 0.3 s, 1 m",
    "room-office-2m": "room 6x4.5 m, RT60 0.5 s, 2 m",
    "room-hall-4m": "hall 14x9 m, RT60 1.0 s, 4 m",
    "babble-10db": "babble, 10 dB SNR",
    "effects-5db": "sound effects, 5 dB SNR",
}


def norm(x):
    return " ".join(re.sub(r"[^\w']", " ", x.lower()).split())


def read_jsonl(p):
    with open(p, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def run(cmd, **kw):
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, **kw)


def translate(entry, set_dir, out_dir, model):
    """One entry through `tolk translate`, cached as OUT/<id>.json (+ .wav)."""
    cache = os.path.join(out_dir, entry["id"] + ".json")
    if os.path.exists(cache):
        with open(cache) as f:
            return json.load(f)
    d = f"{entry['language']}-{entry['target_language']}"
    wav = os.path.join(out_dir, entry["id"] + ".wav")
    p = subprocess.run(
        [TOLK, "--threads", "1", "translate", os.path.join(set_dir, entry["audio"]), "-o", wav,
         "--model", model, "--direction", d, "--events"],
        capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"tolk translate {entry['id']} failed: {p.stderr.strip()}")
    finals, confs, not_understood, samples = [], [], 0, 0
    for line in p.stdout.splitlines():
        ev = json.loads(line)
        if ev["event"] == "subtitle_final":
            finals.append(ev["text"])
            confs.append(ev["confidence"])
        elif ev["event"] == "not_understood":
            not_understood += 1
            confs.append(ev["confidence"])
        elif ev["event"] == "audio_chunk":
            samples += ev["samples"]
    r = {"id": entry["id"], "direction": d, "hypothesis": " ".join(finals),
         "utterances": len(finals) + not_understood, "not_understood": not_understood,
         # One number per clip: the least confident of its utterances.
         "confidence": min(confs) if confs else 0.0, "samples": samples, "wav": wav}
    with open(cache + ".tmp", "w") as f:
        json.dump(r, f)
    os.replace(cache + ".tmp", cache)
    return r


def whisper(wavs, lang, refs, work):
    """Normalised transcripts of `wavs` and normalised `refs` (cached in WORK)."""
    out = os.path.join(work, "asr.json")
    if not os.path.exists(out):
        os.makedirs(work, exist_ok=True)
        with open(os.path.join(work, "wavs.txt"), "w") as f:
            f.write("".join(w + "\n" for w in wavs))
        with open(os.path.join(work, "refs.txt"), "w") as f:
            f.write("".join(r.replace("\n", " ") + "\n" for r in refs))
        run([PY, os.path.join(HERE, "asr_whisper.py"), "--list", os.path.join(work, "wavs.txt"),
             "--language", lang, "--references", os.path.join(work, "refs.txt"), "--out", out,
             "--threads", "2"])
    with open(out) as f:
        j = json.load(f)
    return [t["normalized"] for t in j["transcripts"]], j["references_normalized"]


def dnsmos(wavs, work):
    out = os.path.join(work, "dnsmos.json")
    if not wavs:
        return None
    if not os.path.exists(out):
        os.makedirs(work, exist_ok=True)
        with open(os.path.join(work, "wavs.txt"), "w") as f:
            f.write("".join(w + "\n" for w in wavs))
        run([PY, os.path.join(HERE, "dnsmos.py"), "--list", os.path.join(work, "wavs.txt"), "--out", out])
    with open(out) as f:
        s = [x["ovrl"] for x in json.load(f)["scores"] if x["ovrl"] is not None]
    return sum(s) / len(s) if s else None


def auroc(pos, neg):
    """P(a right translation scores higher than a wrong one), ties counted half."""
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/demo")
    ap.add_argument("--work", default="runs/visitor")
    ap.add_argument("--limit", type=int, default=30, help="sentence pairs per synthetic set")
    ap.add_argument("--human-limit", type=int, default=80, help="recordings per human set")
    ap.add_argument("--dnsmos-limit", type=int, default=12)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--sets", help="comma-separated rows to measure (default: every set)")
    ap.add_argument("--sets-dir", help="rendered test sets to reuse (default: WORK/sets)")
    ap.add_argument("--ceiling-set", default="espeak-seen",
                    help="set whose rendition of the target sentence is the ASR ceiling and the "
                         "DNSMOS reference: the voice the model's vocoders imitate")
    args = ap.parse_args()
    w = args.work
    wanted = SYNTH_SETS + HUMAN_SETS
    if args.sets:
        wanted = args.sets.split(",")
        unknown = [x for x in wanted if x not in SYNTH_SETS + HUMAN_SETS]
        if unknown:
            sys.exit(f"visitor_table: unknown set(s) {', '.join(unknown)}")
    if args.ceiling_set not in SYNTH_SETS[:5]:
        sys.exit(f"visitor_table: --ceiling-set is one of {', '.join(SYNTH_SETS[:5])}")
    corpus = os.path.join(w, "corpus")
    if not os.path.exists(os.path.join(corpus, "test.jsonl")):
        run([TRAIN, "synth-corpus", "--no-audio", "--out", corpus, "--seed", "1", "--pairs", "6000",
             "--dev", "300", "--test", "300", "--mono", "300", "--voices", "en-us,fr-fr"])
    sets_dir = args.sets_dir or os.path.join(w, "sets")
    test = os.path.join(corpus, "test.jsonl")
    needed = set(wanted) | {args.ceiling_set}
    for names, limit in ((SYNTH_SETS, args.limit), (HUMAN_SETS, args.human_limit)):
        todo = [s for s in names
                if s in needed and not os.path.exists(os.path.join(sets_dir, f"{s}.jsonl"))]
        if todo:
            run([TRAIN, "voices", "--sentences", test, "--out", sets_dir, "--set", ",".join(todo),
                 "--limit", str(limit)])
    ceil = args.ceiling_set
    seen = {e["id"]: e for e in read_jsonl(os.path.join(sets_dir, f"{ceil}.jsonl"))}

    def reference_wav(e):
        """The ceiling set's rendition of the target sentence (the vocoders' voice), if any."""
        m = re.match(r"^(?:[a-z0-9-]+?)-(test-\d+)-(en|fr)$", e["id"])
        if not m:
            return None
        r = seen.get(f"{ceil}-{m.group(1)}-{e['target_language']}")
        return os.path.join(sets_dir, r["audio"]) if r else None

    rows, every = [], []
    for s in wanted:
        entries = read_jsonl(os.path.join(sets_dir, f"{s}.jsonl"))
        out_dir = os.path.join(w, "live", s)
        os.makedirs(out_dir, exist_ok=True)
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as ex:
            results = list(ex.map(lambda e: translate(e, sets_dir, out_dir, args.model), entries))
        for d in ("en-fr", "fr-en"):
            pick = [(e, r) for e, r in zip(entries, results) if r["direction"] == d]
            if not pick:
                continue
            src, tgt = d.split("-")
            es = [e for e, _ in pick]
            rs = [r for _, r in pick]
            refs = [e["target_text"] for e in es]
            hyps = [r["hypothesis"] for r in rs]
            cell = os.path.join(w, "score", f"{s}-{d}")
            asr_h, asr_refs = whisper([r["wav"] for r in rs], tgt, refs, os.path.join(cell, "asr-out"))
            ref_wavs = [reference_wav(e) for e in es]
            ceiling = None
            if all(ref_wavs):
                # The same reference files recur across sets: one run per list of files.
                key = hashlib.sha256("\n".join(ref_wavs).encode()).hexdigest()[:16]
                asr_c, _ = whisper(ref_wavs, tgt, [], os.path.join(w, "score", f"ceiling-{tgt}-{key}"))
                ceiling = {"bleu": sacrebleu.corpus_bleu(asr_c, [asr_refs]).score,
                           "chrf": sacrebleu.corpus_chrf(asr_c, [asr_refs]).score}
            keep = list(range(len(es)))
            src_agree = None
            if s in HUMAN_SETS:
                # Recordings that do not say their text (Whisper on the source disagrees).
                asr_s, src_refs = whisper([os.path.join(sets_dir, e["audio"]) for e in es], src,
                                          [e["text"] for e in es], os.path.join(cell, "asr-src"))
                keep = [i for i in keep
                        if sacrebleu.sentence_chrf(asr_s[i], [src_refs[i]]).score >= 50.0]
                src_agree = len(keep)
            spoken = [r for r in rs if r["samples"] > 0]
            n_d = args.dnsmos_limit
            dn_out = dnsmos([r["wav"] for r in spoken[:n_d]], os.path.join(cell, "dnsmos-out"))
            dn_ref_wavs = ([os.path.join(sets_dir, e["audio"]) for e in es[:n_d]] if s in HUMAN_SETS
                           else [x for x in ref_wavs[:n_d] if x])
            dn_ref = dnsmos(dn_ref_wavs, os.path.join(cell, "dnsmos-ref"))
            exact = [norm(h) == norm(r) for h, r in zip(hyps, refs)]
            row = {
                "set": s, "label": LABELS[s], "direction": d, "n": len(es),
                "exact": sum(exact),
                "bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
                "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
                "asr_bleu": sacrebleu.corpus_bleu(asr_h, [asr_refs]).score,
                "asr_chrf": sacrebleu.corpus_chrf(asr_h, [asr_refs]).score,
                "ceiling": ceiling, "dnsmos": dn_out, "dnsmos_ref": dn_ref,
                "no_speech": sum(r["samples"] == 0 for r in rs),
                "source_asr_agrees": src_agree,
            }
            if s in HUMAN_SETS and keep:
                kh, kr = [hyps[i] for i in keep], [refs[i] for i in keep]
                row["agreeing"] = {"n": len(keep), "exact": sum(exact[i] for i in keep),
                                   "bleu": sacrebleu.corpus_bleu(kh, [kr]).score,
                                   "chrf": sacrebleu.corpus_chrf(kh, [kr]).score}
            rows.append(row)
            every.extend({"right": x, "confidence": r["confidence"], "set": s, "direction": d}
                         for x, r in zip(exact, rs))
            print(json.dumps(row), file=sys.stderr)

    pos = [x["confidence"] for x in every if x["right"]]
    neg = [x["confidence"] for x in every if not x["right"]]
    conf = {"auroc": auroc(pos, neg), "right": len(pos), "wrong": len(neg)}
    if pos:
        # The threshold that keeps 90 % of right translations, and what gets through it.
        t = sorted(pos)[int(0.1 * len(pos))]
        passed_wrong = sum(c >= t for c in neg)
        passed = passed_wrong + sum(c >= t for c in pos)
        conf.update(threshold=t, wrong_share_passed=passed_wrong / max(passed, 1),
                    wrong_rejected=sum(c < t for c in neg) / max(len(neg), 1))
    with open(os.path.join(w, "table.json"), "w") as f:
        json.dump({"model": args.model, "ceiling_set": ceil, "rows": rows, "confidence": conf},
                  f, indent=1)

    f1 = lambda v: "n/a" if v is None else f"{v:.1f}"
    f2 = lambda v: "n/a" if v is None else f"{v:.2f}"
    print("| condition | dir | n | exact | BLEU | chrF | ASR-BLEU (ceiling) | ASR-chrF (ceiling) "
          "| DNSMOS out / ref | no speech |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        c = r["ceiling"] or {}
        print(f"| {r['label']} | {r['direction']} | {r['n']} | {r['exact']} | {f1(r['bleu'])} | "
              f"{f1(r['chrf'])} | {f1(r['asr_bleu'])} ({f1(c.get('bleu'))}) | "
              f"{f1(r['asr_chrf'])} ({f1(c.get('chrf'))}) | {f2(r['dnsmos'])} / "
              f"{f2(r['dnsmos_ref'])} | {r['no_speech'] / r['n']:.0%} |")
        if "agreeing" in r:
            a = r["agreeing"]
            print(f"| ... whose source Whisper agrees with (chrF >= 50) | {r['direction']} | "
                  f"{a['n']} | {a['exact']} | {f1(a['bleu'])} | {f1(a['chrf'])} | | | | |")
    print()
    print(f"Confidence (geometric-mean text-token probability) over {len(every)} utterances: "
          f"AUROC right vs wrong {f2(conf['auroc'])}", end="")
    if "threshold" in conf:
        print(f"; at {conf['threshold']:.3f} (keeps 90 % of the {conf['right']} right ones) "
              f"{conf['wrong_rejected']:.0%} of the {conf['wrong']} wrong ones are refused and "
              f"{conf['wrong_share_passed']:.0%} of what passes is wrong.")
    else:
        print()


if __name__ == "__main__":
    main()
