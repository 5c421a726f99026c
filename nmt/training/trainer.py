"""The training loop: token-budget batches, teacher forcing, label-smoothed cross-entropy, mixed precision,
gradient accumulation and clipping, validation with dev BLEU, early stopping, checkpoints and exact resume.

One optimizer step: forward each micro-batch under autocast, scale, backward; then unscale, clip, step,
update the scaler and the schedule (the order GradScaler needs: clipping sees true gradients).
Resuming restores weights, optimizer, scheduler, scaler, RNG states and the position in the epoch's
batch order, so N steps + stop + resume + N steps equal 2N uninterrupted steps on CPU.

Under torchrun (nmt.training.distributed) every rank builds the same batch order and a step takes `accumulate`
batches per rank from it, so N ranks together take what one process with `accumulate: N` takes, and the
loss is divided by the step's target tokens over all ranks: the update is the same. Rank 0 alone validates,
writes checkpoints and logs; the decision to stop is shared by one collective at the top of every step.
"""

from __future__ import annotations

import itertools
import logging
import math
import resource
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.contrib.logging import logging_redirect_tqdm

from nmt.config import Config, TrainingConfig, config_diff, config_to_yaml, format_diff, parse_config, read_yaml
from nmt.data.batching import Batch, collate, token_batches
from nmt.data.prepare import EncodedSplit, PreparedData, prepare_data, wait_for_cache
from nmt.data.splits import EvalSet
from nmt.errors import ConfigError, TrainingError
from nmt.inference.attention_stats import attention_stats
from nmt.inference.scoring import decode_and_score
from nmt.inference.translate import Translator
from nmt.models import Model, build_model, count_parameters
from nmt.models.dropout import use_fast_dropout
from nmt.progress import progress_bar
from nmt.runs.checkpoint import Checkpoint, checkpoint_meta, latest_intact, load_train_state, save_checkpoint
from nmt.runs.loading import load_run_config, load_tokenizer, load_weights
from nmt.runs.lock import RunLock, lock_run
from nmt.runs.rundir import RunDir
from nmt.tokens import PAD_ID
from nmt.training.distributed import World, rank_seed
from nmt.training.guided import AlignmentGuide
from nmt.training.init_from import fine_tuning_tokenizer, load_initial_weights, resolve_init, resumed_init
from nmt.training.precision import choose_cpu_precision, measurement_key
from nmt.training.tensorboard import TensorBoardLog

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_bleu: float
    stop_reason: str
    rank: int = 0
    ranks: int = 1  # processes in the job: more than 1 under torchrun
    minutes: float = 0.0  # wall-clock training time over all sessions of the run
    tokens_per_s: float = 0.0  # target tokens per second inside optimizer steps, over all sessions

    def summary(self) -> str:
        """One line that says what the run reached and how fast: what to compare across machines."""
        return (f"{self.run_dir}: {self.steps} steps ({self.stop_reason}) in {self.minutes:.1f} min, "
                f"{self.tokens_per_s:,.0f} target tokens/s, best dev BLEU {self.best_bleu:.2f}")


class WithAttention(nn.Module):
    """The model's training forward that also returns a layer's cross-attention (guided alignment): a module of
    its own, so that DDP, which hooks `forward` only, wraps it like the plain model."""

    def __init__(self, model: Model, layer: int):
        super().__init__()
        self.model, self.layer = model, layer

    def forward(self, src: torch.Tensor, lengths: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor,
                teacher_forcing: float) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_with_attention(src, lengths, src_mask, tgt_in, self.layer, teacher_forcing)


def pick_device(cfg: TrainingConfig, world: World) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("training.device: cuda was asked for but no CUDA GPU is available")
        return world.device(cuda=True)
    if cfg.precision == "fp16":
        raise ConfigError("training.precision: fp16 needs a CUDA GPU; use fp32 (or bf16) on the CPU")
    return world.device(cuda=False)


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


def make_optimizer(model: Model, cfg: TrainingConfig) -> torch.optim.Optimizer:
    """Adam(W) with its fused kernel, which updates all parameters in one pass (BENCHMARKS.md measures the gain
    on the CPU and on a GPU); it works with fp16's GradScaler too."""
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainingConfig):
    """A per-step LambdaLR (constant / warmup + decay) or a ReduceLROnPlateau stepped on dev BLEU."""
    schedule = cfg.schedule
    if schedule.type == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=schedule.plateau_factor,
                                                          patience=schedule.plateau_patience, min_lr=schedule.min_lr)
    warmup = max(1, schedule.warmup_steps)

    def factor(step: int) -> float:
        step += 1
        if schedule.type == "warmup_inverse_sqrt":
            return min(step / warmup, math.sqrt(warmup / step))
        if schedule.type == "warmup_linear":
            last = cfg.max_steps or step  # the config requires max_steps for this schedule
            return min(step / warmup, max(0.0, (last - step) / max(1, last - warmup)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def token_loss(logits: torch.Tensor, tgt_out: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Summed cross-entropy over real target tokens (padding ignored); logits (B, T, V), tgt_out (B, T)."""
    return F.cross_entropy(logits.float().flatten(0, 1), tgt_out.flatten(), ignore_index=PAD_ID,
                           label_smoothing=label_smoothing, reduction="sum")


def split_batches(split: EncodedSplit, config: Config, seed: int | None) -> list:
    """The split's batches, without the pairs the model cannot encode (`fits_the_model`)."""
    cfg = config.training
    batches = token_batches(split.src_lengths, split.tgt_lengths, cfg.batch_tokens, cfg.max_batch_sentences, seed)
    fits = fits_the_model(split, config)
    return batches if fits is None else [kept for batch in batches if len(kept := batch[fits[batch]])]


def fits_the_model(split: EncodedSplit, config: Config) -> np.ndarray | None:
    """Which pairs a Transformer can encode (no side longer than model.transformer.max_positions; the decoder
    reads BOS + target); None: every pair (an RNN)."""
    limit = config.model.max_positions
    if limit is None:
        return None
    return (split.src_lengths <= limit) & (split.tgt_lengths + 1 <= limit)


def make_batch(split: EncodedSplit, indices) -> Batch:
    return collate([split.src_ids(i) for i in indices], [split.tgt_ids(i) for i in indices], indices)


@torch.no_grad()
def validate(model: Model, translator: Translator, dev: EncodedSplit, config: Config, device: torch.device,
             precision: str) -> tuple[dict[str, float], torch.Tensor | None]:
    """Dev loss and perplexity (teacher forced, no smoothing); greedy dev BLEU, chrF and mean attention entropy;
    and the first dev sentence's cross-attention (T, S) (None for an empty translation), for TensorBoard."""
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
    return {"dev_loss": loss, "dev_ppl": math.exp(min(loss, 50.0)), "dev_bleu": decoded.bleu.score,
            "dev_chrf": decoded.chrf.score, "dev_attention_entropy": sum(entropies) / max(1, len(entropies))}, first


class StopSignal:
    """Turns SIGINT / SIGTERM into a flag the loop checks after each step, so it can save and exit cleanly."""

    def __init__(self) -> None:
        self.received: str | None = None

    @contextmanager
    def installed(self) -> Iterator[StopSignal]:
        def handler(signum, _frame):
            self.received = signal.Signals(signum).name

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process, and on a GPU the peak of tensors allocated there."""
    peaks = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        peaks["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peaks


@dataclass
class Progress:
    """Everything the loop advances, saved in each checkpoint and restored as one object on resume."""

    step: int = 0
    epoch: int = 0  # zero-based
    position: int = 0  # batches of this epoch's order already taken
    best_bleu: float = -1.0
    bad_validations: int = 0  # validations since the best dev BLEU
    elapsed: float = 0.0  # wall-clock seconds of training, over all sessions
    train_seconds: float = 0.0  # of which inside optimizer steps
    tokens: int = 0  # target tokens trained on
    skipped_nonfinite: int = 0
    skipped_oom: int = 0
    precision: str = ""  # what the run trains in (precision auto's choice is kept on resume)


@dataclass
class StepShare:
    """This rank's part of one optimizer step."""

    batches: list[Batch]  # its micro-batches, on the device
    tokens: int  # target tokens of the whole step, over every rank: the loss is divided by this
    weight: float = 1.0  # 0 for a rank whose share ran out at the end of the data: it runs a batch, adds nothing


@dataclass
class StepResult:
    loss: float  # mean per target token (the translation's; guided alignment's term apart)
    tokens: int
    grad_norm: float  # of the unscaled gradients, before clipping
    alignment_loss: float | None = None  # with guided alignment: its cross-entropy per target token, unweighted


class ThroughputMeter:
    """Loss and target tokens/s over the steps since the last report."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tokens, self.start = 0, time.monotonic()
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.alignment_losses: list[float] = []

    def restart_clock(self) -> None:
        """Leave time spent outside training (validation) out of the rate."""
        self.start = time.monotonic()

    def add(self, result: StepResult) -> None:
        self.tokens += result.tokens
        self.losses.append(result.loss)
        self.grad_norms.append(result.grad_norm)
        if result.alignment_loss is not None:
            self.alignment_losses.append(result.alignment_loss)

    def mean_loss(self) -> float:
        return sum(self.losses) / max(1, len(self.losses))

    def mean_grad_norm(self) -> float:
        return sum(self.grad_norms) / max(1, len(self.grad_norms))

    def mean_alignment_loss(self) -> float | None:
        return sum(self.alignment_losses) / len(self.alignment_losses) if self.alignment_losses else None

    def tokens_per_s(self) -> float:
        return self.tokens / max(1e-9, time.monotonic() - self.start)


def stop_reasons(cfg: TrainingConfig, progress: Progress, seconds: float | None, stop: StopSignal) -> set[str]:
    """Why the loop must stop before its next step, if it must: a budget spent, early stopping's patience
    run out, or a signal received. `seconds` is None on ranks other than 0, whose clock decides alone.
    (The data running out after max_epochs ends the loop by itself.)"""
    reasons = set()
    if cfg.max_steps is not None and progress.step >= cfg.max_steps:
        reasons.add("max_steps")
    if cfg.max_minutes is not None and seconds is not None and seconds >= cfg.max_minutes * 60:
        reasons.add("max_minutes")
    if cfg.patience is not None and progress.bad_validations >= cfg.patience:
        reasons.add("patience")
    if stop.received:
        reasons.add(stop.received)
    return reasons


# What a resumed run may not change: it would no longer continue the same model on the same data.
FIXED_ON_RESUME = ("model.", "tokenizer.", "data.", "seed")
WHERE_DATA_LIVES = ("data.mirror", "data.mirror_subdir", "data.download_dir", "data.cache_dir")


def keep_tuned_decoding(saved: Config, config: Config) -> Config:
    """The decoding `nmt tune` chose for a run survives a resume from the config the run was started with;
    a config that changes the decoding itself wins."""
    tuned = saved.decoding.tuned
    if tuned is None or config.decoding.tuned is not None:
        return config
    as_before_tuning = (config.decoding.beam_size, config.decoding.length_penalty) == (
        tuned.before.get("beam_size"), tuned.before.get("length_penalty"))
    otherwise_same = config.decoding.model_copy(update={
        "beam_size": saved.decoding.beam_size, "length_penalty": saved.decoding.length_penalty,
        "n_best": saved.decoding.n_best, "tuned": tuned}) == saved.decoding
    return config.model_copy(update={"decoding": saved.decoding}) if as_before_tuning and otherwise_same else config


def resume_changes(run: RunDir, config: Config) -> tuple[Config, list[tuple[str, object, object]]]:
    """The config to resume with (a tuned decoding kept) and the settings it changes from the run's saved
    config; refuses changes to what was trained."""
    if not run.config_path.is_file():
        return config, []
    saved = parse_config(read_yaml(run.config_path), source=str(run.config_path))
    config = keep_tuned_decoding(saved, config)
    changes = config_diff(saved.model_dump(mode="json"), config.model_dump(mode="json"))
    refused = [c for c in changes if c[0].startswith(FIXED_ON_RESUME) and not c[0].startswith(WHERE_DATA_LIVES)]
    if refused:
        listed = format_diff(refused)
        raise ConfigError(f"--resume: the config differs from {run.config_path} in what was trained: {listed} "
                          f"(resume with: nmt train --config {run.config_path} --resume)")
    return config, changes


class Trainer:
    """One training run's model, optimizer and progress; `setup` builds it, `run` is the loop."""

    def __init__(self, config: Config, run: RunDir, data: PreparedData, model: Model, device: torch.device,
                 show_progress: bool = False, world: World | None = None, lock: RunLock | None = None):
        self.config, self.cfg, self.run_dir = config, config.training, run
        self.lock = lock  # the run directory's lock (rank 0), released when training ends
        self.train_split, self.dev_split = data.splits["train"], data.splits["dev"]
        for name in ("train", "dev"):
            fits = fits_the_model(data.splits[name], config)
            if fits is None or fits.all():
                continue
            if not fits.any():
                raise ConfigError(f"model.transformer.max_positions {config.model.max_positions}: every {name} pair "
                                  "has a side longer than that; raise it")
            use = "training" if name == "train" else "the dev loss (dev BLEU translates them truncated)"
            log.warning("data.%s: %d of %d pairs have a side longer than model.transformer.max_positions (%d): left "
                        "out of %s", name, int((~fits).sum()), len(fits), config.model.max_positions, use)
        self.model, self.device, self.show_progress = model, device, show_progress
        self.world = world or World.single()
        # What the training forward runs through: DDP all-reduces the gradients during backward. Without
        # device_ids it leaves the inputs where they are (src_lengths stays on the CPU); the only buffers
        # (position tables) are constants, so they are not broadcast at every forward.
        self.guide = AlignmentGuide(config, self.train_split, data.tokenizer) \
            if config.training.guided_alignment is not None else None
        self.forward: nn.Module = cast(nn.Module, model) if self.guide is None else WithAttention(model,
                                                                                                  self.guide.layer)
        self.trained: nn.Module = DistributedDataParallel(self.forward, broadcast_buffers=False) \
            if self.world.distributed else self.forward
        self.translator = Translator(model, data.tokenizer, config.decoding, config.data.clean)
        self.optimizer = make_optimizer(model, self.cfg)
        self.scheduler = make_scheduler(self.optimizer, self.cfg)
        self.precision = self._choose_precision()
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.progress = Progress(precision=self.precision)
        self.nonfinite_in_a_row = 0
        self.last_saved_step: int | None = None
        self.resumed_from: Checkpoint | None = None
        self.changes_on_resume: list[tuple[str, object, object]] = []
        self.board: TensorBoardLog | None = None  # rank 0 with training.tensorboard

    # Saving and restoring ---------------------------------------------------------------------------

    def restore(self, checkpoint: Checkpoint) -> None:
        load_weights(self.model, checkpoint, self.config.model, self.run_dir.config_path)
        saved = load_train_state(checkpoint)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        self._restore_rng(saved, checkpoint.step)
        self.progress = Progress(**saved["progress"])
        if self.cfg.precision == "auto" and self.progress.precision not in ("", self.precision):
            log.info("precision auto: the run trains in %s as before (measured %s now)", self.progress.precision,
                     self.precision)
            self.precision = self.progress.precision
        self.progress.precision = self.precision
        self.resumed_from = checkpoint
        self.last_saved_step = checkpoint.step

    def _rng_state(self) -> dict[str, torch.Tensor | None]:
        cuda = self.device.type == "cuda"
        return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(self.device) if cuda else None}

    def _restore_rng(self, saved: dict, step: int) -> None:
        """Every rank's own RNG state when the world size is the one saved (exact resume); otherwise rank 0
        takes the first rank's and the others a fresh seed (dropout then differs from an uninterrupted run)."""
        ranks = saved["rng_ranks"]
        world = self.world
        if len(ranks) == world.size or world.is_main:
            state = ranks[world.rank]
            torch.set_rng_state(state["cpu"])
            if self.device.type == "cuda" and state["cuda"] is not None:
                torch.cuda.set_rng_state(state["cuda"], self.device)
        else:
            torch.manual_seed(rank_seed(self.config.seed, world.rank, step))
        if len(ranks) != world.size and world.is_main:
            log.warning("resuming %d ranks from a checkpoint of %d: the data order continues exactly, the "
                        "dropout masks of ranks past the first do not", world.size, len(ranks))

    def apply_optimizer_settings(self) -> None:
        """Make the config's learning rate, betas, weight decay and plateau settings win over the restored
        optimizer and scheduler state (resuming with a changed lr must train with that lr)."""
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group.update(initial_lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.factor, self.scheduler.patience = cfg.schedule.plateau_factor, cfg.schedule.plateau_patience
            self.scheduler.min_lrs = [cfg.schedule.min_lr] * len(self.optimizer.param_groups)
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.lr
        else:
            self.scheduler.base_lrs = [cfg.lr] * len(self.optimizer.param_groups)
            for group, factor in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas, strict=True):
                group["lr"] = cfg.lr * factor(self.scheduler.last_epoch)

    def _train_state(self, rng_ranks: list[dict]) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_ranks": rng_ranks,
            "progress": asdict(self.progress),
        }

    def _save(self, scores: dict[str, float] | None) -> None:
        """A checkpoint with the dev `scores` it was validated with (None: saved on a stop signal). Every rank
        calls it: rank 0 gathers their RNG states and writes; the others wait until the checkpoint is on disk."""
        rng_ranks = self.world.gather(self._rng_state())
        if rng_ranks is not None:
            meta = checkpoint_meta(self.progress.step, self.progress.epoch, self.model, self.config.model, scores)
            save_checkpoint(self.run_dir, self.model, self._train_state(rng_ranks), meta, self.cfg.keep_last)
        self.world.barrier()
        self.last_saved_step = self.progress.step

    # One step -------------------------------------------------------------------------------------------

    def batch_order(self) -> Iterator[np.ndarray]:
        """The sentence indices of every training batch from the saved position on, epoch after epoch, each
        epoch its own order from (seed, epoch): the same on every rank."""
        progress = self.progress
        while self.cfg.max_epochs is None or progress.epoch < self.cfg.max_epochs:
            order = split_batches(self.train_split, self.config, seed=self.config.seed * 1_000_003 + progress.epoch)
            while progress.position < len(order):
                indices = order[progress.position]
                progress.position += 1
                yield indices
            progress.epoch += 1
            progress.position = 0

    def next_share(self, order: Iterator[np.ndarray]) -> StepShare | None:
        """Take one step's batches from `order` (`accumulate` per rank) and return this rank's share; None
        when the data has run out. A rank left without a batch at the very end repeats one with weight 0."""
        per_rank = self.cfg.accumulate
        step = list(itertools.islice(order, per_rank * self.world.size))
        if not step:
            return None
        tokens = int(sum(int(self.train_split.tgt_lengths[i].sum()) + len(i) for i in step))  # + EOS per sentence
        mine = step[self.world.rank * per_rank:(self.world.rank + 1) * per_rank]
        # DDP needs every rank's backward: a rank without a batch repeats one and adds it with weight 0. (With
        # fp16, an overflow in that copy makes the step's gradients NaN and the step is skipped, like any other.)
        weight = 1.0 if mine else 0.0
        batches = [make_batch(self.train_split, indices).to(self.device) for indices in mine or step[:1]]
        return StepShare(batches, tokens, weight)

    def batch_loss(self, module: nn.Module, batch: Batch, precision: str
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch's summed token loss through `module` (the model, or DDP around it), and guided alignment's
        cross-entropy (None without it); training minimizes the first plus the weighted second (`objective`)."""
        assert batch.tgt_in is not None and batch.tgt_out is not None  # training batches have targets
        guide = self.guide
        with autocast(self.device, precision):
            found = module(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in, self.cfg.teacher_forcing)
        logits, attention = found if guide is not None else (found, None)
        loss = token_loss(logits, batch.tgt_out, self.cfg.label_smoothing)
        return loss, None if guide is None or attention is None else guide.loss(attention, batch)

    def objective(self, loss: torch.Tensor, alignment: torch.Tensor | None) -> torch.Tensor:
        return loss if alignment is None or self.guide is None else loss + self.guide.weight * alignment

    def _choose_precision(self) -> str:
        """The config's precision; for `auto`, bf16 on a GPU that supports it, and on a CPU whichever of fp32 and
        bf16 trains this model faster here (nmt.training.precision), measured by rank 0 for every rank."""
        asked = self.cfg.precision
        if asked != "auto":
            return asked
        if self.device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        chosen = None
        if self.world.is_main:
            batches = split_batches(self.train_split, self.config, self.config.seed)
            largest = max(batches, key=lambda indices: int(self.train_split.src_lengths[indices].sum()
                                                           + self.train_split.tgt_lengths[indices].sum()))
            probe = make_batch(self.train_split, largest)  # not a small leftover batch: a full step's work

            def step(precision: str) -> None:
                self.objective(*self.batch_loss(self.forward, probe, precision)).backward()
                self.model.zero_grad(set_to_none=True)

            key = measurement_key(self.config.model.summary, {
                "model": self.config.model.model_dump(mode="json"), "batch_tokens": self.cfg.batch_tokens,
                "parameters": count_parameters(self.model), "fast_dropout": self.cfg.fast_dropout,
                "guided_layer": self.guide.layer if self.guide else None})
            found = choose_cpu_precision(step, key, Path(self.config.data.cache_dir))
            log.info(found.describe())
            chosen = found.precision
        return self.world.broadcast(chosen)

    def _gradient_sync(self, last: bool):
        """DDP all-reduces gradients on the step's last micro-batch only; `no_sync()` on the others."""
        if last or not isinstance(self.trained, DistributedDataParallel):
            return nullcontext()
        return self.trained.no_sync()

    def train_step(self, share: StepShare) -> StepResult | None:
        """One optimizer step over this rank's micro-batches; None when it was skipped (non-finite, or out of
        GPU memory in a single process; under DDP that is an error, as the other ranks cannot skip with it).
        Under DDP gradients are all-reduced (averaged) with the last micro-batch's backward only."""
        scale = share.weight * self.world.size / share.tokens  # DDP averages over ranks; this makes it a sum
        loss_sum = alignment_sum = 0.0
        try:
            for position, batch in enumerate(share.batches):
                with self._gradient_sync(last=position == len(share.batches) - 1):
                    loss, alignment = self.batch_loss(self.trained, batch, self.precision)
                    self.scaler.scale(self.objective(loss, alignment) * scale).backward()
                if alignment is not None:
                    alignment_sum += float(alignment.detach()) * share.weight
                loss_sum += float(loss.detach()) * share.weight
        except torch.cuda.OutOfMemoryError:
            if self.world.distributed:  # skipping here alone would leave the other ranks waiting in all-reduce
                raise TrainingError(f"rank {self.world.rank}: out of GPU memory on {len(share.batches)} batches; "
                                    "lower training.batch_tokens") from None
            self.optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            self.progress.skipped_oom += 1
            log.warning("step %d: out of GPU memory on %d sentences; batch skipped (lower training.batch_tokens)",
                        self.progress.step + 1, sum(b.size for b in share.batches))
            return None
        loss_sum, alignment_sum = self.world.sum([loss_sum, alignment_sum], self.device)
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm or float("inf"))
        if not (math.isfinite(loss_sum + alignment_sum) and bool(torch.isfinite(norm))):
            self._skip_nonfinite()
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step()
        self.nonfinite_in_a_row = 0
        return StepResult(loss_sum / share.tokens, share.tokens, float(norm),
                          alignment_sum / share.tokens if self.guide is not None else None)

    def _skip_nonfinite(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.update()  # with fp16, lowers the scale
        self.nonfinite_in_a_row += 1
        self.progress.skipped_nonfinite += 1
        log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row)", self.progress.step + 1,
                    self.nonfinite_in_a_row)
        if self.nonfinite_in_a_row >= self.cfg.max_nonfinite:
            raise TrainingError(f"{self.nonfinite_in_a_row} consecutive non-finite steps: lower training.lr, enable "
                                "clipping or use fp32; the last good checkpoint is kept")

    # Validation -----------------------------------------------------------------------------------------

    def _validate(self) -> tuple[dict[str, float], bool]:
        """Dev scores, and whether dev BLEU is the best so far (which also drives patience and plateau).
        Rank 0 validates; the others take its scores, so patience and the plateau schedule agree."""
        scores, attention = validate(self.model, self.translator, self.dev_split, self.config, self.device,
                                     self.precision) \
            if self.world.is_main else (None, None)
        scores = self.world.broadcast(scores)
        if self.board is not None:
            self.board.scalars(self.progress.step, "dev", {k.removeprefix("dev_"): v for k, v in scores.items()})
            if attention is not None:
                self.board.attention(self.progress.step, attention)
            self.board.flush()
        progress = self.progress
        improved = scores["dev_bleu"] > progress.best_bleu
        progress.bad_validations = 0 if improved else progress.bad_validations + 1
        if improved:
            progress.best_bleu = scores["dev_bleu"]
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(scores["dev_bleu"])
        return scores, improved

    def _validate_and_save(self, started: float) -> None:
        scores, improved = self._validate()
        progress = self.progress
        progress.elapsed = time.monotonic() - started
        if self.world.is_main:
            self.run_dir.append_metrics({
                "step": progress.step, "epoch": progress.epoch + 1, **scores, "elapsed": progress.elapsed,
                "train_tokens_per_s": progress.tokens / max(1e-9, progress.train_seconds),
                **peak_memory_mb(self.device)})
        log.info("validation at step %d: dev loss %.3f | ppl %.2f | BLEU %.2f%s", progress.step, scores["dev_loss"],
                 scores["dev_ppl"], scores["dev_bleu"], " (best)" if improved else "")
        self._save(scores)

    # The loop ---------------------------------------------------------------------------------------------

    def _log_resume(self) -> None:
        if self.resumed_from is None:
            return
        log.info("resumed from %s (step %d, epoch %d)", self.resumed_from.path, self.progress.step,
                 self.progress.epoch + 1)
        if self.changes_on_resume:
            log.info("changed since the run's last session: %s",
                     format_diff(self.changes_on_resume))

    def _report(self, meter: ThroughputMeter, started: float, bar) -> None:
        progress = self.progress
        rate, mean_loss, grad_norm = meter.tokens_per_s(), meter.mean_loss(), meter.mean_grad_norm()
        alignment = meter.mean_alignment_loss()
        guided = {} if alignment is None else {"alignment_loss": alignment}
        lr = self.optimizer.param_groups[0]["lr"]
        meter.reset()
        if not self.world.is_main:
            return
        if self.board is not None:
            self.board.scalars(progress.step, "train", {"loss": mean_loss, "lr": lr, "tokens_per_s": rate,
                                                        "grad_norm": grad_norm, **guided})
        bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{rate:,.0f}", lr=f"{lr:.1e}")
        if bar.disable:
            log.info("step %d | epoch %d | loss %.3f%s | %s tok/s | lr %.2e", progress.step, progress.epoch + 1,
                     mean_loss, "" if alignment is None else f" | alignment {alignment:.3f}", f"{rate:,.0f}", lr)
        self.run_dir.append_metrics({"step": progress.step, "epoch": progress.epoch + 1, "loss": mean_loss, **guided,
                                     "tokens_per_s": rate, "lr": lr, "elapsed": time.monotonic() - started})

    def run(self, stop: StopSignal | None = None) -> TrainResult:
        stop = stop or StopSignal()
        cfg, progress = self.cfg, self.progress
        self._log_resume()
        world = self.world
        log.info("model: %s, %s parameters, device %s, precision %s%s", self.config.model.summary,
                 f"{count_parameters(self.model):,}", self.device, self.precision,
                 f", {world.size} ranks" if world.distributed else "")
        started = time.monotonic() - progress.elapsed
        meter = ThroughputMeter()
        reason = "max_epochs"
        order = self.batch_order()
        self.model.train()
        with progress_bar(total=cfg.max_steps, initial=progress.step, desc="train", unit="step",
                          enabled=self.show_progress and world.is_main) as bar, logging_redirect_tqdm():
            while True:
                seconds = time.monotonic() - started if world.is_main else None
                why = world.agree_stop(stop_reasons(cfg, progress, seconds, stop), self.device)
                if why is not None:
                    break
                share = self.next_share(order)
                if share is None:
                    break
                step_start = time.monotonic()
                result = self.train_step(share)
                progress.train_seconds += time.monotonic() - step_start
                if result is None:
                    continue
                progress.step += 1
                progress.tokens += result.tokens
                meter.add(result)
                bar.update(1)
                if progress.step % cfg.log_every == 0:
                    self._report(meter, started, bar)
                if progress.step % cfg.validate_every == 0:
                    self._validate_and_save(started)
                    meter.restart_clock()
            reason = why or reason
        signalled = reason in ("SIGINT", "SIGTERM")  # received by this rank or another
        if progress.step != self.last_saved_step:  # else this step's checkpoint (and its scores) is on disk
            if signalled:
                progress.elapsed = time.monotonic() - started
                self._save(None)
            else:
                self._validate_and_save(started)
        if signalled:
            log.info("%s: saved %s; continue with: nmt train --config %s --resume", reason,
                     self.run_dir.checkpoint(progress.step).folder, self.run_dir.config_path)
        log.info("stopped (%s) after %d steps; best dev BLEU %.2f; skipped steps: %d non-finite, %d out of memory",
                 reason, progress.step, progress.best_bleu, progress.skipped_nonfinite, progress.skipped_oom)
        return TrainResult(self.run_dir.path, progress.step, progress.best_bleu, reason, world.rank, world.size,
                           progress.elapsed / 60, progress.tokens / max(1e-9, progress.train_seconds))


def setup(config: Config, resume: bool = False, show_progress: bool = False, world: World | None = None
          ) -> Trainer:
    """Everything before the first step: device, threads, the run-directory guard (nothing is written before
    the config is checked against the run's own), data, process group, seed, model, optimizer and, with
    resume, the restored state.

    Under torchrun rank 0 prepares the data while the others wait for its cache to appear (before the
    process group exists, so a long preparation meets no collective timeout), every rank checks that it
    resumes the checkpoint rank 0 resumes (on several machines the run directory and the data cache must be
    on a filesystem they share), and rank 0 alone writes to the run directory."""
    world = world or World.single()
    device = pick_device(config.training, world)
    if config.training.threads:
        torch.set_num_threads(config.training.threads)
    run = RunDir(config.run_path)
    lock = lock_run(run) if world.is_main else None  # before anything is read or written: one writer per run
    try:
        return _setup(config, run, resume, show_progress, world, device, lock)
    except BaseException:
        if lock is not None:
            lock.abandon()  # refused: a run directory this created, still empty, goes
        raise


def _setup(config: Config, run: RunDir, resume: bool, show_progress: bool, world: World, device: torch.device,
           lock: RunLock | None) -> Trainer:
    existing = latest_intact(run) if run.path.exists() else None
    if existing is not None and not resume:
        raise ConfigError(f"run_dir {run.path} already holds checkpoints: add --resume to continue it, "
                          "or set another run_dir")
    fine_tuned = config.training.init_from is not None
    init = resolve_init(config) if fine_tuned and existing is None else None
    if init is not None:
        config = init.config
    elif fine_tuned:  # resumed: the run's own config says what it started from (that run may be gone)
        config = resumed_init(config, load_run_config(run))
    config, changes = resume_changes(run, config) if resume else (config, [])
    if resume and existing is None:
        log.warning("--resume: %s has no intact checkpoint yet; starting from scratch", run.path)
    given = None  # else a tokenizer is trained on the corpus
    if fine_tuned:  # the other run's tokenizer (or extended), the run's own once it has one
        given = fine_tuning_tokenizer(init) if init is not None else load_tokenizer(run)
    if not world.is_main:
        wait_for_cache(config, given)
    data = prepare_data(config, given)
    world.init(device, config.training.distributed_timeout_minutes)
    resumed = existing.step if existing is not None else None
    if (agreed := world.broadcast(resumed)) != resumed:
        raise ConfigError(f"rank {world.rank} finds {'no checkpoint' if resumed is None else f'step {resumed}'} in "
                          f"{run.path} but rank 0 resumes {'none' if agreed is None else f'step {agreed}'}: the "
                          "run directory and data.cache_dir must be on a filesystem every machine shares")
    torch.manual_seed(rank_seed(config.seed, world.rank))
    model = build_model(config.model, data.tokenizer.src_vocab_size, data.tokenizer.tgt_vocab_size).to(device)
    use_fast_dropout(model, config.training.fast_dropout)
    if init is not None and existing is None:
        load_initial_weights(model, init)
        log.info("weights from %s (%s)", init.checkpoint.path, "vocabulary extended" if init.extend else
                 "same vocabulary")
    trainer = Trainer(config, run, data, model, device, show_progress, world, lock)
    if existing is not None:
        trainer.restore(existing)
        trainer.apply_optimizer_settings()
        trainer.changes_on_resume = changes
    if not world.is_main:
        return trainer
    run.write_config(config_to_yaml(config))
    run.write_tokenizer(data.tokenizer)
    step = existing.step if existing is not None else 0
    if config.training.tensorboard:  # the steps after the one resumed are trained, and logged, again
        trainer.board = TensorBoardLog(run.tensorboard_dir, purge_step=step + 1)
    if dropped := run.truncate_metrics(step):
        log.info("%s: dropped %d records after step %d (those steps are trained again)", run.metrics_path, dropped,
                 step)
    return trainer


@contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """train.log gets every INFO record (the validations) whoever called: the CLI, or Python, where logging is
    often left at its WARNING default."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("nmt")
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def train(config: Config, resume: bool = False, show_progress: bool = True) -> TrainResult:
    """Train in this process, or as one rank of a torchrun job (World.from_environment says which)."""
    world = World.from_environment()
    if not world.is_main:  # the other ranks report warnings and errors only, and write no log file
        logging.getLogger("nmt").setLevel(logging.WARNING)
    trainer = setup(config, resume, show_progress, world)
    try:
        with _log_to(trainer.run_dir.log_path) if world.is_main else nullcontext(), StopSignal().installed() as stop:
            result = trainer.run(stop)
    finally:
        if trainer.board is not None:
            trainer.board.close()
        if trainer.lock is not None:
            trainer.lock.release()
    # Leave the process group on success only (after an error another rank may be inside a collective, and
    # torchrun ends the job): all ranks meet, DDP's reducer goes, then the group, before the interpreter's
    # own teardown, where gloo's threads would otherwise abort the process.
    world.barrier()
    del trainer
    world.close()
    return result
