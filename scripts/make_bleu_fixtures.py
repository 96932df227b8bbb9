#!/usr/bin/env python3
"""Make tests/fixtures/sacrebleu.json: BLEU, chrF and 13a tokenizations computed by the real sacreBLEU.

    pip install sacrebleu==2.6.0
    python3 scripts/make_bleu_fixtures.py

Cases are built from the demo corpus (data/demo) and from short hand-written texts, with seeded
perturbations (dropped, swapped and replaced words). The Multi30k corpus is deliberately not used, so
that no Multi30k text ends up in the repository.
"""
import json
import os
import random

import sacrebleu
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

ROOT = os.path.join(os.path.dirname(__file__), "..")


def lines(path, n):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return [l.rstrip("\n") for l in f][:n]


def perturb(rng, line, strength):
    words = line.split()
    out = []
    for w in words:
        r = rng.random()
        if r < strength / 3:
            continue  # drop
        if r < 2 * strength / 3:
            out.append(rng.choice(words))  # replace
        else:
            out.append(w)
    if len(out) > 1 and rng.random() < strength:
        i = rng.randrange(len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
    return " ".join(out)


def case(name, hyps, refs, tokenize="13a", lowercase=False, sentence_level=False):
    bleu_metric = BLEU(tokenize=tokenize, lowercase=lowercase, effective_order=sentence_level)
    if sentence_level:  # as sacrebleu.sentence_bleu: one hypothesis, effective order
        bleu = bleu_metric.sentence_score(hyps[0], [r[0] for r in refs])
    else:
        bleu = bleu_metric.corpus_score(hyps, refs)
    chrf = CHRF(lowercase=lowercase).corpus_score(hyps, refs)
    tok13a = Tokenizer13a()
    # what the metric's own preprocessing produces (lowercasing, rstrip, then the tokenizer)
    tok = [bleu_metric._preprocess_segment(h) for h in hyps]
    return {"name": name, "hyps": hyps, "refs": refs, "bleu": bleu.score, "chrf": chrf.score,
            "bleu_line": str(bleu), "tok_13a": [tok13a(h) for h in hyps], "tokenize": tokenize,
            "lowercase": lowercase, "tok": tok, "signature": str(bleu_metric.get_signature()),
            "sentence_level": sentence_level}


def main():
    rng = random.Random(7)
    de = lines("data/demo/test.de", 100)
    en = lines("data/demo/test.en", 100)
    cases = [
        case("perfect match", de, [de]),
        case("light perturbation (de)", [perturb(rng, l, 0.1) for l in de], [de]),
        case("heavy perturbation (de)", [perturb(rng, l, 0.5) for l in de], [de]),
        case("light perturbation (en)", [perturb(rng, l, 0.15) for l in en], [en]),
        case("empty hypotheses", ["" for _ in de[:10]], [de[:10]]),
        case("some empty hypotheses", [l if i % 3 else "" for i, l in enumerate(de[:30])], [de[:30]]),
        case("one-word corpus", ["Hund"], [["Hund"]]),
        case("one word, wrong", ["Katze"], [["Hund"]]),
        case("too short (brevity penalty)", [" ".join(l.split()[:3]) for l in de[:20]], [de[:20]]),
        case("numbers with commas and periods",
             ["It costs 1,000.50 dollars, or 3.5 euros.", "In 2019-2020 we sold 12,5 tonnes.",
              "Call 555-1234 at 10.30 a.m.", "Pi is 3.14159; e is 2.718."],
             [["It costs 1,000.50 dollars or 3.50 euros.", "In 2019-2020, we sold 12.5 tonnes.",
               "Call 555-1234 at 10:30 a.m.", "Pi is 3.14159, e is 2.718."]]),
        case("unicode punctuation and quotes",
             ["„Das ist gut“, sagte er – und ging.", "«Bonjour», dit-elle… puis elle partit !",
              "He said “hello” — then left.", "Zwei\u00a0Männer &amp; eine Frau <skipped> gehen."],
             [["„Das ist sehr gut“, sagte er – und ging.", "« Bonjour », dit-elle... puis elle partit !",
               "He said \"hello\" - then he left.", "Zwei Männer & eine Frau gehen."]]),
        case("german and french",
             ["Ein Mädchen läuft über die Straße.", "Les enfants jouent dans le jardin, près de l'école.",
              "Über den Dächern fliegen drei Vögel.", "L'homme âgé lit un journal à côté d'un café."],
             [["Ein Mädchen rennt über die Straße.", "Les enfants jouent dans le jardin près de l'école.",
               "Über den Dächern fliegen zwei Vögel.", "Un homme âgé lit le journal à côté du café."]]),
        case("two references",
             [perturb(rng, l, 0.3) for l in de[:40]],
             [de[:40], [perturb(rng, l, 0.2) for l in de[:40]]]),
    ]
    mixed = ["„Das ist gut“, sagte er – 3,5 € für 2 Äpfel!", "Ça coûte 10$ (environ) — vraiment?",
             "THE DOG SEES 21 CATS.", "Ein\u00a0Hund   läuft.  "]
    mixed_refs = [["„Das ist sehr gut“, sagte er – 3,50 € für zwei Äpfel!", "Ça coûte 10 $ (environ)... vraiment ?",
                   "The dog sees 21 cats.", "Ein Hund rennt."]]
    for tokenize in ["13a", "intl", "char", "none"]:
        for lowercase in [False, True]:
            cases.append(case(f"tokenize {tokenize}, lowercase {lowercase}", mixed, mixed_refs, tokenize, lowercase))
    cases.append(case("intl on German", [perturb(rng, l, 0.2) for l in de[:30]], [de[:30]], "intl"))
    # Corpus BLEU of a one-sentence corpus, and sentence-level BLEU (effective order), as sacrebleu.sentence_bleu.
    for i in range(5):
        h = perturb(rng, de[i], 0.3)
        cases.append(case(f"one-sentence corpus {i}", [h], [[de[i]]]))
        cases.append(case(f"sentence-level {i}", [h], [[de[i]]], sentence_level=True))
    for h, r in [("Hund", "Hund"), ("Der Hund", "Der Hund läuft"), ("Ein kleiner Hund", "Der kleine Hund"),
                 ("", "Hund"), ("a b c d e", "a b c d e f")]:
        cases.append(case(f"sentence-level short: {h!r}", [h], [[r]], sentence_level=True))
    path = os.path.join(ROOT, "tests", "fixtures", "sacrebleu.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"sacrebleu_version": sacrebleu.__version__, "cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {path}")


if __name__ == "__main__":
    main()
