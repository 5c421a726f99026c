"""Documents through translation on a run's test set (BENCHMARKS.md, "Documents"):

    NMT_DATA_MIRROR=../shared/data python scripts/markup_bench.py runs/multi30k_deen_transformer_guided \
        runs/multi30k_deen_transformer runs/multi30k_deen_transformer@2:3 runs/multi30k_deen

A run written RUN@LAYER:HEAD places tags by that head (`--align-layer`, `--align-head`: the best one that
`nmt align --choose-head-on` finds), RUN@LAYER by that layer's heads averaged, RUN by the run's default (its
guided head, else the last layer's average).

- tags: 1 to 3 source phrases of each test sentence are wrapped in tags (`<b>`, `<i>`, `<a href>`; in about a
  quarter of the sentences a fourth tag nested inside the first phrase). Each phrase lies on a boundary of the
  reference alignment: eflomal on the test pairs with the training corpus (as `nmt align --prepare` aligns),
  so that its words and the reference words aligned to them link to nothing outside. Each run translates the
  tagged sentences as one HTML document (a `<p>` per sentence) and the same sentences untagged as plain text:
  - well-formed: outputs whose tags parse into the source's tag tree (siblings in any order), and in the
    source's order;
  - placement: precision, recall and F1 of the output words each tag encloses, against the words that the
    eflomal alignment of the source with that output (again with the training corpus) links to the tag's source
    words (their hull), summed over tags;
  - BLEU and chrF of the outputs with their tags stripped, against the untagged translations';
- spans: a URL, an e-mail address, a number or a placeholder inserted at a random word boundary of each test
  sentence; the share that comes back exactly, with `--protect` and without;
- speed: seconds to translate the tagged document against the untagged lines, best of --repeats;
- memory: the tagged paragraphs repeated into a 10 MB document, read (parsed into segments, not translated) in
  64 KB chunks: seconds, and the most memory traced (tracemalloc, which also slows it) against the document's size.
One JSON object per run and measurement on standard output."""

from __future__ import annotations

import argparse
import html
import json
import random
import time
import tracemalloc
from html.parser import HTMLParser
from pathlib import Path

import sacrebleu

from nmt.data.links import Link
from nmt.data.prepare import prepare_data
from nmt.data.splits import eval_set
from nmt.data.word_aligner import align_words
from nmt.documents.markup import Segment, read_items
from nmt.documents.translate import DocumentTranslator
from nmt.inference.translate import Translator
from nmt.runs.loading import load_model

TAGS = ['<b id="{n}">', '<i id="{n}">', '<a id="{n}" href="https://example.org/{n}">']


def consistent(links: set[Link], start: int, end: int) -> tuple[int, int] | None:
    """The target hull [lo, hi) of source words [start, end) when the pair is a phrase on an alignment
    boundary (no link leaves it either way, some link in it); else None."""
    inside = [j for i, j in links if start <= i < end]
    if not inside:
        return None
    lo, hi = min(inside), max(inside) + 1
    if any((start <= i < end) != (lo <= j < hi) for i, j in links if start <= i < end or lo <= j < hi):
        return None
    return lo, hi


def tag_sentence(words: list[str], links: set[Link], rng: random.Random) -> tuple[str, list[tuple[int, int]]]:
    """The sentence with 1 to 3 phrases tagged (and maybe one nested), and each tag's source words, by id."""
    spans: list[tuple[int, int]] = []
    for _ in range(40):
        if len(spans) == rng.randint(1, 3):
            break
        length = rng.randint(1, min(4, len(words)))
        start = rng.randrange(0, len(words) - length + 1)
        if consistent(links, start, start + length) and all(start + length <= a or b <= start for a, b in spans):
            spans.append((start, start + length))
    if spans and spans[0][1] - spans[0][0] > 1 and rng.random() < 0.25:
        a, b = spans[0]
        inner = [(s, e) for s in range(a, b) for e in range(s + 1, b + 1) if (s, e) != (a, b)
                 and consistent(links, s, e)]
        if inner:
            spans.append(rng.choice(inner))
    opens: dict[int, list[str]] = {}
    closes: dict[int, list[str]] = {}
    for n, (start, end) in sorted(enumerate(spans), key=lambda item: (item[1][0], -item[1][1])):
        tag = TAGS[n % len(TAGS)].format(n=n)
        opens.setdefault(start, []).append(tag)
        closes.setdefault(end - 1, []).insert(0, f"</{tag[1]}>")
    out = []
    for i, word in enumerate(words):
        out.append("".join(opens.get(i, [])) + html.escape(word, quote=False) + "".join(closes.get(i, [])))
    return " ".join(out), spans


class _Spans(HTMLParser):
    """A translated paragraph: its text, and the character span each tag id encloses; the tags in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text, self.balanced = "", True
        self.order: list[str] = []
        self.open: list[tuple[str, str, int]] = []
        self.spans: dict[str, tuple[int, int]] = {}
        self.tree: list = []
        self._nodes = [self.tree]

    def handle_starttag(self, tag, attrs):
        ident = dict(attrs).get("id", "")
        self.open.append((tag, ident, len(self.text)))
        node: tuple[str, str, list] = (tag, ident, [])
        self._nodes[-1].append(node)
        self._nodes.append(node[2])
        self.order.append(ident)

    def handle_endtag(self, tag):
        if not self.open or self.open[-1][0] != tag:
            self.balanced = False
            return
        _, ident, start = self.open.pop()
        self._nodes.pop()
        self.spans[ident] = (start, len(self.text))

    def handle_data(self, data):
        self.text += data


def read_paragraph(markup: str) -> _Spans:
    parser = _Spans()
    parser.feed(markup)
    parser.close()
    parser.balanced &= not parser.open
    return parser


def canonical(nodes: list) -> list:
    return sorted((tag, ident, canonical(children)) for tag, ident, children in nodes)


def word_range(text: str, start: int, end: int) -> set[int]:
    found, position = set(), 0
    for n, word in enumerate(text.split()):
        position = text.index(word, position)
        if position < end and position + len(word) > start:
            found.add(n)
        position += len(word)
    return found


def paragraphs(document: str) -> list[str]:
    return [part.split("</p>")[0] for part in document.split("<p>")[1:]]


def tags_bench(run: str, train_src: list[str], train_tgt: list[str], sources: list[str], refs: list[str],
               tagged: list[tuple[str, list[tuple[int, int]]]]) -> dict:
    path, _, head = run.partition("@")
    loaded = load_model(Path(path))
    plain = [t.text for t in Translator.for_run(loaded).translate(sources)]
    layer_head = [*(int(n) for n in head.split(":")), None][:2] if head else [None, None]
    translator = DocumentTranslator(loaded, "html", align_layer=layer_head[0], align_head=layer_head[1])
    document = "".join(f"<p>{markup}</p>\n" for markup, _ in tagged)
    out = paragraphs(translator.translate(document))
    read = [read_paragraph(p) for p in out]
    stripped = [" ".join(r.text.split()) for r in read]
    wanted = [read_paragraph(markup) for markup, _ in tagged]
    same_tree = sum(r.balanced and canonical(r.tree) == canonical(w.tree) for r, w in zip(read, wanted, strict=True))
    same_order = sum(r.balanced and r.tree == w.tree for r, w in zip(read, wanted, strict=True))
    links = align_words(train_src + sources, train_tgt + stripped)[-len(sources):]
    hit = predicted = expected = unaligned = 0
    for r, (_, spans), pair in zip(read, tagged, links, strict=True):
        for n, (start, end) in enumerate(spans):
            truth = {j for i, j in pair if start <= i < end}
            if not truth:
                unaligned += 1
                continue
            truth = set(range(min(truth), max(truth) + 1))
            got = word_range(r.text, *r.spans[str(n)]) if str(n) in r.spans else set()
            hit, predicted, expected = hit + len(got & truth), predicted + len(got), expected + len(truth)
    precision, recall = hit / max(predicted, 1), hit / max(expected, 1)
    return {"run": run, "measure": "tags", "alignment": [translator.layer, translator.head],
            "sentences": len(sources),
            "tags": sum(len(spans) for _, spans in tagged), "well_formed_same_tree": same_tree / len(sources),
            "same_tree_and_order": same_order / len(sources), "placement_precision": round(precision, 4),
            "placement_recall": round(recall, 4),
            "placement_f1": round(2 * precision * recall / max(precision + recall, 1e-9), 4),
            "tags_without_reference_links": unaligned,
            "bleu_tagged_stripped": round(sacrebleu.corpus_bleu(stripped, [refs]).score, 2),
            "bleu_untagged": round(sacrebleu.corpus_bleu(plain, [refs]).score, 2),
            "chrf_tagged_stripped": round(sacrebleu.corpus_chrf(stripped, [refs]).score, 2),
            "chrf_untagged": round(sacrebleu.corpus_chrf(plain, [refs]).score, 2),
            "identical_text": sum(a == b for a, b in zip(stripped, plain, strict=True)) / len(sources),
            "stats": vars(translator.stats)}


def with_span(sentence: str, n: int, rng: random.Random) -> tuple[str, str]:
    span = [f"https://example.org/p/{n}?q=a", f"info{n}@example.de", str(rng.randint(2, 999)),
            rng.choice(["{name}", "%s", "%(count)d", "{0}"])][n % 4]
    words = sentence.split()
    at = rng.randint(0, len(words))
    return " ".join(words[:at] + [span] + words[at:]), span


def spans_bench(run: Path, sources: list[str], seed: int) -> list[dict]:
    loaded = load_model(run)
    rng = random.Random(seed)
    cases = [with_span(sentence, n, rng) for n, sentence in enumerate(sources)]
    text = "".join(line + "\n" for line, _ in cases)
    found = []
    for protect in (False, True):
        translator = DocumentTranslator(loaded, "text", protect=protect)
        lines = translator.translate(text).splitlines()
        kinds: dict[str, list[bool]] = {}
        for n, ((_, span), line) in enumerate(zip(cases, lines, strict=True)):
            kinds.setdefault(["url", "email", "number", "placeholder"][n % 4], []).append(line.count(span) == 1)
        found.append({"run": str(run), "measure": "spans", "protect": protect, "sentences": len(cases),
                      "restored_exactly": sum(sum(v) for v in kinds.values()) / len(cases),
                      **{kind: round(sum(v) / len(v), 4) for kind, v in kinds.items()},
                      "stats": vars(translator.stats)})
    return found


def speed_bench(run: Path, sources: list[str], tagged: list[tuple[str, list[tuple[int, int]]]], repeats: int
                ) -> dict:
    loaded = load_model(run)
    translator = Translator.for_run(loaded)
    document = "".join(f"<p>{markup}</p>\n" for markup, _ in tagged)
    plain_s = html_s = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        translator.translate(sources)
        plain_s = min(plain_s, time.perf_counter() - start)
        start = time.perf_counter()
        DocumentTranslator(loaded, "html").translate(document)
        html_s = min(html_s, time.perf_counter() - start)
    return {"run": str(run), "measure": "speed", "sentences": len(sources), "plain_s": round(plain_s, 2),
            "html_s": round(html_s, 2), "overhead": round(html_s / plain_s, 3)}


def memory_bench(tagged: list[tuple[str, list[tuple[int, int]]]], size: int = 10_000_000) -> dict:
    document = "".join(f"<p>{markup}</p>\n" for markup, _ in tagged)

    def chunks():
        written = 0
        while written < size:
            for start in range(0, len(document), 1 << 16):
                yield document[start:start + (1 << 16)]
            written += len(document)

    tracemalloc.start()
    start = time.perf_counter()
    segments = sum(isinstance(item, Segment) for item in read_items(chunks(), "html"))
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"measure": "memory", "document_bytes": size, "segments": segments, "seconds": round(seconds, 1),
            "peak_traced_mb": round(peak / 1e6, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="RUN, RUN@LAYER or RUN@LAYER:HEAD")
    parser.add_argument("--sentences", type=int, default=1000, help="test sentences (from the first)")
    parser.add_argument("--speed-sentences", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tagged", type=Path, help="keep the tagged sentences in this file, or read them from it "
                        "(eflomal samples with its own seed: runs measured apart then share one tagged set)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["tags", "spans", "speed", "memory"])
    args = parser.parse_args()

    config = load_model(Path(args.runs[0].partition("@")[0])).config
    train = prepare_data(config).splits["train"]
    test = eval_set(config.data, "test")
    sources, refs = test.sources[:args.sentences], test.references[:args.sentences]
    if args.tagged and args.tagged.exists():  # the same tagged set for runs measured in several invocations
        tagged = [(markup, [tuple(span) for span in spans]) for markup, spans in json.loads(args.tagged.read_text())]
    else:
        reference_links = align_words(train.src_text + sources, train.tgt_text + refs)[-len(sources):]
        rng = random.Random(args.seed)
        tagged = [tag_sentence(s.split(), links, rng) for s, links in zip(sources, reference_links, strict=True)]
        if args.tagged:
            args.tagged.write_text(json.dumps(tagged))
    if "memory" not in args.skip:
        print(json.dumps(memory_bench(tagged)), flush=True)
    for spec in args.runs:
        if "tags" not in args.skip:
            print(json.dumps(tags_bench(spec, train.src_text, train.tgt_text, sources, refs, tagged)), flush=True)
        if "@" in spec:
            continue
        run = Path(spec)
        if "spans" not in args.skip:
            for row in spans_bench(run, sources, args.seed):
                print(json.dumps(row), flush=True)
        if "speed" not in args.skip:
            print(json.dumps(speed_bench(run, sources[:args.speed_sentences], tagged[:args.speed_sentences],
                                         args.repeats)), flush=True)


if __name__ == "__main__":
    main()
