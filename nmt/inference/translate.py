"""Text in, text out around search: clean and encode raw sentences as the training corpus was, batch them by
length, decode greedily or with a beam, restore the input order, detokenize. Used by `nmt translate`,
`nmt evaluate`, `nmt attention`, `nmt analyze` and dev validation."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nmt.config import MAX_POSITIONS_SETTING, CleanConfig, DecodingConfig
from nmt.data.batching import collate, token_batches
from nmt.data.corpus import has_content, normalize
from nmt.data.tokenizer import Tokenizer
from nmt.inference.ensemble import load_models
from nmt.inference.options import DecodingOptions
from nmt.inference.search import Hypothesis, Sampling, beam_search, greedy_search
from nmt.models.interface import Decoder
from nmt.progress import progress_bar
from nmt.runs.loading import DecodingRun
from nmt.tokens import BOS_ID, EOS_ID, PAD_ID

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


SEARCH_MEMORY_BYTES = 1 << 30
"""What a decoding batch's growing buffers may take: the attention history (a row per beam and step) and the
decoder states' caches, twice (a beam's reordering copies them)."""


def batch_sentences(beam_size: int, longest_src: int, decoding: DecodingConfig, cache_floats_per_position: int
                    ) -> int:
    """Sentences per decoding batch: decoding.batch_sentences (each decoded as beam_size rows, as CTranslate2's
    max_batch_size counts them), fewer where the buffers that grow with the output would pass
    SEARCH_MEMORY_BYTES at the output limit: per row and position, a source-length attention row and twice
    the model's cache floats."""
    limit = max(1, int(longest_src * decoding.max_ratio + decoding.max_extra))
    per_sentence = beam_size * limit * (longest_src + 2 * cache_floats_per_position) * 4
    return max(1, min(decoding.batch_sentences, SEARCH_MEMORY_BYTES // per_sentence))


class Translator:
    def __init__(self, model: Decoder, tokenizer: Tokenizer, decoding: DecodingConfig, clean: CleanConfig):
        self.model, self.tokenizer, self.decoding, self.clean = model, tokenizer, decoding, clean
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))  # ONNX models have none

    @classmethod
    def for_run(cls, loaded: DecodingRun) -> Translator:
        """Decode as the run was configured: its decoding settings, its corpus cleaning."""
        return cls(loaded.model, loaded.tokenizer, loaded.config.decoding, loaded.config.data.clean)

    def search_ids(self, src: Sequence[Sequence[int]], beam_size: int, n_best: int = 1,
                   progress: bool = False, sampling: Sampling | None = None, length_penalty: float | None = None
                   ) -> list[list[Hypothesis]]:
        """Decode encoded source sentences (each ending in EOS) in length-sorted batches; input order kept.
        With `sampling`, each sentence is one draw from the model instead of a search. The length penalty
        (checked by the caller) defaults to the run's."""
        penalty = self.decoding.length_penalty if length_penalty is None else length_penalty
        results: list[list[Hypothesis]] = [[] for _ in src]
        pick = sampling.picker(self.device) if sampling is not None else None
        lengths = np.array([len(s) for s in src])
        longest = max(1, int(lengths.max(initial=1)))
        budget = self.decoding.batch_sentences * longest
        sentences = batch_sentences(beam_size, longest, self.decoding, self.model.cache_floats_per_position)
        batches = token_batches(lengths, None, budget, sentences)
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode(), progress_bar(total=len(src), desc="translate", unit="sent", enabled=progress,
                                                  leave=False) as bar:
            for indices in batches:
                batch = collate([src[i] for i in indices], None, indices).to(self.device)
                memory, state = self.model.encode(batch.src, batch.src_lengths, batch.src_mask)
                max_lengths = (batch.src_lengths.to(self.device).float() * self.decoding.max_ratio
                               + self.decoding.max_extra).long().clamp(min=1)  # room for EOS at least
                if self.model.max_positions is not None:  # a Transformer decodes no further than its positions
                    max_lengths = max_lengths.clamp(max=self.model.max_positions)
                step = self.model.step_log_probs
                if beam_size == 1 or pick is not None:
                    found = [[h] for h in greedy_search(step, memory, state, max_lengths, BOS_ID, EOS_ID, PAD_ID,
                                                        pick)]
                else:
                    found = beam_search(step, memory, state, max_lengths, beam_size, BOS_ID, EOS_ID, PAD_ID,
                                        penalty, n_best)
                for index, hyps in zip(indices, found, strict=True):
                    results[index] = hyps
                bar.update(len(indices))
        self.model.train(was_training)
        return results

    @property
    def source_limit(self) -> tuple[int, str]:
        """The most source tokens (EOS included) a sentence may have, and the setting that says so: the smaller
        of decoding.max_src_tokens and what the model can encode (a Transformer's max_positions)."""
        limit, setting = self.decoding.max_src_tokens, "decoding.max_src_tokens"
        if self.model.max_positions is not None and self.model.max_positions < limit:
            limit, setting = self.model.max_positions, MAX_POSITIONS_SETTING
        return limit, setting

    def encode(self, lines: Sequence[str]) -> list[list[int]]:
        """Encode cleaned lines, truncating overlong ones (with a warning) to `source_limit`."""
        limit, setting = self.source_limit
        encoded = self.tokenizer.encode_src(lines)
        for number, ids in enumerate(encoded, start=1):
            if len(ids) > limit:
                log.warning("input line %d has %d subword tokens: truncated to %d (%s)", number, len(ids), limit,
                            setting)
                ids[limit - 1:] = [EOS_ID]
        return encoded

    def translate(self, lines: Sequence[str], beam_size: object = None, n_best: object = None,
                  length_penalty: object = None, progress: bool = False, sampling: Sampling | None = None
                  ) -> list[Translation]:
        """Translate raw lines, decoding as `DecodingOptions.resolve` says (what is not given is the run's); a
        line with no content (empty, or only spaces, control or invisible format characters) gives an empty
        translation."""
        settings = DecodingOptions.resolve(self.decoding, beam_size, n_best, length_penalty)
        cleaned = [normalize(line, self.clean) for line in lines]  # as the training corpus was cleaned
        encoded = self.encode(cleaned)
        todo = [i for i, line in enumerate(cleaned) if has_content(line)]
        found = self.search_ids([encoded[i] for i in todo], settings.beam_size, settings.n_best, progress,
                                sampling, settings.length_penalty) if todo else []
        empty = Hypothesis([], 0.0, 0.0, torch.zeros(0, 0))
        by_line = dict(zip(todo, found, strict=True))
        out = []
        for i, line in enumerate(lines):
            hyps = by_line.get(i, [empty])
            out.append(Translation(line, hyps, [self.tokenizer.decode_tgt(h.tokens) for h in hyps], encoded[i]))
        return out


@dataclass
class TranslatedLines:
    translations: list[Translation]
    beam_size: int
    n_best: int


def translate_lines(run_dir: Path | Sequence[Path], lines: Sequence[str], beam_size: int | None = None,
                    n_best: int | None = None, checkpoint: str = "best", overrides: Sequence[str] = (),
                    progress: bool = False, sampling: Sampling | None = None, quantize: str | None = None,
                    runtime: str = "torch") -> TranslatedLines:
    """Translate raw lines with a trained run; beam size and n-best default to the run's decoding settings.
    With `sampling`, one draw per line (beam and n-best do not apply). Several runs decode as an ensemble."""
    loaded = load_models(run_dir, checkpoint, overrides, quantize=quantize, runtime=runtime)
    settings = DecodingOptions.resolve(loaded.config.decoding, 1 if sampling else beam_size,
                                       1 if sampling else n_best)
    translations = Translator.for_run(loaded).translate(lines, settings.beam_size, settings.n_best,
                                                        progress=progress, sampling=sampling)
    return TranslatedLines(translations, settings.beam_size, settings.n_best)
