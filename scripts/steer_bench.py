"""Steered decoding on a run's test set: terminology, constraint speed and prefix suggestions (BENCHMARKS.md).

    NMT_DATA_MIRROR=../shared/data python scripts/steer_bench.py runs/multi30k_deen_transformer

- terms: the test pairs are word-aligned with the training corpus (eflomal, as `nmt align --prepare` aligns);
  for each sentence, up to two reference words aligned to a source word (not one of the training corpus's
  100 most frequent) that the unconstrained translation lacks become that sentence's glossary entries
  (source word TAB reference word). Prints the term-use rate (the share of the
  terms the glossary calls for in each sentence that its translation contains) and BLEU, without and with
  the glossary; then the same with one random reference word per sentence as its constraint.
- speed: sentences/s of beam 5 with 0, 1, 2 and 4 constraints (random reference words) on --speed-sentences
  test sentences, against the unconstrained search, best of --repeats.
- prefix: the first 1 to 5 reference words forced as the prefix; how often the next word of the translation is
  the reference's next word (the interactive suggestion), and how often the search continued the prefix's last
  word with a piece that does not start a word ("harvest" -> "harvestes").
One JSON object per measurement on standard output."""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections import Counter
from pathlib import Path

import sacrebleu
import torch

from nmt.data.splits import eval_set
from nmt.data.word_aligner import align_words
from nmt.inference.steer import Glossary, Steer, Term
from nmt.inference.translate import Translator
from nmt.runs.loading import load_model

WORD = re.compile(r"^\w{3,}$")  # a term: letters (or digits), three or more
FREQUENT = 100  # the most frequent source words of the training corpus are not terms (articles, prepositions)


def bare(word: str) -> str:
    return word.strip(".,;:!?\"'()")


def has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text) is not None


def term_use(texts: list[str], required: list[list[str]]) -> float:
    wanted = [(text, term) for text, terms in zip(texts, required, strict=True) for term in terms]
    return sum(has_word(text, term) for text, term in wanted) / max(1, len(wanted))


def bleu(texts: list[str], references: list[str]) -> float:
    return round(sacrebleu.corpus_bleu(texts, [references]).score, 2)


def terms(translator: Translator, sources: list[str], references: list[str], train: tuple[list[str], list[str]],
          seed: int) -> None:
    started = time.perf_counter()
    links = align_words(train[0] + sources, train[1] + references)[len(train[0]):]
    aligned_s = time.perf_counter() - started
    frequent = {w for w, _ in Counter(bare(w) for line in train[0] for w in line.split()).most_common(FREQUENT)}
    plain = [t.text for t in translator.translate(sources)]
    glossaries = []
    for source, reference, hypothesis, pairs in zip(sources, references, plain, links, strict=True):
        src_words, ref_words = source.split(), reference.split()
        entries: list[Term] = []
        for s, t in sorted(pairs):
            src, tgt = bare(src_words[s]), bare(ref_words[t])
            if len(entries) == 2 or not (WORD.match(src) and WORD.match(tgt)) or src in frequent:
                continue
            if has_word(hypothesis, tgt) or any(e.source == src or e.target == tgt for e in entries):
                continue
            entries.append(Term(src, tgt, len(entries) + 1))
        glossaries.append(Glossary(entries, "sentence glossary"))
    required = [glossary.targets_for(source) for glossary, source in zip(glossaries, sources, strict=True)]
    steered = translator.translate(sources, steers=[Steer(constraints=tuple(r)) for r in required])
    print(json.dumps({"measure": "glossary", "sentences_with_terms": sum(map(bool, required)),
                      "terms_required": sum(map(len, required)), "align_s": round(aligned_s, 1),
                      "term_use_without": round(term_use(plain, required), 3),
                      "term_use_with": round(term_use([t.text for t in steered], required), 3),
                      "bleu_without": bleu(plain, references), "bleu_with": bleu([t.text for t in steered], references),
                      "missing_warned": sum(bool(t.missing) for t in steered)}), flush=True)
    rng = random.Random(seed)
    one_word = [[rng.choice(words)] if (words := [bare(w) for w in r.split() if WORD.match(bare(w))]) else []
                for r in references]
    constrained = translator.translate(sources, steers=[Steer(constraints=tuple(w)) for w in one_word])
    print(json.dumps({"measure": "random_reference_word", "term_use_without": round(term_use(plain, one_word), 3),
                      "term_use_with": round(term_use([t.text for t in constrained], one_word), 3),
                      "bleu_without": bleu(plain, references),
                      "bleu_with": bleu([t.text for t in constrained], references)}), flush=True)


def speed(translator: Translator, sources: list[str], references: list[str], count: int, repeats: int,
          seed: int) -> None:
    rng = random.Random(seed)
    sources, references = sources[:count], references[:count]
    words = [[bare(w) for w in r.split() if WORD.match(bare(w))] for r in references]
    translator.translate(sources[:16], beam_size=5)  # warm-up
    base = None
    for n in (None, 0, 1, 2, 4):
        steers = None if n is None else [Steer(constraints=tuple(rng.sample(w, min(n, len(w))))) for w in words]
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            found = translator.translate(sources, beam_size=5, steers=steers)
            best = min(best, time.perf_counter() - started)
        base = base or best
        print(json.dumps({"measure": "speed", "constraints": "unconstrained" if n is None else n, "beam": 5,
                          "sentences": len(sources), "sentences_per_s": round(len(sources) / best, 1),
                          "time_vs_unconstrained": round(best / base, 2),
                          "missing": sum(len(t.missing) for t in found)}), flush=True)


def prefix(translator: Translator, sources: list[str], references: list[str]) -> None:
    for k in range(1, 6):
        pairs = [(s, r.split()) for s, r in zip(sources, references, strict=True) if len(r.split()) > k]
        found = translator.translate([s for s, _ in pairs], steers=[Steer(prefix=" ".join(r[:k])) for _, r in pairs])
        matches = [len(t.text.split()) > k and t.text.split()[k] == r[k] for t, (_, r) in zip(found, pairs,
                                                                                                strict=True)]
        starts = all(t.text.startswith(" ".join(r[:k])) for t, (_, r) in zip(found, pairs, strict=True))
        longer = sum(t.text.split()[k - 1] != r[k - 1] for t, (_, r) in zip(found, pairs, strict=True))
        print(json.dumps({"measure": "prefix", "words": k, "sentences": len(pairs),
                          "next_word_match": round(sum(matches) / len(pairs), 3), "text_begins_with_prefix": starts,
                          "last_prefix_word_continued": longer}),
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--phase", choices=["all", "terms", "speed", "prefix"], default="all")
    parser.add_argument("--speed-sentences", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    loaded = load_model(args.run)
    translator = Translator.for_run(loaded)
    test, train = eval_set(loaded.config.data, "test"), eval_set(loaded.config.data, "train")
    print(json.dumps({"run": str(args.run), "checkpoint": loaded.checkpoint.path.name, "threads":
                      torch.get_num_threads(), "beam": loaded.config.decoding.beam_size,
                      "test_sentences": len(test.sources)}), flush=True)
    if args.phase in ("all", "terms"):
        terms(translator, test.sources, test.references, (train.sources, train.references), args.seed)
    if args.phase in ("all", "speed"):
        speed(translator, test.sources, test.references, args.speed_sentences, args.repeats, args.seed)
    if args.phase in ("all", "prefix"):
        prefix(translator, test.sources, test.references)


if __name__ == "__main__":
    main()
