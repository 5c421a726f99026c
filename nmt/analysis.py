"""Attention inspection behind `nmt attention`, `nmt analyze` and `nmt compare`: one sentence's heatmap and
statistics; quality and focus by source length; several runs side by side."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nmt.attention_stats import AttentionStats, attention_stats
from nmt.checkpoint import best_files, load_model, load_run_config, read_meta
from nmt.errors import CheckpointError, ConfigError
from nmt.evaluate import eval_set
from nmt.fileio import atomic_write_text
from nmt.metrics import bleu, chrf
from nmt.plots import bar_panels, heatmap_html, heatmap_png
from nmt.rundir import RunDir
from nmt.translate import Translator


@dataclass
class SentenceAttention:
    source: str
    translation: str
    src_labels: list[str]
    tgt_labels: list[str]
    weights: np.ndarray  # (T, S)
    stats: AttentionStats
    png: Path
    html: Path


def file_stem(sentence: str) -> str:
    """A readable, unique file name for a sentence's heatmap: a slug of its start and a hash of all of it."""
    slug = re.sub(r"[^\w]+", "_", sentence.strip())[:40].strip("_") or "sentence"
    return f"{slug}-{hashlib.sha1(sentence.encode()).hexdigest()[:8]}"


def inspect_sentence(run_dir: Path, sentence: str, threshold: float = 0.1, beam_size: int | None = None,
                     checkpoint: str = "best", out_dir: Path | None = None, overrides: Sequence[str] = ()
                     ) -> SentenceAttention:
    """Translate one sentence and draw where each target token looked."""
    loaded = load_model(run_dir, checkpoint, overrides)
    translator = Translator.for_run(loaded)
    translation = translator.translate([sentence], beam_size or 1)[0]
    best = translation.hypotheses[0]
    src_labels = loaded.tokenizer.src_pieces(translation.src_ids)
    tgt_labels = loaded.tokenizer.tgt_pieces(best.tokens)
    weights = best.attention.numpy()
    if len(tgt_labels) < weights.shape[0]:
        tgt_labels.append("</s>")
    folder = out_dir or loaded.run.attention_dir
    title = f"{sentence} -> {translation.text}"
    stem = folder / file_stem(sentence)
    png = heatmap_png(weights, src_labels, tgt_labels, stem.with_suffix(".png"), title)
    page = heatmap_html(weights, src_labels, tgt_labels, stem.with_suffix(".html"), title)
    return SentenceAttention(sentence, translation.text, src_labels, tgt_labels, weights,
                             attention_stats(best.attention, threshold), png, page)


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
class Analysis:
    rows: list[BucketRow]
    png: Path
    report: Path


def analyze(run_dir: Path, split: str | None = None, src_file: Path | None = None, ref_file: Path | None = None,
            edges: Sequence[int] | None = None, beam_size: int | None = None, checkpoint: str = "best",
            progress: bool = False, overrides: Sequence[str] = ()) -> Analysis:
    """BLEU, chrF, mean attention entropy and mean maximum weight per source-length bucket, of a split of the
    run's corpus or of two aligned files."""
    loaded = load_model(run_dir, checkpoint, overrides)
    config = loaded.config
    found = eval_set(config, split, src_file, ref_file)
    name, sources, references = found.name, found.sources, found.references
    translator = Translator.for_run(loaded)
    translations = translator.translate(sources, beam_size or 1, progress=progress)
    lengths = [len(s.split()) for s in sources]
    bounds = bucket_edges(lengths, edges)
    rows, low = [], 1
    for high in bounds:
        members = [i for i, n in enumerate(lengths) if low <= n <= high]
        if members:
            hyps = [translations[i].text for i in members]
            refs = [references[i] for i in members]
            summaries = [attention_stats(translations[i].hypotheses[0].attention).summary() for i in members
                         if translations[i].hypotheses[0].tokens]
            rows.append(BucketRow(f"{low}-{high}", len(members), bleu(hyps, refs, config.evaluation).score,
                                  chrf(hyps, refs, config.evaluation).score,
                                  float(np.mean([s["entropy"][0] for s in summaries] or [0.0])),
                                  float(np.mean([s["max_weight"][0] for s in summaries] or [0.0]))))
        low = high + 1
    folder = loaded.run.analysis_dir
    png = bar_panels([r.label for r in rows], {"BLEU": [r.bleu for r in rows],
                                                "mean attention entropy (nats)": [r.entropy for r in rows],
                                                "mean max weight": [r.max_weight for r in rows]},
                      folder / f"{name}.png", f"{run_dir.name}: {name} by source length")
    report = folder / f"{name}.json"
    atomic_write_text(report, json.dumps([r.__dict__ for r in rows], indent=2) + "\n")
    return Analysis(rows, png, report)


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


def compare_plot(summaries: Sequence[RunSummary], path: Path) -> Path:
    return bar_panels([s.run for s in summaries], {"best dev BLEU": [s.dev_bleu for s in summaries],
                                                   "dev attention entropy (nats)": [s.entropy for s in summaries],
                                                   "training tokens/s": [s.tokens_per_s for s in summaries]},
                      path, "runs side by side", xlabel="run")
