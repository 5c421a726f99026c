"""Text in, text out around search: encode and batch raw sentences by length, decode greedily or with a
beam, restore the input order, detokenize. Used by `nmt translate`, `nmt evaluate` and dev validation."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from nmt.batching import collate, token_batches
from nmt.config import DecodingConfig
from nmt.model import Seq2Seq
from nmt.search import Hypothesis, beam_search, greedy_search
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer

log = logging.getLogger(__name__)


@dataclass
class Translation:
    source: str
    hypotheses: list[Hypothesis]  # n-best, best first
    texts: list[str]  # detokenized, one per hypothesis
    src_ids: list[int]

    @property
    def text(self) -> str:
        return self.texts[0]


class Translator:
    def __init__(self, model: Seq2Seq, tokenizer: Tokenizer, decoding: DecodingConfig):
        self.model, self.tokenizer, self.decoding = model, tokenizer, decoding
        self.device = next(model.parameters()).device

    def search_ids(self, src: Sequence[Sequence[int]], beam_size: int, n_best: int = 1,
                   progress: bool = False) -> list[list[Hypothesis]]:
        """Decode encoded source sentences (each ending in EOS) in length-sorted batches; input order kept."""
        results: list[list[Hypothesis]] = [[] for _ in src]
        lengths = np.array([len(s) for s in src])
        budget = self.decoding.batch_sentences * max(1, int(lengths.max(initial=1)))
        batches = token_batches(lengths, None, budget, max(1, self.decoding.batch_sentences // beam_size))
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode(), tqdm(total=len(src), desc="translate", unit="sent", disable=not progress,
                                          leave=False) as bar:
            for indices in batches:
                batch = collate([src[i] for i in indices], None, indices).to(self.device)
                memory, state = self.model.encode(batch.src, batch.src_lengths, batch.src_mask)
                max_lengths = (batch.src_lengths.to(self.device).float() * self.decoding.max_ratio
                               + self.decoding.max_extra).long()

                def step(prev, state, memory=memory):
                    return self.model.step_log_probs(prev, state, memory)

                if beam_size == 1:
                    found = [[h] for h in greedy_search(step, state, max_lengths, BOS_ID, EOS_ID, PAD_ID)]
                else:
                    order = torch.arange(batch.size, device=self.device).repeat_interleave(beam_size)
                    beams = memory.repeat(beam_size)

                    def beam_step(prev, state, memory=beams):
                        return self.model.step_log_probs(prev, state, memory)

                    found = beam_search(beam_step, state.select(order), max_lengths, beam_size, BOS_ID, EOS_ID,
                                        PAD_ID, self.decoding.length_penalty, n_best)
                for index, hyps in zip(indices, found, strict=True):
                    results[index] = hyps
                bar.update(len(indices))
        self.model.train(was_training)
        return results

    def encode(self, lines: Sequence[str]) -> list[list[int]]:
        """Encode raw lines, truncating overlong ones (with a warning) to decoding.max_src_tokens."""
        limit = self.decoding.max_src_tokens
        encoded = self.tokenizer.encode_src(lines)
        for number, ids in enumerate(encoded, start=1):
            if len(ids) > limit:
                log.warning("input line %d has %d subword tokens: truncated to %d", number, len(ids), limit)
                ids[limit - 1:] = [EOS_ID]
        return encoded

    def translate(self, lines: Sequence[str], beam_size: int | None = None, n_best: int = 1,
                  progress: bool = False) -> list[Translation]:
        """Translate raw lines; an empty (or whitespace-only) line gives an empty translation."""
        beam = beam_size or self.decoding.beam_size
        n_best = min(n_best, beam)
        encoded = self.encode(lines)
        todo = [i for i, line in enumerate(lines) if line.strip()]
        found = self.search_ids([encoded[i] for i in todo], beam, n_best, progress) if todo else []
        empty = Hypothesis([], 0.0, 0.0, torch.zeros(0, 0))
        by_line = dict(zip(todo, found, strict=True))
        out = []
        for i, line in enumerate(lines):
            hyps = by_line.get(i, [empty])
            out.append(Translation(line, hyps, [self.tokenizer.decode_tgt(h.tokens) for h in hyps], encoded[i]))
        return out
