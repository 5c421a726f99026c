"""Forced decoding: how probable a trained model finds given translations, sentence by sentence and token by
token (for filtering a corpus, reranking n-best lists, or spotting what a model finds surprising).

Sources and translations are cleaned and encoded as in training; the decoder is teacher-forced on the
translation, and each target token's log-probability (EOS included) is read from its output. A translation
longer than the model takes (the Translator's `source_limit`, which bounds what it decodes too) is cut to that
many tokens with a warning, scored without its EOS and flagged `truncated`, so memory stays bounded whatever
the input."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nmt.data.batching import collate, token_batches
from nmt.data.corpus import normalize
from nmt.errors import DataError
from nmt.inference.translate import Translator
from nmt.runs.loading import LoadedRun, load_model

log = logging.getLogger(__name__)


@dataclass
class ScoredPair:
    index: int  # line number in the input, from 0
    log_prob: float  # sum over the target tokens and EOS
    tokens: list[str]  # target subword pieces, then "</s>" unless truncated
    token_log_probs: list[float]
    truncated: bool = False  # the translation was longer than the model takes: its first tokens were scored

    @property
    def per_token(self) -> float:
        return self.log_prob / len(self.token_log_probs)

    def as_dict(self) -> dict:
        return {"index": self.index, "log_prob": round(self.log_prob, 4), "per_token": round(self.per_token, 4),
                "tokens": self.tokens, "token_log_probs": [round(p, 4) for p in self.token_log_probs],
                "truncated": self.truncated}


def score_pairs(run_dir: Path, sources: Sequence[str], targets: Sequence[str], checkpoint: str = "best",
                overrides: Sequence[str] = ()) -> list[ScoredPair]:
    """Every pair's scores under a run's checkpoint, in input order."""
    _check_aligned(sources, targets)  # before the model is loaded
    return score_with(load_model(run_dir, checkpoint, overrides), sources, targets)


def _check_aligned(sources: Sequence[str], targets: Sequence[str]) -> None:
    if len(sources) != len(targets):
        raise DataError(f"score: {len(sources)} source lines but {len(targets)} translations")


def score_with(loaded: LoadedRun, sources: Sequence[str], targets: Sequence[str]) -> list[ScoredPair]:
    """Every pair's scores under a loaded model, in input order."""
    _check_aligned(sources, targets)
    config, model, tokenizer = loaded.config, loaded.model, loaded.tokenizer
    translator = Translator.for_run(loaded)
    src = translator.encode([normalize(line, config.data.clean) for line in sources])
    tgt = tokenizer.encode_tgt([normalize(line, config.data.clean) for line in targets])
    limit, setting = translator.source_limit
    truncated = {i for i, ids in enumerate(tgt) if len(ids) >= limit}  # the decoder reads BOS + tokens
    for i in sorted(truncated):
        log.warning("translation line %d has %d subword tokens: its first %d scored (%s)", i + 1, len(tgt[i]),
                    limit - 1, setting)
        del tgt[i][limit - 1:]
    src_lengths = np.array([len(s) for s in src])
    tgt_lengths = np.array([len(t) for t in tgt])
    budget = config.decoding.batch_sentences * int(max(src_lengths.max(initial=1), tgt_lengths.max(initial=0) + 1))
    results: dict[int, ScoredPair] = {}
    with torch.inference_mode():
        for indices in token_batches(src_lengths, tgt_lengths, budget, config.decoding.batch_sentences):
            batch = collate([src[i] for i in indices], [tgt[i] for i in indices], indices).to(translator.device)
            assert batch.tgt_in is not None and batch.tgt_out is not None
            logits = model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in)
            chosen = logits.float().log_softmax(dim=-1).gather(-1, batch.tgt_out.unsqueeze(-1)).squeeze(-1)
            for row, index in enumerate(indices):
                cut = int(index) in truncated
                values = chosen[row, :len(tgt[index]) + (0 if cut else 1)].tolist()  # EOS ends an uncut one
                pieces = tokenizer.tgt_pieces(tgt[index]) + ([] if cut else ["</s>"])
                results[int(index)] = ScoredPair(int(index), float(sum(values)), pieces, values, cut)
    return [results[index] for index in range(len(sources))]
