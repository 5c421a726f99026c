"""Attention inspection behind `nmt attention`, `nmt analyze` and `nmt compare`: one sentence's heatmap and
statistics; quality and focus by source length; several runs side by side."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nmt.attention_stats import AttentionStats, attention_stats
from nmt.checkpoint import best_checkpoint_name, load_model, load_run_config
from nmt.errors import ConfigError
from nmt.fileio import atomic_write_text
from nmt.metrics import bleu, chrf
from nmt.model import build_model, count_parameters
from nmt.plots import bar_panels, heatmap_html, heatmap_png
from nmt.tokenizer import Tokenizer
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


def _slug(text: str) -> str:
    return re.sub(r"[^\w]+", "_", text.strip())[:40].strip("_") or "sentence"


def inspect_sentence(run_dir: Path, sentence: str, threshold: float = 0.1, beam_size: int | None = None,
                     checkpoint: str = "best", out_dir: Path | None = None, overrides: Sequence[str] = ()
                     ) -> SentenceAttention:
    """Translate one sentence and draw where each target token looked."""
    config, tokenizer, model, _ = load_model(run_dir, checkpoint, overrides)
    translation = Translator(model, tokenizer, config.decoding).translate([sentence], beam_size or 1)[0]
    best = translation.hypotheses[0]
    src_labels = tokenizer.src_pieces(translation.src_ids)
    tgt_labels = tokenizer.tgt_pieces(best.tokens)
    weights = best.attention.numpy()
    if len(tgt_labels) < weights.shape[0]:
        tgt_labels.append("</s>")
    folder = out_dir or run_dir / "attention"
    title = f"{sentence} -> {translation.text}"
    stem = folder / _slug(sentence)
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


def analyze(run_dir: Path, sources: Sequence[str], references: Sequence[str], name: str,
            edges: Sequence[int] | None = None, beam_size: int | None = None, checkpoint: str = "best",
            progress: bool = False, overrides: Sequence[str] = ()) -> tuple[list[BucketRow], Path, Path]:
    """BLEU, chrF, mean attention entropy and mean maximum weight per source-length bucket."""
    config, tokenizer, model, _ = load_model(run_dir, checkpoint, overrides)
    translations = Translator(model, tokenizer, config.decoding).translate(sources, beam_size or 1, progress=progress)
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
    folder = run_dir / "analysis"
    png = bar_panels([r.label for r in rows], {"BLEU": [r.bleu for r in rows],
                                                "mean attention entropy (nats)": [r.entropy for r in rows],
                                                "mean max weight": [r.max_weight for r in rows]},
                      folder / f"{name}.png", f"{run_dir.name}: {name} by source length")
    report = folder / f"{name}.json"
    atomic_write_text(report, json.dumps([r.__dict__ for r in rows], indent=2) + "\n")
    return rows, png, report


@dataclass
class RunSummary:
    run: str
    attention: str
    parameters: int
    minutes: float
    tokens_per_s: float
    peak_rss_mb: float
    dev_bleu: float
    dev_chrf: float
    test_bleu: float | None
    entropy: float


def summarize_run(run_dir: Path) -> RunSummary:
    """What a finished (or stopped) training run achieved, from the files in its directory."""
    config = load_run_config(run_dir)
    tokenizer = Tokenizer.load(run_dir)
    parameters = count_parameters(build_model(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size))
    metrics_path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    validations = [r for r in rows if "dev_bleu" in r]
    if not validations or best_checkpoint_name(run_dir) is None:
        raise ConfigError(f"{run_dir}: no validation recorded yet (train it first)")
    last = validations[-1]
    best = json.loads((run_dir / "best.json").read_text())
    tests = sorted((run_dir / "eval").glob("test.beam*.json")) if (run_dir / "eval").exists() else []
    test_bleu = json.loads(tests[0].read_text())["scores"]["BLEU"]["score"] if tests else None
    return RunSummary(run_dir.name, config.model.attention.type, parameters, last["elapsed"] / 60,
                      last["train_tokens_per_s"], last["peak_rss_mb"], best["dev_bleu"], best.get("dev_chrf", 0.0),
                      test_bleu, best.get("dev_attention_entropy", 0.0))


def compare_plot(summaries: Sequence[RunSummary], path: Path) -> Path:
    return bar_panels([s.run for s in summaries], {"best dev BLEU": [s.dev_bleu for s in summaries],
                                                   "dev attention entropy (nats)": [s.entropy for s in summaries],
                                                   "training tokens/s": [s.tokens_per_s for s in summaries]},
                      path, "runs side by side", xlabel="run")
