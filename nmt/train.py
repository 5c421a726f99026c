"""The training loop: token-budget batches, teacher forcing, label-smoothed cross-entropy, mixed precision,
gradient accumulation and clipping, validation with dev BLEU, early stopping, checkpoints and exact resume.

One optimizer step: forward each micro-batch under autocast, scale, backward; then unscale, clip, step,
update the scaler and the schedule (the order GradScaler needs: clipping sees true gradients).
Resuming restores weights, optimizer, scheduler, scaler, RNG states and the position in the epoch's
batch order, so N steps + stop + resume + N steps equal 2N uninterrupted steps on CPU.
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

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.contrib.logging import logging_redirect_tqdm

from nmt.attention_stats import attention_stats
from nmt.batching import Batch, collate, token_batches
from nmt.checkpoint import (
    Checkpoint,
    checkpoint_meta,
    latest_intact,
    load_train_state,
    load_weights,
    save_checkpoint,
)
from nmt.config import Config, TrainingConfig, config_diff, config_to_yaml, parse_config, read_yaml
from nmt.errors import ConfigError, TrainingError
from nmt.metrics import bleu, chrf
from nmt.models import Model, build_model, count_parameters
from nmt.prepare import EncodedSplit, PreparedData, prepare_data
from nmt.progress import progress_bar
from nmt.rundir import RunDir
from nmt.tokenizer import PAD_ID
from nmt.translate import Translator

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_bleu: float
    stop_reason: str


def pick_device(cfg: TrainingConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("training.device: cuda was asked for but no CUDA GPU is available")
        return torch.device("cuda")
    if cfg.precision == "fp16":
        raise ConfigError("training.precision: fp16 needs a CUDA GPU; use fp32 (or bf16) on the CPU")
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX); without them bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 where the device computes it natively, else fp32; other choices stay as they are."""
    if precision != "auto":
        return precision
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()
    return "bf16" if native else "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


def make_optimizer(model: nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    """Adam(W) with its fused kernel, on the CPU several times faster than the default one and on an H100 about
    3 ms a step faster for the Multi30k Transformer (BENCHMARKS.md); it works with fp16's GradScaler too."""
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


def split_batches(split: EncodedSplit, cfg: TrainingConfig, seed: int | None) -> list:
    return token_batches(split.src_lengths, split.tgt_lengths, cfg.batch_tokens, cfg.max_batch_sentences, seed)


def make_batch(split: EncodedSplit, indices) -> Batch:
    return collate([split.src_ids(i) for i in indices], [split.tgt_ids(i) for i in indices], indices)


@torch.no_grad()
def validate(model: Model, translator: Translator, dev: EncodedSplit, config: Config, device: torch.device
             ) -> dict[str, float]:
    """Dev loss and perplexity (teacher forced, no smoothing); greedy dev BLEU, chrF and mean attention entropy."""
    model.eval()
    total, tokens = 0.0, 0
    for indices in split_batches(dev, config.training, seed=None):
        batch = make_batch(dev, indices).to(device)
        with autocast(device, resolve_precision(config.training.precision, device)):
            logits, _ = model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in)
        assert batch.tgt_out is not None  # dev batches have targets
        total += float(token_loss(logits, batch.tgt_out, 0.0))
        tokens += batch.n_tgt_tokens
    src = [list(dev.src_ids(i)) for i in range(len(dev))]
    found = [h[0] for h in translator.search_ids(src, beam_size=1)]
    hyps = [translator.tokenizer.decode_tgt(h.tokens) for h in found]
    model.train()
    for i in range(min(2, len(hyps))):
        log.info("  example %d | src: %s\n            | ref: %s\n            | hyp: %s", i, dev.src_text[i],
                 dev.tgt_text[i], hyps[i])
    entropies = [attention_stats(h.attention).summary()["entropy"][0] for h in found if h.tokens]
    loss = total / max(1, tokens)
    return {"dev_loss": loss, "dev_ppl": math.exp(min(loss, 50.0)),
            "dev_bleu": bleu(hyps, dev.tgt_text, config.evaluation).score,
            "dev_chrf": chrf(hyps, dev.tgt_text, config.evaluation).score,
            "dev_attention_entropy": sum(entropies) / max(1, len(entropies))}


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


@dataclass
class StepResult:
    loss: float  # mean per target token
    tokens: int


class ThroughputMeter:
    """Loss and target tokens/s over the steps since the last report."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tokens, self.start = 0, time.monotonic()
        self.losses: list[float] = []

    def restart_clock(self) -> None:
        """Leave time spent outside training (validation) out of the rate."""
        self.start = time.monotonic()

    def add(self, result: StepResult) -> None:
        self.tokens += result.tokens
        self.losses.append(result.loss)

    def mean_loss(self) -> float:
        return sum(self.losses) / max(1, len(self.losses))

    def tokens_per_s(self) -> float:
        return self.tokens / max(1e-9, time.monotonic() - self.start)


def stop_reason(cfg: TrainingConfig, progress: Progress, seconds: float, stop: StopSignal) -> str | None:
    """Why the loop must stop before its next step, if it must: a budget spent, early stopping's patience
    run out, or a signal received. (The data running out after max_epochs ends the loop by itself.)"""
    if cfg.max_steps is not None and progress.step >= cfg.max_steps:
        return "max_steps"
    if cfg.max_minutes is not None and seconds >= cfg.max_minutes * 60:
        return "max_minutes"
    if cfg.patience is not None and progress.bad_validations >= cfg.patience:
        return "patience"
    return stop.received


# What a resumed run may not change: it would no longer continue the same model on the same data.
FIXED_ON_RESUME = ("model.", "tokenizer.", "data.", "seed")
WHERE_DATA_LIVES = ("data.mirror", "data.mirror_subdir", "data.download_dir", "data.cache_dir")


def resume_changes(run: RunDir, config: Config) -> list[tuple[str, object, object]]:
    """The settings `config` changes from the run's saved config; refuses changes to what was trained."""
    if not run.config_path.is_file():
        return []
    saved = parse_config(read_yaml(run.config_path), source=str(run.config_path))
    changes = config_diff(saved.model_dump(mode="json"), config.model_dump(mode="json"))
    refused = [c for c in changes if c[0].startswith(FIXED_ON_RESUME) and not c[0].startswith(WHERE_DATA_LIVES)]
    if refused:
        listed = "; ".join(f"{key} {old!r} -> {new!r}" for key, old, new in refused)
        raise ConfigError(f"--resume: the config differs from {run.config_path} in what was trained: {listed} "
                          f"(resume with: nmt train --config {run.config_path} --resume)")
    return changes


class Trainer:
    """One training run's model, optimizer and progress; `setup` builds it, `run` is the loop."""

    def __init__(self, config: Config, run: RunDir, data: PreparedData, model: Model, device: torch.device,
                 show_progress: bool = False):
        self.config, self.cfg, self.run_dir = config, config.training, run
        self.train_split, self.dev_split = data.splits["train"], data.splits["dev"]
        self.model, self.device, self.show_progress = model, device, show_progress
        self.translator = Translator(model, data.tokenizer, config.decoding, config.data.clean)
        self.optimizer = make_optimizer(model, self.cfg)
        self.scheduler = make_scheduler(self.optimizer, self.cfg)
        self.precision = resolve_precision(self.cfg.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.progress = Progress()
        self.nonfinite_in_a_row = 0
        self.last_saved_step: int | None = None
        self.resumed_from: Checkpoint | None = None
        self.changes_on_resume: list[tuple[str, object, object]] = []

    # Saving and restoring ---------------------------------------------------------------------------

    def restore(self, checkpoint: Checkpoint) -> None:
        load_weights(self.model, checkpoint, self.config.model, self.run_dir.config_path)
        saved = load_train_state(checkpoint)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng_cpu"])
        if self.device.type == "cuda" and saved.get("rng_cuda") is not None:
            torch.cuda.set_rng_state_all(saved["rng_cuda"])
        self.progress = Progress(**saved["progress"])
        self.resumed_from = checkpoint
        self.last_saved_step = checkpoint.step

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

    def _train_state(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "progress": asdict(self.progress),
        }

    def _save(self, scores: dict[str, float] | None) -> Path:
        """A checkpoint with the dev `scores` it was validated with (None: saved on a stop signal)."""
        meta = checkpoint_meta(self.progress.step, self.progress.epoch, self.model, self.config.model, scores)
        folder = save_checkpoint(self.run_dir, self.model, self._train_state(), meta, self.cfg.keep_last).folder
        self.last_saved_step = self.progress.step
        return folder

    # One step -------------------------------------------------------------------------------------------

    def batches(self) -> Iterator[Batch]:
        """The training batches from the saved position on, epoch after epoch, each epoch its own order."""
        progress = self.progress
        while self.cfg.max_epochs is None or progress.epoch < self.cfg.max_epochs:
            order = split_batches(self.train_split, self.cfg, seed=self.config.seed * 1_000_003 + progress.epoch)
            while progress.position < len(order):
                indices = order[progress.position]
                progress.position += 1
                yield make_batch(self.train_split, indices).to(self.device)
            progress.epoch += 1
            progress.position = 0

    def train_step(self, batches: list[Batch]) -> StepResult | None:
        """One optimizer step over `accumulate` micro-batches; None when it was skipped (non-finite, GPU OOM)."""
        tokens = sum(b.n_tgt_tokens for b in batches)
        loss_sum = 0.0
        try:
            for batch in batches:
                assert batch.tgt_in is not None and batch.tgt_out is not None  # training batches have targets
                with autocast(self.device, self.precision):
                    logits, _ = self.model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in,
                                           self.cfg.teacher_forcing)
                loss = token_loss(logits, batch.tgt_out, self.cfg.label_smoothing)
                self.scaler.scale(loss / tokens).backward()
                loss_sum += float(loss.detach())
        except torch.cuda.OutOfMemoryError:
            self.optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            self.progress.skipped_oom += 1
            log.warning("step %d: out of GPU memory on %d sentences; batch skipped (lower training.batch_tokens)",
                        self.progress.step + 1, sum(b.size for b in batches))
            return None
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm or float("inf"))
        if not (math.isfinite(loss_sum) and bool(torch.isfinite(norm))):
            self._skip_nonfinite()
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step()
        self.nonfinite_in_a_row = 0
        return StepResult(loss_sum / tokens, tokens)

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
        """Dev scores, and whether dev BLEU is the best so far (which also drives patience and plateau)."""
        scores = validate(self.model, self.translator, self.dev_split, self.config, self.device)
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
        self.run_dir.append_metrics({
            "step": progress.step, "epoch": progress.epoch + 1, **scores, "elapsed": progress.elapsed,
            "train_tokens_per_s": progress.tokens / max(1e-9, progress.train_seconds), **peak_memory_mb(self.device)})
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
                     "; ".join(f"{key} {old!r} -> {new!r}" for key, old, new in self.changes_on_resume))

    def _report(self, meter: ThroughputMeter, started: float, bar) -> None:
        progress = self.progress
        rate, mean_loss = meter.tokens_per_s(), meter.mean_loss()
        lr = self.optimizer.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{rate:,.0f}", lr=f"{lr:.1e}")
        if bar.disable:
            log.info("step %d | epoch %d | loss %.3f | %s tok/s | lr %.2e", progress.step, progress.epoch + 1,
                     mean_loss, f"{rate:,.0f}", lr)
        self.run_dir.append_metrics({"step": progress.step, "epoch": progress.epoch + 1, "loss": mean_loss,
                                     "tokens_per_s": rate, "lr": lr, "elapsed": time.monotonic() - started})
        meter.reset()

    def run(self, stop: StopSignal | None = None) -> TrainResult:
        stop = stop or StopSignal()
        cfg, progress = self.cfg, self.progress
        self._log_resume()
        log.info("model: %s, %s parameters, device %s, precision %s", self.config.model.summary,
                 f"{count_parameters(self.model):,}", self.device, self.precision)
        started = time.monotonic() - progress.elapsed
        meter = ThroughputMeter()
        reason = "max_epochs"
        batches = self.batches()
        self.model.train()
        with progress_bar(total=cfg.max_steps, initial=progress.step, desc="train", unit="step",
                          enabled=self.show_progress) as bar, logging_redirect_tqdm():
            while (why := stop_reason(cfg, progress, time.monotonic() - started, stop)) is None:
                micro = list(itertools.islice(batches, cfg.accumulate))
                if not micro:
                    break
                step_start = time.monotonic()
                result = self.train_step(micro)
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
        if progress.step != self.last_saved_step:  # else this step's checkpoint (and its scores) is on disk
            if stop.received:
                progress.elapsed = time.monotonic() - started
                self._save(None)
            else:
                self._validate_and_save(started)
        if stop.received:
            log.info("%s: saved %s; continue with: nmt train --config %s --resume", stop.received,
                     self.run_dir.checkpoint(progress.step).folder, self.run_dir.config_path)
        log.info("stopped (%s) after %d steps; best dev BLEU %.2f; skipped steps: %d non-finite, %d out of memory",
                 reason, progress.step, progress.best_bleu, progress.skipped_nonfinite, progress.skipped_oom)
        return TrainResult(self.run_dir.path, progress.step, progress.best_bleu, reason)


def setup(config: Config, resume: bool = False, show_progress: bool = False) -> Trainer:
    """Everything before the first step: device, threads, seed, data, the run-directory guard (nothing is
    written before the config is checked against the run's own), model, optimizer and, with resume, the
    restored state."""
    device = pick_device(config.training)
    if config.training.threads:
        torch.set_num_threads(config.training.threads)
    torch.manual_seed(config.seed)
    run = RunDir(config.run_path)
    existing = latest_intact(run) if run.path.exists() else None
    if existing is not None and not resume:
        raise ConfigError(f"run_dir {run.path} already holds checkpoints: add --resume to continue it, "
                          "or set another run_dir")
    changes = resume_changes(run, config) if resume else []
    if resume and existing is None:
        log.warning("--resume: %s has no intact checkpoint yet; starting from scratch", run.path)
    data = prepare_data(config)
    model = build_model(config.model, data.tokenizer.src_vocab_size, data.tokenizer.tgt_vocab_size).to(device)
    trainer = Trainer(config, run, data, model, device, show_progress)
    if existing is not None:
        trainer.restore(existing)
        trainer.apply_optimizer_settings()
        trainer.changes_on_resume = changes
    run.write_config(config_to_yaml(config))
    run.write_tokenizer(data.tokenizer)
    step = existing.step if existing is not None else 0
    if dropped := run.truncate_metrics(step):
        log.info("%s: dropped %d records after step %d (those steps are trained again)", run.metrics_path, dropped,
                 step)
    return trainer


@contextmanager
def _log_to(path: Path) -> Iterator[None]:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("nmt")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def train(config: Config, resume: bool = False, show_progress: bool = True) -> TrainResult:
    trainer = setup(config, resume, show_progress)
    with _log_to(trainer.run_dir.log_path), StopSignal().installed() as stop:
        return trainer.run(stop)
