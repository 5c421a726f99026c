"""Text in, text out around search: clean and encode raw sentences as the training corpus was, batch them by
length, decode greedily, with a beam or by minimum Bayes risk over candidates, restore the input order,
detokenize, and estimate each translation's quality. Used by `nmt translate`, `nmt evaluate`, `nmt attention`,
`nmt analyze` and dev validation."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmt.config import (
    MAX_BEAM,
    MAX_POSITIONS_SETTING,
    MAX_SEED,
    CleanConfig,
    DecodingConfig,
    EvaluationConfig,
    MbrConfig,
)
from nmt.data.batching import collate, token_batches
from nmt.data.corpus import has_content, normalize
from nmt.data.tokenizer import Tokenizer
from nmt.errors import ArgumentError
from nmt.inference.arguments import integer
from nmt.inference.controls import NO_CONTROLS, Controls, TokenListener
from nmt.inference.ensemble import load_models
from nmt.inference.mbr import DEFAULT_EVALUATION, MBR_SEED, choose
from nmt.inference.options import DecodingOptions
from nmt.inference.quality import Calibration, QualityEstimator
from nmt.inference.search import Hypothesis, Sampling, beam_search, greedy_search
from nmt.inference.steer import Steer
from nmt.inference.streaming import stream_line
from nmt.models.interface import Decoder
from nmt.progress import progress_bar
from nmt.runs.loading import DecodingRun
from nmt.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

log = logging.getLogger(__name__)


@dataclass
class Translation:
    source: str
    hypotheses: list[Hypothesis]  # n-best (or the alternatives), best first
    texts: list[str]  # detokenized, one per hypothesis
    src_ids: list[int]
    missing: list[str] = field(default_factory=list)  # constraints the best hypothesis lacks (warned about)
    utilities: list[float] | None = None  # MBR: each hypothesis's expected utility (0-100, TER negated)
    estimate: Callable[[], float] | None = field(default=None, repr=False, compare=False)

    @property
    def text(self) -> str:
        return self.texts[0]

    @property
    def quality(self) -> float | None:
        """The estimated sentence chrF of the translation, 0-100 (nmt.inference.quality); None for a line with no
        content, or from a translator that has no estimator (dev validation's)."""
        return self.estimate() if self.estimate is not None else None


@dataclass(frozen=True)
class _Targets:
    """A line's steering encoded: prefix ids and each constraint's ids (target ids, no EOS)."""

    prefix: list[int]
    constraints: list[list[int]]


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
    def __init__(self, model: Decoder, tokenizer: Tokenizer, decoding: DecodingConfig, clean: CleanConfig,
                 evaluation: EvaluationConfig = DEFAULT_EVALUATION, estimator: QualityEstimator | None = None):
        """`evaluation` sets MBR's utilities as it sets the scores (BLEU's tokenizer, case); `estimator` estimates
        each translation's quality (none: `Translation.quality` is None)."""
        self.model, self.tokenizer, self.decoding, self.clean = model, tokenizer, decoding, clean
        self.evaluation, self.estimator = evaluation, estimator
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))  # ONNX models have none

    @classmethod
    def for_run(cls, loaded: DecodingRun) -> Translator:
        """Decode as the run was configured: its decoding settings, its corpus cleaning, its evaluation settings,
        and the quality calibration its checkpoint holds (an ensemble: its first run's)."""
        checkpoint = loaded.checkpoint
        return cls(loaded.model, loaded.tokenizer, loaded.config.decoding, loaded.config.data.clean,
                   loaded.config.evaluation,
                   QualityEstimator(Calibration.from_meta(checkpoint.meta), f"{loaded.run.path.name}/"
                                                                            f"{checkpoint.path.name}"))

    def output_limits(self, src_lengths: torch.Tensor) -> torch.Tensor:
        """The most tokens each translation may have, EOS included: max_ratio x source tokens + max_extra, at
        least 1, and no more than a Transformer's positions."""
        limits = (src_lengths.float() * self.decoding.max_ratio + self.decoding.max_extra).long().clamp(min=1)
        if self.model.max_positions is not None:  # a Transformer decodes no further than its positions
            limits = limits.clamp(max=self.model.max_positions)
        return limits

    def search_ids(self, src: Sequence[Sequence[int]], beam_size: int, n_best: int = 1,
                   progress: bool = False, sampling: Sampling | None = None, length_penalty: float | None = None,
                   *, controls: Controls = NO_CONTROLS, max_output: Sequence[int] | None = None, draws: int = 1
                   ) -> list[list[Hypothesis]]:
        """Decode encoded source sentences (each ending in EOS) in length-sorted batches; input order kept.
        With `sampling`, each sentence is `draws` draws from the model instead of a search (its rows in the batch,
        as a beam's are, encoded once). The length penalty
        (checked by the caller) defaults to the run's. `controls` steer the search (their prefixes and
        constraints one per sentence of `src`; constraints decode with the beam, even a beam of one);
        `max_output` lowers sentences' output limits."""
        penalty = self.decoding.length_penalty if length_penalty is None else length_penalty
        results: list[list[Hypothesis]] = [[] for _ in src]
        pick = sampling.picker(self.device) if sampling is not None else None
        lengths = np.array([len(s) for s in src])
        longest = max(1, int(lengths.max(initial=1)))
        budget = self.decoding.batch_sentences * longest
        rows = draws if pick is not None else beam_size
        sentences = batch_sentences(rows, longest, self.decoding, self.model.cache_floats_per_position)
        batches = token_batches(lengths, None, budget, sentences)
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode(), progress_bar(total=len(src), desc="translate", unit="sent", enabled=progress,
                                                  leave=False) as bar:
            for indices in batches:
                batch = collate([src[i] for i in indices], None, indices).to(self.device)
                memory, state = self.model.encode(batch.src, batch.src_lengths, batch.src_mask)
                max_lengths = self.output_limits(batch.src_lengths.to(self.device))
                if max_output is not None:
                    max_lengths = max_lengths.clamp(max=torch.tensor([max_output[i] for i in indices],
                                                                     device=self.device))
                step = self.model.step_log_probs
                own = _for_sentences(controls, indices.tolist())
                if pick is not None and draws > 1:  # each sentence's draws are rows of it, as a beam's are
                    each = torch.arange(len(indices), device=self.device).repeat_interleave(draws)
                    memory, state, max_lengths = memory.repeat(draws), state.select(each), max_lengths[each]
                    # rows stay to the end: the memory drops whole sentences, the greedy search single rows
                    drawn = greedy_search(step, memory, state, max_lengths, BOS_ID, EOS_ID, PAD_ID, pick,
                                          drop_share=1.0, controls=_for_sentences(own, each.tolist()))
                    found = [drawn[i * draws:(i + 1) * draws] for i in range(len(indices))]
                elif (beam_size == 1 and not own.constrained) or pick is not None:
                    found = [[h] for h in greedy_search(step, memory, state, max_lengths, BOS_ID, EOS_ID, PAD_ID,
                                                        pick, controls=own)]
                else:
                    found = beam_search(step, memory, state, max_lengths, beam_size, BOS_ID, EOS_ID, PAD_ID,
                                        penalty, n_best, controls=own)
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

    def encode_target(self, text: str, field: str, limit: int | None = None) -> list[int]:
        """A prefix or constraint as target ids, cleaned as the corpus was; one that is empty, has a piece the
        vocabulary lacks or more tokens than its sentence's output `limit` (`output_limits`) is refused naming
        `field`."""
        ids = self.tokenizer.encode_tgt([normalize(text, self.clean)])[0]
        if not ids:
            raise ArgumentError(field, f"{text!r} is empty")
        if UNK_ID in ids:
            unknown = [p for i, p in zip(ids, self.tokenizer.tgt_pieces(ids), strict=True) if i == UNK_ID]
            raise ArgumentError(field, f"{text!r} has pieces the target vocabulary lacks ({' '.join(unknown)}): it "
                                       "cannot be generated")
        if limit is not None and len(ids) > limit:
            raise ArgumentError(field, f"{text!r} has {len(ids)} subword tokens; the translation of this sentence "
                                       f"has at most {limit} (decoding.max_ratio x its source tokens + "
                                       "decoding.max_extra)")
        return ids

    def _targets(self, steers: Sequence[Steer], encoded: Sequence[list[int]]) -> list[_Targets]:
        """Each line's steering encoded and checked against the line's output limit; an error names the line
        when there are several."""
        limits = self.output_limits(torch.tensor([len(ids) for ids in encoded])).tolist()
        found = []
        for number, (steer, limit) in enumerate(zip(steers, limits, strict=True), start=1):
            try:
                found.append(self._encode_steer(steer, limit))
            except ArgumentError as err:
                if len(steers) == 1:
                    raise
                raise ArgumentError(err.field, f"line {number}: {err.message}") from None
        return found

    def _encode_steer(self, steer: Steer, limit: int) -> _Targets:
        return _Targets(self.encode_target(steer.prefix, "prefix", limit) if steer.prefix else [],
                        [self.encode_target(text, "constraint", limit) for text in steer.constraints])

    def translate(self, lines: Sequence[str], beam_size: object = None, n_best: object = None,
                  length_penalty: object = None, progress: bool = False, sampling: Sampling | None = None, *,
                  steers: Sequence[Steer] | None = None, no_repeat_ngram_size: object = None,
                  repetition_penalty: object = None, n_alternatives: object = None,
                  listener: TokenListener | None = None, mbr: object = None, seed: object = None
                  ) -> list[Translation]:
        """Translate raw lines, decoding as `DecodingOptions.resolve` says (what is not given is the run's); a
        line with no content (empty, or only spaces, control or invisible format characters) gives an empty
        translation. `steers` (one per line) force prefixes and require phrases; a phrase the best hypothesis
        still lacks (the length limit left no room, or a repeated n-gram was banned) is warned about and listed
        in `missing`.
        `n_alternatives` K returns, instead of the n-best, the K best continuations that differ at the first
        position after the prefix, each completed by the search. `listener` receives the best hypothesis's
        tokens as they are decoded (one line only).
        `mbr` (True, False, a mapping or an MbrConfig; default the run's decoding.mbr, see
        `DecodingOptions.resolve`) chooses each translation among candidates by minimum Bayes risk, their
        n-best by expected utility (`utilities`); `seed` (default MBR_SEED) draws sampled candidates."""
        exclusive = ("sampling" if sampling is not None else "streaming" if listener is not None
                     else "n_alternatives" if n_alternatives is not None else None)
        settings = DecodingOptions.resolve(self.decoding, beam_size, n_best, length_penalty, no_repeat_ngram_size,
                                           repetition_penalty, mbr=mbr, exclusive=exclusive,
                                           constrained=bool(steers) and any(s.constraints for s in steers or []))
        if seed is not None and (settings.mbr is None or settings.mbr.source != "sample"):
            raise ArgumentError("seed", "draws MBR's sampled candidates: it goes with MBR, source sample")
        if steers is not None and len(steers) != len(lines):
            raise ArgumentError("prefix", f"{len(steers)} prefixes or constraint sets for {len(lines)} lines: "
                                          "they go line by line")
        cleaned = [normalize(line, self.clean) for line in lines]  # as the training corpus was cleaned
        encoded = self.encode(cleaned)
        todo = [i for i, line in enumerate(cleaned) if has_content(line)]
        if listener is not None and len(todo) > 1:
            raise ArgumentError("stream", f"streams one sentence at a time, not {len(todo)}")
        targets = self._targets(steers, encoded) if steers is not None else None
        if sampling is not None and targets and any(t.constraints for t in targets):
            raise ArgumentError("constraint", "goes with the search, not with sampling: a draw cannot be steered "
                                              "towards a phrase")
        controls = Controls(prefixes=[targets[i].prefix for i in todo] if targets else None,
                            constraints=[targets[i].constraints for i in todo] if targets else None,
                            no_repeat_ngram_size=settings.no_repeat_ngram_size,
                            repetition_penalty=settings.repetition_penalty, listener=listener)
        sources = [encoded[i] for i in todo]
        utilities: dict[int, list[float]] = {}
        if n_alternatives is not None:
            found = self._alternatives(sources, settings, integer(n_alternatives, "n_alternatives", 1, MAX_BEAM),
                                       controls, sampling)
        elif settings.mbr is not None:
            found = self._candidates(sources, settings, controls,
                                     MBR_SEED if seed is None else integer(seed, "seed", 0, MAX_SEED), progress)
        else:
            found = self.search_ids(sources, settings.beam_size, settings.n_best, progress, sampling,
                                    settings.length_penalty, controls=controls) if todo else []
        empty = Hypothesis([], 0.0, 0.0, torch.zeros(0, 0))
        by_line = dict(zip(todo, found, strict=True))
        out = []
        for i, line in enumerate(lines):
            hyps = by_line.get(i, [empty])
            texts = [self.tokenizer.decode_tgt(h.tokens) for h in hyps]
            if settings.mbr is not None and i in by_line:
                hyps, texts, utilities[i] = choose(hyps, texts, settings.mbr, settings.n_best, self.evaluation)
            missing = [text for text, ids in zip(steers[i].constraints, targets[i].constraints, strict=True)
                       if not _contains(hyps[0].tokens, ids)] if steers and targets and i in by_line else []
            if missing:
                log.warning("line %d: the translation lacks %s: the length limit left no room, or "
                            "no_repeat_ngram_size banned a repeated n-gram", i + 1,
                            ", ".join(repr(m) for m in missing))
            out.append(Translation(line, hyps, texts, encoded[i], missing, utilities.get(i),
                                   self._estimate(hyps[0], utilities.get(i), settings) if i in by_line else None))
        return out

    def _estimate(self, best: Hypothesis, utilities: list[float] | None, settings: DecodingOptions
                  ) -> Callable[[], float] | None:
        """How the translation's quality is estimated when asked for (the estimator warns once if uncalibrated)."""
        if self.estimator is None:
            return None
        # MBR's expected utility stands for the quality over sampled candidates only: a beam's n-best agree with
        # each other whatever the reference (Spearman with sentence chrF 0.06 to 0.16, against 0.58; BENCHMARKS.md)
        sampled = settings.mbr is not None and settings.mbr.source == "sample"
        estimator, metric = self.estimator, settings.mbr.metric if sampled and settings.mbr is not None else None
        return lambda: estimator.estimate(best, utilities[0] if utilities else None, metric)

    def _candidates(self, sources: list[list[int]], settings: DecodingOptions, controls: Controls, seed: int,
                    progress: bool) -> list[list[Hypothesis]]:
        """MBR's candidates per sentence: the n-best of a beam of `candidates`, or `candidates` draws by epsilon
        sampling (`seed`), each sentence's candidates decoded as rows of its batch."""
        assert settings.mbr is not None
        count = settings.mbr.candidates
        if not sources:
            return []
        if settings.mbr.source == "beam":
            return self.search_ids(sources, count, count, progress, length_penalty=settings.length_penalty,
                                   controls=controls)
        return self.search_ids(sources, 1, progress=progress, sampling=Sampling(epsilon=settings.mbr.epsilon,
                                                                                seed=seed),
                               controls=controls, draws=count)

    def _alternatives(self, sources: list[list[int]], settings: DecodingOptions, count: int, controls: Controls,
                      sampling: Sampling | None) -> list[list[Hypothesis]]:
        """Per sentence, the `count` most probable tokens at the first position after its prefix (a beam of
        `count` over that one position), each then completed by the search with the prefix and that token
        forced; ordered by that token's probability. EOS among them is the prefix alone, ended."""
        if controls.constrained or sampling is not None or controls.listener is not None:
            raise ArgumentError("n_alternatives", "goes with a prefix, not with constraints, sampling or streaming")
        if not sources:
            return []
        prefixes = [list(p) for p in controls.prefixes] if controls.prefixes else [[] for _ in sources]
        first = self.search_ids(sources, count, count, controls=controls,
                                max_output=[len(p) + 1 for p in prefixes])
        found: list[list[Hypothesis]] = [[] for _ in sources]
        extended, places = [], []
        for number, (prefix, hyps) in enumerate(zip(prefixes, first, strict=True)):
            for hyp in hyps:
                if hyp.score == float("-inf"):
                    continue
                if not hyp.ended and len(hyp.tokens) == len(prefix) + 1:  # to complete (not EOS, not the limit)
                    extended.append(hyp.tokens)
                    places.append((number, len(found[number])))
                found[number].append(hyp)
        completed = self.search_ids([sources[n] for n, _ in places], settings.beam_size, 1,
                                    length_penalty=settings.length_penalty,
                                    controls=replace(controls, prefixes=extended, constraints=None)) if places else []
        for (number, place), done in zip(places, completed, strict=True):
            found[number][place] = done[0]
        return found


def _for_sentences(controls: Controls, indices: Sequence[int]) -> Controls:
    """The controls of the sentences at `indices`."""
    return replace(controls, prefixes=[controls.prefixes[i] for i in indices] if controls.prefixes else None,
                   constraints=[controls.constraints[i] for i in indices] if controls.constraints else None)


def _contains(tokens: Sequence[int], phrase: Sequence[int]) -> bool:
    n = len(phrase)
    return any(list(tokens[i:i + n]) == list(phrase) for i in range(len(tokens) - n + 1))


@dataclass
class TranslatedLines:
    translations: list[Translation]
    beam_size: int
    n_best: int  # hypotheses per line: the n-best, or the alternatives asked for
    mbr: MbrConfig | None = None  # chosen by MBR: the hypotheses are ranked by expected utility

    @property
    def listed(self) -> bool:
        """Whether each line has several hypotheses to list."""
        return self.n_best > 1


def translate_lines(run_dir: Path | Sequence[Path], lines: Sequence[str], beam_size: int | None = None,
                    n_best: int | None = None, checkpoint: str = "best", overrides: Sequence[str] = (),
                    progress: bool = False, sampling: Sampling | None = None, quantize: str | None = None,
                    runtime: str = "torch", *, steers: Sequence[Steer] | None = None,
                    no_repeat_ngram_size: int | None = None, repetition_penalty: float | None = None,
                    n_alternatives: int | None = None, stream: Callable[[str], None] | None = None,
                    mbr: object = None, seed: int | None = None) -> TranslatedLines:
    """Translate raw lines with a trained run; beam size and n-best default to the run's decoding settings.
    With `sampling`, one draw per line (beam and n-best do not apply). Several runs decode as an ensemble.
    `steers`, the n-gram size, the repetition penalty, the alternatives, `mbr` and `seed` are
    `Translator.translate`'s; with `stream`, lines are decoded one at a time and each one's text is passed to it
    as it is decoded, then a line end."""
    loaded = load_models(run_dir, checkpoint, overrides, quantize=quantize, runtime=runtime)
    if sampling:
        beam_size, n_best = 1, 1
    exclusive = ("sampling" if sampling else "streaming" if stream is not None
                 else "n_alternatives" if n_alternatives is not None else None)
    settings = DecodingOptions.resolve(loaded.config.decoding, beam_size, n_best, mbr=mbr, exclusive=exclusive,
                                       constrained=bool(steers) and any(s.constraints for s in steers or []))
    translator = Translator.for_run(loaded)
    options: dict[str, Any] = dict(no_repeat_ngram_size=no_repeat_ngram_size,
                                   repetition_penalty=repetition_penalty, n_alternatives=n_alternatives, mbr=mbr,
                                   seed=seed)
    if stream is None:
        translations = translator.translate(lines, beam_size, n_best, progress=progress, sampling=sampling,
                                            steers=steers, **options)
    else:
        translations = [stream_line(translator, line, stream, beam_size, sampling=sampling,
                                    steer=steers[i] if steers else None, **options)
                        for i, line in enumerate(lines)]
    return TranslatedLines(translations, settings.beam_size, n_alternatives or settings.n_best, settings.mbr)
