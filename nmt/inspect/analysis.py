"""Attention inspection behind `nmt attention`, `nmt analyze` and `nmt compare`: one sentence's heatmap and
statistics; quality and focus by source length; several runs side by side."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from nmt.config import ATTENTION_KINDS, MAX_ATTRIBUTION_COST
from nmt.data.batching import collate
from nmt.data.splits import eval_set
from nmt.data.tokenizer import Tokenizer
from nmt.errors import CheckpointError, ConfigError
from nmt.fileio import atomic_write_text
from nmt.inference.attention_stats import attention_stats, entropy
from nmt.inference.metrics import bleu, chrf
from nmt.inference.translate import Translation, Translator
from nmt.inspect.attribution import AttributionView, attribution_view
from nmt.inspect.plots import bar_figure, head_lines, heads_figure, heatmap_html, heatmap_png, save_figure
from nmt.inspect.view import MAP_KEYS, AttentionView, attention_view, map_labels
from nmt.inspect.words import shape_view
from nmt.models import Transformer, with_heads
from nmt.runs.checkpoint import best_files, read_meta
from nmt.runs.loading import load_model, load_run_config
from nmt.runs.rundir import RunDir


@dataclass
class SentenceAttention(AttentionView):
    png: Path = field(kw_only=True)
    html: Path = field(kw_only=True)
    attribution: AttributionView | None = None  # with --attribution: beside the attention in `attribution_png`
    attribution_png: Path | None = None


def file_stem(sentence: str) -> str:
    """A readable, unique file name for a sentence's heatmap: a slug of its start and a hash of all of it."""
    slug = re.sub(r"[^\w]+", "_", sentence.strip())[:40].strip("_") or "sentence"
    return f"{slug}-{hashlib.sha1(sentence.encode()).hexdigest()[:8]}"


def inspect_sentence(run_dir: Path, sentence: str, threshold: float = 0.1, beam_size: int | None = None,
                     checkpoint: str = "best", out_dir: Path | None = None, overrides: Sequence[str] = (),
                     kind: str = "cross", layer: int | None = None, head: int | None = None, words: bool = False,
                     eos: bool = True, attribution: str | None = None, steps: int = 32,
                     max_cost: int | None = MAX_ATTRIBUTION_COST) -> SentenceAttention:
    """`attention_view` of a trained run (merged into words, without EOS, as asked), drawn as a heatmap (one
    head, or a grid of all heads) in PNG and HTML under `out_dir` (default RUN_DIR/attention); with
    `attribution` (a method of nmt.inspect.attribution, refused above `max_cost`), the attribution beside the
    attention in one more PNG."""
    loaded = load_model(run_dir, checkpoint, overrides)
    view = attention_view(loaded, sentence, threshold, beam_size, kind, layer, head, words=words, eos=eos)
    explained = attribution_view(loaded, view, attribution, steps, max_cost) if attribution else None
    title = f"{sentence} -> {view.translation}"
    suffix = "" if view.layer is None else f".{kind}-layer{view.layer}" + (f"-head{view.head}" if view.head else "")
    suffix += (".words" if words else "") + ("" if eos else ".no-eos")
    stem = f"{(out_dir or loaded.run.attention_dir) / file_stem(sentence)}{suffix}"
    if len(view.panels) == 1:
        png = heatmap_png(view.panels[0][1], view.col_labels, view.row_labels, Path(f"{stem}.png"), title)
    else:
        png = save_figure(heads_figure(view.panels, view.col_labels, view.row_labels, title), Path(f"{stem}.png"))
    page = heatmap_html(view.panels, view.col_labels, view.row_labels, Path(f"{stem}.html"), title)
    beside = None
    if explained is not None:
        shown = "heads averaged" if view.layer is not None and view.head is None else "attention"
        beside = save_figure(heads_figure([(f"{kind} {shown}", view.weights),
                                           (f"attribution ({explained.method})", explained.relevance)],
                                          view.col_labels, view.row_labels, title),
                             Path(f"{stem}.{explained.method}.png"))
    return SentenceAttention(**vars(view), png=png, html=page, attribution=explained, attribution_png=beside)


@dataclass
class BucketRow:
    label: str
    sentences: int
    bleu: float
    chrf: float
    entropy: float
    max_weight: float


def bucket_edges(lengths: Sequence[int], edges: Sequence[int] | None) -> list[int]:
    """Upper bounds of the buckets; by default the terciles of the lengths (short, medium, long)."""
    if edges:
        if list(edges) != sorted(set(edges)) or edges[0] < 1:
            raise ConfigError(f"--buckets {','.join(map(str, edges))}: give increasing positive lengths")
        return [*edges, max(max(lengths), edges[-1] + 1)]
    terciles = sorted({int(np.quantile(lengths, q)) for q in (1 / 3, 2 / 3)})
    return [*terciles, max(lengths)] if terciles[-1] < max(lengths) else terciles


@dataclass
class HeadEntropies:
    """Mean attention entropy of every layer and head by source-length bucket (Transformer runs)."""

    kind: str  # cross, encoder or decoder
    buckets: list[str]
    entropy: np.ndarray  # (buckets, layers, heads), nats

    def to_dict(self) -> dict:
        return {"kind": self.kind, "buckets": self.buckets, "entropy": self.entropy.round(4).tolist()}


@dataclass
class Analysis:
    rows: list[BucketRow]
    heads: HeadEntropies | None  # None for RNN runs: one attention, already in `rows`
    png: Path  # the bucket statistics
    heads_png: Path | None  # the heads' entropy per layer (Transformers)
    report: Path


def head_entropies(model: Transformer, src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]],
                   kind: str, batch_size: int = 64, tokenizer: Tokenizer | None = None, words: bool = False,
                   eos: bool = True) -> np.ndarray:
    """(sentences, layers, heads): each head's mean row entropy of `kind` attention, teacher forced on the
    given translations (every generated position, EOS included). Padded rows are left out; padded columns
    carry weight 0 and so add nothing. With `words` or without `eos` (a `tokenizer` names the pieces), of
    each sentence's maps as shown (nmt.inspect.words)."""
    shaped = words or not eos
    if shaped and tokenizer is None:
        raise ValueError("head_entropies: merging words or leaving out EOS needs the tokenizer")
    found = []
    for start in range(0, len(src_ids), batch_size):
        chunk = slice(start, start + batch_size)
        batch = collate(src_ids[chunk], tgt_ids[chunk], np.arange(len(src_ids[chunk])))
        assert batch.tgt_in is not None and batch.tgt_mask is not None
        with torch.no_grad():
            maps = model.attention_maps(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in)[MAP_KEYS[kind]]
        if shaped and tokenizer is not None:
            for b, (src, tgt) in enumerate(zip(src_ids[chunk], tgt_ids[chunk], strict=True)):
                row_labels, col_labels = map_labels(tokenizer, kind, src, tgt, len(tgt) + 1)
                view = shape_view(maps[:, b, :, :len(row_labels), :len(col_labels)], row_labels, col_labels, words,
                                  eos)[0]
                found.append(entropy(view).mean(-1)[None])  # (1, layers, heads)
            continue
        rows = (batch.src_mask if kind == "encoder" else batch.tgt_mask).double()  # (B, R)
        per_row = entropy(maps)  # (layers, B, heads, R)
        mean = (per_row * rows[None, :, None, :]).sum(-1) / rows.sum(-1)[None, :, None]
        found.append(mean.permute(1, 0, 2))
    return torch.cat(found).numpy()


def shown_attention(tokenizer: Tokenizer, translation: Translation, words: bool, eos: bool) -> torch.Tensor:
    """The attention search returned with a translation (rows: its tokens, then EOS if it ended), as shown."""
    best = translation.hypotheses[0]
    rows, cols = map_labels(tokenizer, "cross", translation.src_ids, best.tokens, best.attention.shape[0])
    return shape_view(best.attention, rows, cols, words, eos)[0]


def analyze(run_dir: Path, split: str | None = None, src_file: Path | None = None, ref_file: Path | None = None,
            edges: Sequence[int] | None = None, beam_size: int | None = None, checkpoint: str = "best",
            progress: bool = False, overrides: Sequence[str] = (), kind: str = "cross", words: bool = False,
            eos: bool = True) -> Analysis:
    """BLEU, chrF, mean attention entropy and mean maximum weight per source-length bucket, of a split of the
    run's corpus or of two aligned files; for a Transformer also the entropy of every layer and head of
    `kind` attention per bucket (the statistics in `rows` are of the attention search returns: the last
    layer's cross-attention averaged over heads). With `words`, or without `eos`, every statistic is of the
    maps merged into words, or with EOS left out (nmt.inspect.words)."""
    if kind not in ATTENTION_KINDS:
        raise ConfigError(f"--kind {kind}: choose one of {', '.join(ATTENTION_KINDS)}")
    loaded = load_model(run_dir, checkpoint, overrides)
    config = loaded.config
    found = eval_set(config.data, split, src_file, ref_file)
    name, sources, references = found.name, found.sources, found.references
    translations = Translator.for_run(loaded).translate(sources, beam_size or 1, progress=progress)  # scored by bucket
    model = loaded.model
    transformer = with_heads(model)
    if transformer is not None:
        per_sentence = head_entropies(transformer, [t.src_ids for t in translations],
                                      [t.hypotheses[0].tokens for t in translations], kind,
                                      tokenizer=loaded.tokenizer, words=words, eos=eos)
    elif kind != "cross":
        raise ConfigError(f"--kind {kind}: this RNN run has one cross-attention; --kind is for Transformers")
    lengths = [len(s.split()) for s in sources]
    bounds = bucket_edges(lengths, edges)
    rows, head_rows, low = [], [], 1
    for high in bounds:
        members = [i for i, n in enumerate(lengths) if low <= n <= high]
        if members:
            if transformer is not None:
                head_rows.append(per_sentence[members].mean(axis=0))
            hyps = [translations[i].text for i in members]
            refs = [references[i] for i in members]
            summaries = [attention_stats(shown_attention(loaded.tokenizer, translations[i], words, eos)).summary()
                         for i in members if translations[i].hypotheses[0].tokens]
            rows.append(BucketRow(f"{low}-{high}", len(members), bleu(hyps, refs, config.evaluation).score,
                                  chrf(hyps, refs, config.evaluation).score,
                                  float(np.mean([s["entropy"][0] for s in summaries] or [0.0])),
                                  float(np.mean([s["max_weight"][0] for s in summaries] or [0.0]))))
        low = high + 1
    folder = loaded.run.analysis_dir
    png = save_figure(bar_figure([r.label for r in rows], {"BLEU": [r.bleu for r in rows],
                                                           "mean attention entropy (nats)": [r.entropy for r in rows],
                                                           "mean max weight": [r.max_weight for r in rows]},
                                 f"{run_dir.name}: {name} by source length"), folder / f"{name}.png")
    heads = HeadEntropies(kind, [r.label for r in rows], np.stack(head_rows)) if head_rows else None
    heads_png = None if heads is None else head_lines(
        heads.buckets, heads.entropy, folder / f"{name}.{kind}-heads.png",
        f"{run_dir.name}: {name}, {kind} attention entropy per layer and head")
    report = folder / f"{name}.json"
    atomic_write_text(report, json.dumps({"buckets": [r.__dict__ for r in rows],
                                          "heads": heads and heads.to_dict()}, indent=2) + "\n")
    return Analysis(rows, heads, png, heads_png, report)


@dataclass
class RunSummary:
    run: str
    model: str  # architecture and attention, e.g. "rnn, bahdanau" or "transformer 3+3x256, 4 heads"
    parameters: int | None  # None for runs trained before checkpoints recorded it
    minutes: float
    tokens_per_s: float
    peak_rss_mb: float
    dev_bleu: float
    dev_chrf: float
    test_bleu: float | None
    entropy: float


def summarize_run(run_dir: Path) -> RunSummary:
    """What a finished (or stopped) training run achieved, from the files in its directory; builds no model."""
    run = RunDir(run_dir)
    config = load_run_config(run)
    validations = [r for r in run.metrics() if "dev_bleu" in r]
    best = best_files(run)
    if not validations or best is None:
        raise ConfigError(f"{run_dir}: no validation recorded yet (train it first)")
    try:
        meta = read_meta(best)
    except CheckpointError as err:
        raise ConfigError(str(err)) from None
    last = validations[-1]
    tests = run.eval_reports("test")
    test_bleu = json.loads(tests[0].read_text())["scores"]["BLEU"]["score"] if tests else None
    return RunSummary(run_dir.name, config.model.summary, meta.get("parameters"), last["elapsed"] / 60,
                      last["train_tokens_per_s"], last["peak_rss_mb"], meta["dev_bleu"], meta.get("dev_chrf", 0.0),
                      test_bleu, meta.get("dev_attention_entropy", 0.0))


def compare_figure(summaries: Sequence[RunSummary]) -> Figure:
    """Best dev BLEU, attention entropy and training speed per run."""
    return bar_figure([s.run for s in summaries], {"best dev BLEU": [s.dev_bleu for s in summaries],
                                                   "dev attention entropy (nats)": [s.entropy for s in summaries],
                                                   "training tokens/s": [s.tokens_per_s for s in summaries]},
                      "runs side by side", xlabel="run")


def compare_plot(summaries: Sequence[RunSummary], path: Path) -> Path:
    return save_figure(compare_figure(summaries), path)
