"""Validation during training: dev loss and perplexity, greedy dev BLEU and chrF, attention entropy, the quality
score's calibration on the dev translations; and what the scores decide (the best checkpoint, early stopping's
patience, the plateau schedule).

Rank 0 alone translates the dev split; the other ranks take its scores, so that every rank agrees on patience
and the learning rate.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from nmt.config import Config
from nmt.data.prepare import EncodedSplit
from nmt.data.splits import EvalSet
from nmt.inference.attention_stats import attention_stats
from nmt.inference.quality import calibration_scores
from nmt.inference.scoring import decode_and_score
from nmt.inference.translate import Translator
from nmt.models import Model
from nmt.runs.rundir import RunDir
from nmt.training.batches import make_batch, split_batches
from nmt.training.distributed import World
from nmt.training.optim import Schedule
from nmt.training.reporting import peak_memory_mb
from nmt.training.step import Progress, autocast, token_loss
from nmt.training.tensorboard import TensorBoardLog

log = logging.getLogger(__name__)


@torch.no_grad()
def validate(model: Model, translator: Translator, dev: EncodedSplit, config: Config, device: torch.device,
             precision: str) -> tuple[dict[str, float], torch.Tensor | None]:
    """Dev loss and perplexity (teacher forced, no smoothing); greedy dev BLEU, chrF and mean attention entropy;
    the quality calibration fitted on the greedy translations (`quality_*`, nmt.inference.quality: each
    checkpoint keeps the one of its own weights); and the first dev sentence's cross-attention (T, S) (None for
    an empty translation), for TensorBoard."""
    model.eval()
    total, tokens = 0.0, 0
    for indices in split_batches(dev, config, seed=None):
        batch = make_batch(dev, indices).to(device)
        assert batch.tgt_in is not None and batch.tgt_out is not None  # dev batches have targets
        with autocast(device, precision):
            logits = model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in)
        total += float(token_loss(logits, batch.tgt_out, 0.0))
        tokens += batch.n_tgt_tokens
    decoded = decode_and_score(translator, EvalSet("dev", dev.src_text, dev.tgt_text), config.evaluation, 1)
    hyps = decoded.hypotheses
    model.train()
    for i in range(min(2, len(hyps))):
        log.info("  example %d | src: %s\n            | ref: %s\n            | hyp: %s", i, dev.src_text[i],
                 dev.tgt_text[i], hyps[i])
    found = [t.hypotheses[0] for t in decoded.translations]
    entropies = [attention_stats(h.attention).summary()["entropy"][0] for h in found if h.tokens]
    loss = total / max(1, tokens)
    first = None
    if decoded.translations and (top := decoded.translations[0]).hypotheses[0].attention.numel():
        first = top.hypotheses[0].attention[:, : len(top.src_ids)]  # the batch's padding columns left out
    calibration = calibration_scores(found, hyps, dev.tgt_text, config.evaluation)
    return {"dev_loss": loss, "dev_ppl": math.exp(min(loss, 50.0)), "dev_bleu": decoded.bleu.score,
            "dev_chrf": decoded.chrf.score, "dev_attention_entropy": sum(entropies) / max(1, len(entropies)),
            **calibration}, first


@dataclass(eq=False)
class Validation:
    """A run's validations: `score` on every rank, then `record` (rank 0 writes)."""

    model: Model
    translator: Translator
    dev: EncodedSplit
    config: Config
    device: torch.device
    world: World
    run_dir: RunDir
    board: TensorBoardLog | None  # rank 0 with training.tensorboard

    def score(self, progress: Progress, precision: str, schedule: Schedule) -> tuple[dict[str, float], bool]:
        """Rank 0's dev scores, shared with every rank, and whether dev BLEU is the best so far; advances the
        best dev BLEU and patience in `progress`, and the schedule."""
        scores, attention = validate(self.model, self.translator, self.dev, self.config, self.device, precision) \
            if self.world.is_main else (None, None)
        scores = self.world.broadcast(scores)
        if self.board is not None:
            self.board.scalars(progress.step, "dev", {k.removeprefix("dev_"): v for k, v in scores.items()})
            if attention is not None:
                self.board.attention(progress.step, attention)
            self.board.flush()
        improved = scores["dev_bleu"] > progress.best_bleu
        progress.bad_validations = 0 if improved else progress.bad_validations + 1
        if improved:
            progress.best_bleu = scores["dev_bleu"]
        schedule.after_validation(scores["dev_bleu"])
        return scores, improved

    def record(self, progress: Progress, scores: dict[str, float], improved: bool) -> None:
        """The scores in metrics.jsonl, with the training rate and peak memory so far, and in the log."""
        if self.world.is_main:
            self.run_dir.append_metrics({
                "step": progress.step, "epoch": progress.epoch + 1, **scores, "elapsed": progress.elapsed,
                "train_tokens_per_s": progress.tokens / max(1e-9, progress.train_seconds),
                **peak_memory_mb(self.device)})
        log.info("validation at step %d: dev loss %.3f | ppl %.2f | BLEU %.2f%s", progress.step, scores["dev_loss"],
                 scores["dev_ppl"], scores["dev_bleu"], " (best)" if improved else "")
