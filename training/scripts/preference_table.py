"""Prints the README's preference tables from `make preference-table` outputs.

Usage: python training/scripts/preference_table.py RUNS_DIR
Reads RUNS_DIR/pairs/*/summary.json, RUNS_DIR/pref-*/summary.json and
RUNS_DIR/pref-eval/<model>-<direction>/report.json.
"""
import json
import os
import re
import sys

runs = sys.argv[1] if len(sys.argv) > 1 else "runs"
DIRS = ["en-fr", "fr-en"]


def load(path):
    with open(path) as f:
        return json.load(f)


def report(model, d):
    p = os.path.join(runs, "pref-eval", f"{model}-{d}", "report.json")
    return load(p) if os.path.exists(p) else None


def norm(x):
    return " ".join(re.sub(r"[^\w']", " ", x.lower()).split())


def exact(r):
    u = r["per_utterance"]
    return sum(norm(x["hypothesis"]) == norm(x["reference"]) for x in u) / max(1, len(u))


def pairs_kept(variant):
    n, seen = 0, 0
    for d in DIRS:
        p = os.path.join(runs, "pairs", f"{variant}-{d}", "summary.json")
        if os.path.exists(p):
            s = load(p)
            n += s.get("pairs_kept", s.get("pairs", 0))
            seen += s.get("entries_seen", 0)
    return n, seen


def pref(run):
    p = os.path.join(runs, run, "summary.json")
    return load(p) if os.path.exists(p) else None


def asr_bleu(model):
    p = os.path.join(runs, "pref-eval-asr", f"{model}-fr-en", "report.json")
    if not os.path.exists(p):
        return ""
    r = load(p)
    return f"{r['asr_bleu']:.1f}" if r.get("asr_bleu") is not None else ""


def model_cells(model):
    cells = []
    for d in DIRS:
        r = report(model, d)
        cells.append(f"{r['bleu']:.1f}" if r and r.get("bleu") is not None else "?")
    for d in DIRS:
        r = report(model, d)
        cells.append(f"{r['meteor']:.3f}" if r and r.get("meteor") is not None else "?")
    for d in DIRS:
        r = report(model, d)
        cells.append(f"{100 * exact(r):.0f} %" if r else "?")
    for d in DIRS:
        r = report(model, d)
        cells.append(f"{r['unit_error_rate']:.3f}" if r and r.get("unit_error_rate") is not None else "?")
    cells.append(asr_bleu(model))
    return cells


def dev_cells(run):
    s = pref(run)
    if not s or not s.get("dev_after"):
        return ["", ""]
    b, a = s["dev_before"], s["dev_after"]
    return [
        f"{b['reward_margin']:.3f} -> {a['reward_margin']:.3f}",
        f"{100 * b['reward_accuracy']:.0f} -> {100 * a['reward_accuracy']:.0f} %",
    ]


HEAD = ("| S2TT BLEU en->fr | fr->en | METEOR en->fr | fr->en | exact en->fr | fr->en "
        "| unit error en->fr | fr->en | ASR-BLEU fr->en |")
SEP = "|---" * 9

print("SFT vs SFT + DPO vs SFT + SimPO (pairs: monolingual speech, BLEU of the back-translation)\n")
print("| model | pairs | dev reward margin | dev reward accuracy " + HEAD)
print("|---|---|---|---" + SEP + "|")
n, seen = pairs_kept("mono-bleu")
for model, run, name in [("sft", None, "SFT (models/demo)"), ("dpo", "pref-dpo", "SFT + DPO"),
                         ("simpo", "pref-simpo", "SFT + SimPO")]:
    pc = f"{n} of {seen}" if run else ""
    dc = dev_cells(run) if run else ["", ""]
    print("| " + " | ".join([name, pc] + dc + model_cells(model)) + " |")

print("\nWhere the pairs come from (DPO, BLEU judge)\n")
print("| pairs | kept | dev reward margin | dev reward accuracy " + HEAD)
print("|---|---|---|---" + SEP + "|")
for variant, model, run, name in [
        ("mono-bleu", "dpo", "pref-dpo", "monolingual speech, judged by back-translation"),
        ("paired-bleu", "dpo-paired-bleu", "pref-dpo-paired-bleu", "paired S2ST data, judged against the reference"),
        ("train1500-bleu", "dpo-train1500-bleu", "pref-dpo-train1500-bleu",
         "more monolingual speech (1,500 training utterances per direction, targets unused)")]:
    n, seen = pairs_kept(variant)
    print("| " + " | ".join([name, f"{n} of {seen}"] + dev_cells(run) + model_cells(model)) + " |")

print("\nThe judge metric (DPO, monolingual speech, back-translation)\n")
print("| judge | kept | dev reward margin | dev reward accuracy " + HEAD)
print("|---|---|---|---" + SEP + "|")
for variant, model, run, name in [("mono-bleu", "dpo", "pref-dpo", "BLEU"),
                                  ("mono-meteor", "dpo-mono-meteor", "pref-dpo-mono-meteor", "METEOR"),
                                  ("mono-wer", "dpo-mono-wer", "pref-dpo-mono-wer", "WER"),
                                  ("mono-bleu-units", "dpo-mono-bleu-units", "pref-dpo-mono-bleu-units",
                                   "BLEU, back-translated from the candidate's units (no vocoder round trip)")]:
    n, seen = pairs_kept(variant)
    print("| " + " | ".join([name, f"{n} of {seen}"] + dev_cells(run) + model_cells(model)) + " |")
