"""`nmt analyze`: translation quality and attention focus by source length (BLEU, chrF, mean entropy and
largest weight per length bucket), and the entropy of every layer and head of one kind of attention per bucket."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nmt.data.batching import collate
from nmt.data.splits import eval_set
from nmt.data.tokenizer import Tokenizer
from nmt.errors import ConfigError
from nmt.fileio import atomic_write_text
from nmt.inference.attention_stats import attention_stats, entropy
from nmt.inference.metrics import bleu, chrf
from nmt.inference.translate import Translation, Translator
from nmt.inspect.plots import bar_figure, head_lines, save_figure
from nmt.inspect.view import map_labels, pick_kind
from nmt.inspect.words import shape_view
from nmt.models import Model
from nmt.runs.loading import load_model


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
    """Mean attention entropy of every layer and head by source-length bucket (for a model with more than one
    map of the kind)."""

    kind: str  # cross, encoder or decoder
    buckets: list[str]
    entropy: np.ndarray  # (buckets, layers, heads), nats

    def to_dict(self) -> dict:
        return {"kind": self.kind, "buckets": self.buckets, "entropy": self.entropy.round(4).tolist()}


@dataclass
class Analysis:
    rows: list[BucketRow]
    heads: HeadEntropies | None  # None for a model with one attention map, already in `rows`
    png: Path  # the bucket statistics
    heads_png: Path | None  # the heads' entropy per layer
    report: Path


def head_entropies(model: Model, src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]],
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
            maps = model.attention_maps(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in)[kind]
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


def analyze(run_dir: Path, split: str | None = None, *, src_file: Path | None = None, ref_file: Path | None = None,
            edges: Sequence[int] | None = None, beam_size: int | None = None, checkpoint: str = "best",
            progress: bool = False, overrides: Sequence[str] = (), kind: str = "cross", words: bool = False,
            eos: bool = True) -> Analysis:
    """BLEU, chrF, mean attention entropy and mean maximum weight per source-length bucket, of a split of the
    run's corpus or of two aligned files (beam size default: the run's); for a model with more than one map of
    `kind` attention (layers, heads) also the entropy of every layer and head per bucket (the statistics in
    `rows` are of the attention search returns: the last layer's cross-attention averaged over heads). With
    `words`, or without `eos`, every statistic is of the maps merged into words, or with EOS left out
    (nmt.inspect.words)."""
    loaded = load_model(run_dir, checkpoint, overrides)
    model = loaded.model
    described = model.describe()
    kind = pick_kind(described.kinds, kind)
    config = loaded.config
    found = eval_set(config.data, split, src_file, ref_file)
    name, sources, references = found.name, found.sources, found.references
    translations = Translator.for_run(loaded).translate(sources, beam_size, progress=progress)  # scored by bucket
    several = described.kinds[kind] * described.heads > 1  # else the one map's statistics are the rows
    if several:
        per_sentence = head_entropies(model, [t.src_ids for t in translations],
                                      [t.hypotheses[0].tokens for t in translations], kind,
                                      tokenizer=loaded.tokenizer, words=words, eos=eos)
    lengths = [len(s.split()) for s in sources]
    bounds = bucket_edges(lengths, edges)
    rows, head_rows, low = [], [], 1
    for high in bounds:
        members = [i for i, n in enumerate(lengths) if low <= n <= high]
        if members:
            if several:
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
