#!/usr/bin/env python3
"""Generate the demo English->German corpus in data/demo/ (seeded, deterministic).

Templated sentences with real German grammar: grammatical gender and case of articles and adjective
endings (der/den, die, das; -e/-en), plurals, German number words (zwei ... neunundneunzig),
verb-second word order after a fronted adverb, and verb-final order in "dass" and "weil" clauses.

    python3 scripts/make_demo_data.py [--out data/demo] [--seed 1] [--train 20000]

Writes train/valid/test .en/.de files, one sentence a line; the three splits share no source sentence.
"""
import argparse
import os
import random

# english singular, english plural, german singular, german plural, gender
NOUNS = [
    ("man", "men", "Mann", "Männer", "m"),
    ("woman", "women", "Frau", "Frauen", "f"),
    ("child", "children", "Kind", "Kinder", "n"),
    ("dog", "dogs", "Hund", "Hunde", "m"),
    ("cat", "cats", "Katze", "Katzen", "f"),
    ("horse", "horses", "Pferd", "Pferde", "n"),
    ("bird", "birds", "Vogel", "Vögel", "m"),
    ("teacher", "teachers", "Lehrer", "Lehrer", "m"),
    ("girl", "girls", "Mädchen", "Mädchen", "n"),
    ("book", "books", "Buch", "Bücher", "n"),
    ("car", "cars", "Auto", "Autos", "n"),
    ("apple", "apples", "Apfel", "Äpfel", "m"),
    ("ball", "balls", "Ball", "Bälle", "m"),
    ("house", "houses", "Haus", "Häuser", "n"),
    ("flower", "flowers", "Blume", "Blumen", "f"),
    ("friend", "friends", "Freund", "Freunde", "m"),
    ("doctor", "doctors", "Arzt", "Ärzte", "m"),
    ("bottle", "bottles", "Flasche", "Flaschen", "f"),
]
# english 3sg, english plural, german 3sg, german 3pl
VERBS = [
    ("sees", "see", "sieht", "sehen"),
    ("likes", "like", "mag", "mögen"),
    ("finds", "find", "findet", "finden"),
    ("hears", "hear", "hört", "hören"),
    ("buys", "buy", "kauft", "kaufen"),
    ("carries", "carry", "trägt", "tragen"),
    ("draws", "draw", "zeichnet", "zeichnen"),
    ("visits", "visit", "besucht", "besuchen"),
    ("washes", "wash", "wäscht", "waschen"),
    ("watches", "watch", "beobachtet", "beobachten"),
]
ADJECTIVES = [
    ("big", "groß"), ("small", "klein"), ("old", "alt"), ("young", "jung"), ("red", "rot"),
    ("black", "schwarz"), ("happy", "fröhlich"), ("tired", "müde"), ("new", "neu"), ("white", "weiß"),
]
ADVERBS = [("today", "heute"), ("now", "jetzt"), ("often", "oft"), ("sometimes", "manchmal"), ("tomorrow", "morgen")]
HEADS = [("I think", "Ich denke"), ("He believes", "Er glaubt"), ("We know", "Wir wissen"),
         ("She says", "Sie sagt"), ("They hope", "Sie hoffen")]

EN_UNITS = ["", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
            "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
EN_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
DE_UNITS = ["", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun", "zehn", "elf",
            "zwölf", "dreizehn", "vierzehn", "fünfzehn", "sechzehn", "siebzehn", "achtzehn", "neunzehn"]
DE_TENS = ["", "", "zwanzig", "dreißig", "vierzig", "fünfzig", "sechzig", "siebzig", "achtzig", "neunzig"]
ARTICLES = {("m", "nom"): "der", ("m", "acc"): "den", ("f", "nom"): "die", ("f", "acc"): "die",
            ("n", "nom"): "das", ("n", "acc"): "das"}


def en_number(n):
    if n < 20:
        return EN_UNITS[n]
    tens, unit = divmod(n, 10)
    return EN_TENS[tens] + ("-" + EN_UNITS[unit] if unit else "")


def de_number(n):
    if n < 20:
        return DE_UNITS[n]
    tens, unit = divmod(n, 10)
    if unit == 0:
        return DE_TENS[tens]
    return ("ein" if unit == 1 else DE_UNITS[unit]) + "und" + DE_TENS[tens]


def noun_phrase(rng, case):
    """Returns (english, german, plural?) for a random noun phrase in the given German case."""
    en_sg, en_pl, de_sg, de_pl, gender = rng.choice(NOUNS)
    adj = rng.choice(ADJECTIVES) if rng.random() < 0.5 else None
    kind = rng.choices(["def_sg", "def_pl", "num"], weights=[5, 2, 2])[0]
    if kind == "def_sg":
        ending = "en" if (gender == "m" and case == "acc") else "e"
        adj_en = adj[0] + " " if adj else ""
        adj_de = adj_inflect(adj[1], ending) + " " if adj else ""
        return f"the {adj_en}{en_sg}", f"{ARTICLES[(gender, case)]} {adj_de}{de_sg}", False
    if kind == "def_pl":
        adj_en = adj[0] + " " if adj else ""
        adj_de = adj_inflect(adj[1], "en") + " " if adj else ""
        return f"the {adj_en}{en_pl}", f"die {adj_de}{de_pl}", True
    n = rng.randint(2, 99)
    adj_en = adj[0] + " " if adj else ""
    adj_de = adj_inflect(adj[1], "e") + " " if adj else ""
    return f"{en_number(n)} {adj_en}{en_pl}", f"{de_number(n)} {adj_de}{de_pl}", True


def adj_inflect(stem, ending):
    # "müde" already ends in -e: müde + e -> müde, müde + en -> müden
    if stem.endswith("e"):
        return stem + ending[1:]
    return stem + ending


def clause(rng):
    """Returns (english, german subject, german verb, german object) of a transitive clause."""
    subj_en, subj_de, plural = noun_phrase(rng, "nom")
    obj_en, obj_de, _ = noun_phrase(rng, "acc")
    v = rng.choice(VERBS)
    verb_en, verb_de = (v[1], v[3]) if plural else (v[0], v[2])
    return f"{subj_en} {verb_en} {obj_en}", subj_de, verb_de, obj_de


def cap(s):
    return s[0].upper() + s[1:]


def sentence(rng):
    kind = rng.choices(["svo", "adverb", "that", "because"], weights=[4, 2, 2, 2])[0]
    en, s, v, o = clause(rng)
    if kind == "svo":
        return cap(en) + ".", cap(f"{s} {v} {o}") + "."
    if kind == "adverb":  # verb second: the verb comes before the subject
        adv_en, adv_de = rng.choice(ADVERBS)
        return cap(f"{adv_en} {en}") + ".", f"{cap(adv_de)} {v} {s} {o}."
    if kind == "that":  # verb final in the subordinate clause
        head_en, head_de = rng.choice(HEADS)
        return f"{head_en} that {en}.", f"{head_de}, dass {s} {o} {v}."
    en2, s2, v2, o2 = clause(rng)
    return cap(f"{en} because {en2}") + ".", cap(f"{s} {v} {o}, weil {s2} {o2} {v2}") + "."


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "data", "demo"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--valid", type=int, default=500)
    ap.add_argument("--test", type=int, default=500)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    seen = set()
    splits = {}
    for name, size in [("test", args.test), ("valid", args.valid), ("train", args.train)]:
        pairs = []
        while len(pairs) < size:
            en, de = sentence(rng)
            if en in seen:
                continue
            seen.add(en)
            pairs.append((en, de))
        splits[name] = pairs
    os.makedirs(args.out, exist_ok=True)
    for name, pairs in splits.items():
        for lang, idx in (("en", 0), ("de", 1)):
            with open(os.path.join(args.out, f"{name}.{lang}"), "w", encoding="utf-8", newline="\n") as f:
                f.writelines(p[idx] + "\n" for p in pairs)
    print(f"wrote {', '.join(f'{n} {len(p)}' for n, p in splits.items())} pairs to {args.out}")


if __name__ == "__main__":
    main()
