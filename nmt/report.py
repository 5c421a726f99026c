"""Plain-text tables for what the commands print (corpus statistics, score tables)."""

from __future__ import annotations

from collections.abc import Sequence

from nmt.batching import padding_fraction, token_batches
from nmt.config import Config
from nmt.prepare import prepare_data


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def data_report(config: Config) -> str:
    """Prepare (or load) the corpus and describe it: pairs, tokens, vocabulary, drops, padding."""
    prepared = prepare_data(config)
    stats = prepared.stats
    rows = []
    for name, split in stats["splits"].items():
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(split["dropped"].items())) or "-"
        rows.append([name, split["pairs"], split["src_tokens"], split["tgt_tokens"], dropped])
    train = prepared.splits["train"]
    batches = token_batches(train.src_lengths, train.tgt_lengths, config.training.batch_tokens,
                            config.training.max_batch_sentences, seed=config.seed)
    padding = padding_fraction(batches, train.src_lengths, train.tgt_lengths)
    lines = [
        f"corpus {config.data.src_lang}->{config.data.tgt_lang}: "
        f"{'reused cache' if prepared.reused else 'built cache'} {prepared.cache_dir}",
        format_table(["split", "pairs", "src tokens", "tgt tokens", "dropped"], rows),
        f"vocabulary: source {stats['src_vocab_size']}, target {stats['tgt_vocab_size']} "
        f"({config.tokenizer.model_type}, {'joint' if config.tokenizer.joint else 'separate'})",
        f"training batches: {len(batches)} of <= {config.training.batch_tokens} tokens, padding {padding:.1%}",
    ]
    return "\n".join(lines)
