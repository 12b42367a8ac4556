"""The README's table "Preference on unseen voices": the SFT model of make demo-model-voices beside
SFT + DPO and SFT + SimPO (make preference-table-voices), on the visitor rows of voices, rooms and
human speech none of the three trained on.

Usage: python training/scripts/preference_voices_table.py runs/pref-voices

Reads PV/pairs-{en-fr,fr-en}/summary.json (pairs kept), PV/{dpo,simpo}/summary.json (held-out
reward margin and accuracy before -> after) and PV/eval-{sft,dpo,simpo}/table.json (the visitor
table of each model); prints markdown and writes PV/table.json.
"""
import json
import os
import sys

MODELS = [("sft", "SFT"), ("dpo", "SFT + DPO"), ("simpo", "SFT + SimPO")]


def load(p):
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    pv = sys.argv[1]
    kept, seen = 0, 0
    for d in ("en-fr", "fr-en"):
        s = load(os.path.join(pv, f"pairs-{d}", "summary.json"))
        kept += s.get("pairs_kept", s.get("pairs", 0))
        seen += s.get("entries_seen", 0)
    tables = {}
    for key, _ in MODELS:
        p = os.path.join(pv, f"eval-{key}", "table.json")
        if not os.path.exists(p):
            sys.exit(f"preference_voices_table: {p} is missing (make preference-table-voices)")
        tables[key] = {(r["set"], r["direction"]): r for r in load(p)["rows"]}
    out = {"pairs_kept": kept, "entries_seen": seen, "models": {}}
    print(f"Pairs: {kept} kept of {seen} utterances (both directions).\n")
    print("| model | dev reward margin | dev reward accuracy |")
    print("|---|---|---|")
    for key, name in MODELS:
        cells = ["", ""]
        if key != "sft":
            s = load(os.path.join(pv, key, "summary.json"))
            b, a = s.get("dev_before"), s.get("dev_after")
            if b and a:
                cells = [f"{b['reward_margin']:.3f} -> {a['reward_margin']:.3f}",
                         f"{100 * b['reward_accuracy']:.0f} -> {100 * a['reward_accuracy']:.0f} %"]
            out["models"][key] = {"dev_before": b, "dev_after": a}
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    print()
    head = " | ".join(f"{n} exact / BLEU / chrF / ASR-BLEU" for _, n in MODELS)
    print(f"| condition | dir | n | {head} |")
    print("|---|---|---" + "|---" * len(MODELS) + "|")
    rows = []
    for k, r0 in tables["sft"].items():
        cells = []
        for key, _ in MODELS:
            r = tables[key].get(k)
            cells.append("?" if r is None else
                         f"{r['exact']} / {r['bleu']:.1f} / {r['chrf']:.1f} / {r['asr_bleu']:.1f}")
        rows.append({"set": k[0], "direction": k[1],
                     **{key: tables[key].get(k) for key, _ in MODELS}})
        print(f"| {r0['label']} | {k[1]} | {r0['n']} | " + " | ".join(cells) + " |")
    out["rows"] = rows
    with open(os.path.join(pv, "table.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
