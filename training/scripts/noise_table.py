"""Noise robustness of translator folders: the README's table of `make noise-table`.

Usage: python training/scripts/noise_table.py RUNS_DIR DEMO_DATA NAME=MODEL [NAME=MODEL ...]

For each model, direction and listening condition (clean test speech; the same with 300 ms of
silence each side and white noise at -60 dBFS or brown noise at -45 dBFS; random draws like the
training augmentation), the first 100 held-out test sentences go through
  - offline: `tolk-train eval` on the whole clip's units (RUNS_DIR/noise-eval/...), and
  - live: `tolk translate` per clip, i.e. the kiosk's front end (energy VAD, endpointing,
    framing, streaming unit extraction) and decoder; the subtitles of every utterance found in
    the clip are joined.
Both are cached per cell under RUNS_DIR/noise-eval/ (report.json, live.json).
Prints, per cell, exact sentences (case and punctuation aside) and BLEU (sacrebleu 13a).
Writes RUNS_DIR/noise-eval/table.json.
"""
import json
import os
import re
import subprocess
import sys

import sacrebleu

runs, data = sys.argv[1], sys.argv[2]
models = [a.split("=", 1) for a in sys.argv[3:]]
corpus = os.path.join(data, "corpus")
units = os.path.join(data, "units-noisy.jsonl")
LIMIT = 100
TRAIN = "target/release/tolk-train"
TOLK = "target/release/tolk"
# condition -> manifest stem per source language (None: test.jsonl, reversed by eval for fr).
CONDITIONS = {
    "clean": {"en": None, "fr": None},
    "white -60 dBFS": {"en": "test-white60-en", "fr": "test-white60-fr"},
    "brown -45 dBFS": {"en": "test-brown45-en", "fr": "test-brown45-fr"},
    "random (as training)": {"en": "test-mixed-en", "fr": "test-mixed-fr"},
}
DIRS = {"en-fr": "en", "fr-en": "fr"}


def norm(x):
    return " ".join(re.sub(r"[^\w']", " ", x.lower()).split())


def read_jsonl(p):
    with open(p) as f:
        return [json.loads(l) for l in f if l.strip()]


def cases(stem, src):
    """(audio path, reference) of the first LIMIT entries, source language `src`."""
    if stem is None:
        out = []
        for e in read_jsonl(os.path.join(corpus, "test.jsonl"))[:LIMIT]:
            if src == "en":
                out.append((os.path.join(corpus, e["audio"]), e["target_text"]))
            else:
                out.append((os.path.join(corpus, e["target_audio"]), e["text"]))
        return out
    return [
        (os.path.join(corpus, e["audio"]), e["target_text"])
        for e in read_jsonl(os.path.join(corpus, stem + ".jsonl"))[:LIMIT]
    ]


def score(hyps, refs):
    exact = sum(norm(h) == norm(r) for h, r in zip(hyps, refs))
    bleu = sacrebleu.corpus_bleu(hyps, [refs]).score
    return {"exact": exact, "n": len(refs), "bleu": round(bleu, 1)}


def cell_dir(name, cond, d):
    return os.path.join(runs, "noise-eval", f"{name}-{d}-{re.sub(r'[^a-z0-9]+', '', cond)}")


def offline(name, model, cond, stem, d):
    out = cell_dir(name, cond, d)
    rep = os.path.join(out, "report.json")
    if not os.path.exists(rep):
        manifest = os.path.join(corpus, (stem or "test") + ".jsonl")
        subprocess.run(
            [TRAIN, "eval", "--model", model, "--manifest", manifest, "--units", units,
             "--direction", d, "--limit", str(LIMIT), "--no-asr", "--out", out],
            check=True, stdout=subprocess.DEVNULL,
        )
    with open(rep) as f:
        r = json.load(f)
    u = r["per_utterance"]
    return score([x["hypothesis"] for x in u], [x["reference"] for x in u])


def live(name, model, cond, stem, d):
    """Cached in the cell's folder as live.json (delete it to measure again)."""
    cache = os.path.join(cell_dir(name, cond, d), "live.json")
    if os.path.exists(cache):
        with open(cache) as f:
            return json.load(f)
    hyps, refs, not_one = [], [], 0
    for audio, ref in cases(stem, DIRS[d]):
        p = subprocess.run(
            [TOLK, "translate", audio, "-o", "/dev/null", "--model", model, "--direction", d,
             "--events"],
            check=True, capture_output=True, text=True,
        )
        finals = [
            json.loads(l)["text"] for l in p.stdout.splitlines()
            if '"subtitle_final"' in l
        ]
        not_one += len(finals) != 1
        hyps.append(" ".join(finals))
        refs.append(ref)
    s = score(hyps, refs)
    s["clips_not_one_utterance"] = not_one
    with open(cache, "w") as f:
        json.dump(s, f)
    return s


table = []
for name, model in models:
    for cond, stems in CONDITIONS.items():
        for d in DIRS:
            stem = stems[DIRS[d]]
            row = {"model": name, "condition": cond, "direction": d,
                   "offline": offline(name, model, cond, stem, d),
                   "live": live(name, model, cond, stem, d)}
            table.append(row)
            print(json.dumps(row), file=sys.stderr)

with open(os.path.join(runs, "noise-eval", "table.json"), "w") as f:
    json.dump(table, f, indent=1)

print("| model | condition | en->fr offline | en->fr live | fr->en offline | fr->en live |")
print("| --- | --- | --- | --- | --- | --- |")
cell = lambda s: f"{s['exact']} / {s['bleu']:.1f}"
for name, _ in models:
    for cond in CONDITIONS:
        r = {x["direction"]: x for x in table if x["model"] == name and x["condition"] == cond}
        print(f"| {name} | {cond} | {cell(r['en-fr']['offline'])} | {cell(r['en-fr']['live'])} | "
              f"{cell(r['fr-en']['offline'])} | {cell(r['fr-en']['live'])} |")
