"""Reference scores for Tolk's metrics (training/src/metrics/), from the reference packages.

Usage: python tests/reference/metrics.py OUT_DIR
Writes OUT_DIR/reference.json with seeded inputs and:
- `pairs`: hypothesis/reference sentence pairs (English and French kiosk sentences with
  punctuation, numbers, accents, HTML entities, odd whitespace, empty hypotheses, identical pairs,
  pairs with no match) and per pair sacrebleu 2.6.0 `sentence_bleu` and `sentence_chrf`, nltk
  3.10.4 `meteor_score` (pre-tokenized with `str.split()`, no WordNet: a `wordnet` object whose
  `synsets` are empty) and jiwer 4.0.0 `wer`;
- `corpus`: `corpus_bleu`, `corpus_chrf` and corpus `jiwer.wer` over all pairs;
- `stems`: nltk `PorterStemmer().stem` (NLTK_EXTENSIONS mode) of a word list (the paper's
  examples, nltk's irregular forms) and 3000 seeded pseudo-words ending in Porter suffixes;
- `mcd`: mel-cepstrum pairs (random, time-warped and noisy; c0 in column 0) and their MCD.

MCD definition (the same as training/src/metrics/mcd.rs, with the same order of floating-point
operations so that ties in the DTW break the same way):
  d(x, y) = (10 / ln 10) * sqrt(2 * sum_{k>=1} (x_k - y_k)^2), summed over k in increasing order;
  DTW with steps (1,1), (1,0), (0,1), unit weights, minimising the summed d; a predecessor must be
  strictly smaller to replace an earlier candidate, tried in the order diagonal, (i-1, j), (i, j-1);
  MCD = mean of d over the frame pairs on the path from (0, 0) to (N-1, M-1).
"""

import json
import random
import sys
from pathlib import Path

import numpy as np
import jiwer
import sacrebleu
from nltk.stem.porter import PorterStemmer
from nltk.translate.meteor_score import meteor_score


class NoWordNet:
    """A stand-in for nltk's WordNet reader with no synonyms (no WordNet corpus here)."""

    def synsets(self, word):
        return []


EN = [
    "Where is the train station?",
    "The next bus to the airport leaves at 10:45.",
    "A single ticket costs 3.50 euros, a return ticket costs 6,20 euros.",
    "Please wait here; someone will help you.",
    "Turn left after the museum, then walk 200 meters.",
    "Platform 4 is closed between 12-15 June.",
    "Can I pay by card or only in cash?",
    "The ticket office opens at 7 a.m. and closes at 9 p.m.",
    "Good morning! How can I help you today?",
    "Is this seat free?",
    "The museum & the gardens are closed on Mondays.",
    "Your connecting flight departs from gate B12.",
    "I'm looking for the nearest pharmacy.",
    "The 1,000-meter walk takes about fifteen minutes.",
    "Trains are running late because of the storm.",
    "Children under 6 travel for free.",
    "Press the green button to validate your ticket.",
    "She was running quickly towards the generalized happiness of the relational station.",
    "The ponies and the skies were dying, lying and tying the innings.",
    "Hopping, filing, controlling and agreed conditional adjustments.",
]
FR = [
    "Où est la gare ?",
    "Le prochain bus pour l'aéroport part à 10 h 45.",
    "Un billet simple coûte 3,50 euros, un aller-retour 6,20 euros.",
    "Veuillez patienter ici ; quelqu'un va vous aider.",
    "Tournez à gauche après le musée, puis marchez 200 mètres.",
    "Le quai 4 est fermé du 12-15 juin.",
    "Puis-je payer par carte ou seulement en espèces ?",
    "Le guichet ouvre à 7 h et ferme à 21 h.",
    "Bonjour ! Comment puis-je vous aider aujourd'hui ?",
    "Cette place est-elle libre ?",
    "Le musée &amp; les jardins sont fermés le lundi.",
    "Votre vol de correspondance part de la porte B12.",
    "Je cherche la pharmacie la plus proche.",
    "Les enfants de moins de 6 ans voyagent gratuitement.",
    "Appuyez sur le bouton vert pour valider votre billet.",
    "« Bienvenue à Genève » — l'hôtel est à côté du château.",
    "Ça coûte 12,5 € ; c'était très élevé.",
]
FILLERS = ["the", "a", "le", "la", "ticket", "billet", "gare", "station", "quickly", "running",
           "runs", "ran", "happily", "très", "été", "1,5", "3.2", "-", "(", ")", "&", "\"", "?"]


def perturb(rng: random.Random, s: str) -> str:
    words = s.split()
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        if op == 0 and words:
            del words[rng.randrange(len(words))]
        elif op == 1:
            words.insert(rng.randrange(len(words) + 1), rng.choice(FILLERS))
        elif op == 2 and words:
            words[rng.randrange(len(words))] = rng.choice(FILLERS)
        elif op == 3 and len(words) > 1:
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
        elif op == 4 and words:
            i = rng.randrange(len(words))
            words[i] = words[i].upper() if rng.random() < 0.5 else words[i].lower()
        elif op == 5 and words:
            i = rng.randrange(len(words))
            words[i] = words[i].rstrip(".,?!;") + rng.choice(["s", "ing", "ed", "ly", ""])
        elif op == 6 and words:
            i = rng.randrange(len(words))
            words[i] = words[i] + rng.choice([".", ",", "!", "...", ";"])
        elif op == 7 and len(words) > 2:
            i = rng.randrange(len(words) - 1)
            words = words[i:] + words[:i]
    sep = rng.choice([" ", " ", " ", "  ", "\t", " \t "])
    out = sep.join(words)
    if rng.random() < 0.1:
        out = " " + out + "  "
    return out


def make_pairs(rng: random.Random):
    refs = EN + FR
    pairs = []
    for r in refs:
        pairs.append((r, r))  # identical
    for r in refs[:8]:
        pairs.append(("", r))  # empty hypothesis
    pairs += [
        ("xyz qqq", "Where is the train station?"),  # no match at all
        ("zzz", "a"),
        ("x y", ""),  # empty reference
        ("", ""),
        ("a", "a"),
        ("a*ding b", "a*ding c"),
        ("caresses ponies ties agreed plastered motoring hopping filing happy",
         "caress poni ti agree plaster motor hop file happi"),
        ("&lt;b&gt; x &quot;y&quot;", "<b> x \"y\""),
        ("3.5 1,000 12-15 a.b a,b .5 ,5", "3.5 1,000 12 - 15 a.b"),
    ]
    while len(pairs) < 320:
        r = rng.choice(refs)
        if rng.random() < 0.1:
            h = perturb(rng, rng.choice(refs))  # mostly unrelated
        else:
            h = perturb(rng, r)
        pairs.append((h, r))
    return pairs


STEM_WORDS = (
    "caresses ponies ties cats feed agreed plastered bled motoring sing conflated troubled sized "
    "hopping tanned falling hissing fizzed failing filing happy sky relational conditional rational "
    "valenci hesitanci digitizer conformabli radicalli differentli vileli analogousli vietnamization "
    "predication operator feudalism decisiveness hopefulness callousness formaliti sensitiviti "
    "sensibiliti triplicate formative formalize electriciti electrical hopeful goodness revival "
    "allowance inference airliner gyroscopic adjustable defensible irritant replacement adjustment "
    "dependent adoption homologou communism activate angulariti homologous effective bowdlerize "
    "probate rate cease controll roll dying lying tying news innings outings cannings howe proceed "
    "exceed succeed generously archaeology analogi fully spied died flies dies yyyy syzygy toy "
    "enjoy enjoyment ivy trees oaten orrery a*ding x*ding ies ied eed ing ed y ly sses Running "
    "HAPPILY été châteaux gares billets aéroport quickly generalizations"
).split()


SUFFIXES = ("ational tional enci anci izer bli abli alli entli eli ousli ization ation ator alism "
            "iveness fulness ousness aliti iviti biliti fulli logi icate ative alize iciti ical ful "
            "ness al ance ence er ic able ible ant ement ment ent sion tion ou ism ate iti ous ive "
            "ize e ll y ies ied eed ed ing s sses ss ly yed ying").split()
ONSETS = ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "w", "y",
          "st", "tr", "pl", "sh", "ch", "qu", "x", "z"]
NUCLEI = ["a", "e", "i", "o", "u", "y", "ee", "ai", "oa", "ou", "é"]


def random_words(rng: random.Random, n: int):
    """Pseudo-words with Porter suffixes (stacked sometimes) to exercise every rule."""
    words = set()
    while len(words) < n:
        w = "".join(rng.choice(ONSETS) + rng.choice(NUCLEI) for _ in range(rng.randint(1, 3)))
        w += rng.choice(ONSETS)
        for _ in range(rng.choice([1, 1, 1, 2])):
            w += rng.choice(SUFFIXES)
        words.add(w)
    return sorted(words)


def mcd_ref(x: np.ndarray, y: np.ndarray):
    n, m = len(x), len(y)
    acc = np.zeros((n, m))
    for d in range(1, x.shape[1]):
        diff = x[:, None, d] - y[None, :, d]
        acc = acc + diff * diff
    k = 10.0 / np.log(10.0)
    cost = k * np.sqrt(2.0 * acc)
    total = np.zeros((n, m))
    step = np.zeros((n, m), dtype=np.int8)
    for i in range(n):
        for j in range(m):
            if i == 0 and j == 0:
                total[0, 0] = cost[0, 0]
                continue
            best, s = np.inf, 0
            if i > 0 and j > 0 and total[i - 1, j - 1] < best:
                best, s = total[i - 1, j - 1], 0
            if i > 0 and total[i - 1, j] < best:
                best, s = total[i - 1, j], 1
            if j > 0 and total[i, j - 1] < best:
                best, s = total[i, j - 1], 2
            total[i, j] = cost[i, j] + best
            step[i, j] = s
    i, j = n - 1, m - 1
    path_sum, length = cost[i, j], 1
    while i > 0 or j > 0:
        s = step[i, j]
        if s == 0:
            i, j = i - 1, j - 1
        elif s == 1:
            i -= 1
        else:
            j -= 1
        path_sum += cost[i, j]
        length += 1
    return float(path_sum / length), length


def make_mcd(rng: np.random.Generator):
    cases = []
    for n, dim, warp, noise in [(40, 13, 1.0, 0.0), (60, 13, 1.3, 0.3), (80, 25, 0.7, 1.0),
                                (35, 13, 1.0, 2.0), (120, 13, 1.1, 0.5), (1, 13, 5.0, 0.2),
                                (50, 2, 1.5, 0.1)]:
        # A smooth trajectory, its time-warped and noisy copy, c0 shifted arbitrarily.
        t = np.cumsum(rng.normal(size=(n, dim)), axis=0) * 0.3
        m = max(1, int(round(n * warp)))
        idx = np.minimum((np.arange(m) / warp).astype(int), n - 1)
        y = t[idx] + noise * rng.normal(size=(m, dim))
        y[:, 0] += rng.normal() * 5
        value, length = mcd_ref(t, y)
        cases.append({"reference": t.tolist(), "synthesized": y.tolist(),
                      "mcd": value, "path_len": length})
    same = cases[0]["reference"]
    value, length = mcd_ref(np.array(same), np.array(same))
    cases.append({"reference": same, "synthesized": same, "mcd": value, "path_len": length})
    return cases


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    pairs = make_pairs(rng)
    hyps = [h for h, _ in pairs]
    refs = [r for _, r in pairs]
    stemmer = PorterStemmer()
    nownet = NoWordNet()
    rows = []
    for h, r in pairs:
        rows.append({
            "hyp": h,
            "ref": r,
            "sentence_bleu": sacrebleu.sentence_bleu(h, [r]).score,
            "sentence_chrf": sacrebleu.sentence_chrf(h, [r]).score,
            "meteor": meteor_score([r.split()], h.split(), stemmer=stemmer, wordnet=nownet),
            # WERs as repr() strings: the Rust test parses them exactly (serde_json's default
            # float parser may be off by one ulp) and compares them for equality.
            "wer": repr(float(jiwer.wer(r, h))),
        })
    bleu = sacrebleu.corpus_bleu(hyps, [refs])
    corpus = {
        "bleu": bleu.score,
        "bleu_counts": bleu.counts,
        "bleu_totals": bleu.totals,
        "bleu_sys_len": bleu.sys_len,
        "bleu_ref_len": bleu.ref_len,
        "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
        "wer": repr(float(jiwer.wer(refs, hyps))),
        "meteor_mean": float(np.mean([row["meteor"] for row in rows])),
    }
    stems = {w: stemmer.stem(w) for w in STEM_WORDS + random_words(random.Random(1), 3000)}
    mcd = make_mcd(np.random.default_rng(0))
    doc = {"versions": {"sacrebleu": sacrebleu.__version__, "jiwer": "4.0.0", "nltk": __import__("nltk").__version__},
           "pairs": rows, "corpus": corpus, "stems": stems, "mcd": mcd}
    (out / "reference.json").write_text(json.dumps(doc, ensure_ascii=False, indent=1))
    print(f"{len(rows)} pairs, corpus BLEU {bleu.score:.4f}, chrF {corpus['chrf']:.4f}, "
          f"WER {corpus['wer']}, {len(stems)} stems, {len(mcd)} MCD cases")


if __name__ == "__main__":
    main()
