"""The training loop: token-budget batches, teacher forcing, label-smoothed cross-entropy, mixed precision,
gradient accumulation and clipping, validation with dev BLEU, early stopping, checkpoints and exact resume.

One optimizer step: forward each micro-batch under autocast, scale, backward; then unscale, clip, step,
update the scaler and the schedule (the order GradScaler needs: clipping sees true gradients).
Resuming restores weights, optimizer, scheduler, scaler, RNG states and the position in the epoch's
batch order, so N steps + stop + resume + N steps equal 2N uninterrupted steps on CPU.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from nmt.attention_stats import attention_stats
from nmt.batching import Batch, collate, token_batches
from nmt.checkpoint import (
    latest_intact,
    load_train_state,
    load_weights,
    mark_best,
    save_checkpoint,
    write_run_files,
)
from nmt.config import Config, TrainingConfig
from nmt.errors import ConfigError, TrainingError
from nmt.metrics import bleu, chrf
from nmt.model import Seq2Seq, build_model, count_parameters
from nmt.prepare import EncodedSplit, prepare_data
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


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


def make_optimizer(model: Seq2Seq, cfg: TrainingConfig) -> torch.optim.Optimizer:
    """Adam(W); on the CPU its fused kernel (2.8 ms a step for the default model against 13 ms for the default
    implementation). CUDA keeps torch's default multi-tensor kernel, which is what the AMP path was built on."""
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    on_cpu = next(model.parameters()).device.type == "cpu"
    return kind(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=on_cpu or None)


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
            return min(step / warmup, max(0.0, (cfg.max_steps - step) / max(1, cfg.max_steps - warmup)))
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
def validate(model: Seq2Seq, translator: Translator, dev: EncodedSplit, config: Config, device: torch.device
             ) -> dict[str, float]:
    """Dev loss and perplexity (teacher forced, no smoothing); greedy dev BLEU, chrF and mean attention entropy."""
    model.eval()
    total, tokens = 0.0, 0
    for indices in split_batches(dev, config.training, seed=None):
        batch = make_batch(dev, indices).to(device)
        with autocast(device, config.training.precision):
            logits, _ = model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in)
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


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Trainer:
    """Holds what one training run mutates; `run()` is the loop."""

    def __init__(self, config: Config, resume: bool = False, progress: bool | None = None):
        self.config, self.cfg = config, config.training
        self.run_dir = config.run_path
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.device = pick_device(self.cfg)
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        torch.manual_seed(config.seed)
        data = prepare_data(config)
        self.train_split, self.dev_split = data.splits["train"], data.splits["dev"]
        existing = latest_intact(self.run_dir) if self.run_dir.exists() else None
        if existing is not None and not resume:
            raise ConfigError(f"run_dir {self.run_dir} already holds checkpoints: add --resume to continue it, "
                              "or set another run_dir")
        write_run_files(self.run_dir, config, data.tokenizer)
        self.model = build_model(config.model, data.tokenizer.src_vocab_size, data.tokenizer.tgt_vocab_size)
        self.model.to(self.device)
        self.translator = Translator(self.model, data.tokenizer, config.decoding)
        self.optimizer = make_optimizer(self.model, self.cfg)
        self.scheduler = make_scheduler(self.optimizer, self.cfg)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.cfg.precision == "fp16")
        self.state = {"step": 0, "epoch": 0, "position": 0, "best_bleu": -1.0, "bad_validations": 0,
                      "elapsed": 0.0, "train_seconds": 0.0, "tokens": 0,
                      "skipped_nonfinite": 0, "skipped_oom": 0}
        if resume:
            if existing is None:
                raise ConfigError(f"--resume: {self.run_dir} has no intact checkpoint to resume from")
            self._restore(existing)
        self.nonfinite = 0

    def _restore(self, checkpoint) -> None:
        load_weights(self.model, checkpoint)
        saved = load_train_state(checkpoint)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng_cpu"])
        if self.device.type == "cuda" and saved.get("rng_cuda") is not None:
            torch.cuda.set_rng_state_all(saved["rng_cuda"])
        self.state.update(saved["progress"])
        log.info("resumed from %s (step %d, epoch %d)", checkpoint.path, self.state["step"], self.state["epoch"] + 1)

    def _train_state(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "progress": dict(self.state),
        }

    def _save(self, scores: dict[str, float] | None) -> Path:
        meta = {"step": self.state["step"], "epoch": self.state["epoch"], **(scores or {})}
        path = save_checkpoint(self.run_dir, self.model, self._train_state(), meta, self.cfg.keep_last)
        if scores is not None and self.state["bad_validations"] == 0:  # this validation improved on the best
            mark_best(self.run_dir, path, meta)
        return path

    def _batches(self) -> Iterator[Batch]:
        """The training batches from the saved position on, epoch after epoch, each epoch its own order."""
        while self.cfg.max_epochs is None or self.state["epoch"] < self.cfg.max_epochs:
            order = split_batches(self.train_split, self.cfg, seed=self.config.seed * 1_000_003 + self.state["epoch"])
            while self.state["position"] < len(order):
                indices = order[self.state["position"]]
                self.state["position"] += 1
                yield make_batch(self.train_split, indices).to(self.device)
            self.state["epoch"] += 1
            self.state["position"] = 0

    def _step(self, batches: list[Batch]) -> tuple[float, int] | None:
        """One optimizer step over `accumulate` micro-batches; None when it was skipped as non-finite."""
        tokens = sum(b.n_tgt_tokens for b in batches)
        loss_sum = 0.0
        try:
            for batch in batches:
                with autocast(self.device, self.cfg.precision):
                    logits, _ = self.model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in,
                                           self.cfg.teacher_forcing)
                loss = token_loss(logits, batch.tgt_out, self.cfg.label_smoothing)
                self.scaler.scale(loss / tokens).backward()
                loss_sum += float(loss.detach())
        except torch.cuda.OutOfMemoryError:
            self.optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            self.state["skipped_oom"] += 1
            log.warning("step %d: out of GPU memory on %d sentences; batch skipped (lower training.batch_tokens)",
                        self.state["step"] + 1, sum(b.size for b in batches))
            return None
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm or float("inf"))
        if not (math.isfinite(loss_sum) and bool(torch.isfinite(norm))):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()  # with fp16, lowers the scale
            self.nonfinite += 1
            self.state["skipped_nonfinite"] += 1
            log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row)", self.state["step"] + 1,
                        self.nonfinite)
            if self.nonfinite >= self.cfg.max_nonfinite:
                raise TrainingError(f"{self.nonfinite} consecutive non-finite steps: lower training.lr, enable "
                                    "clipping or use fp32; the last good checkpoint is kept")
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step()
        self.nonfinite = 0
        return loss_sum / tokens, tokens

    def _validate(self) -> dict[str, float]:
        scores = validate(self.model, self.translator, self.dev_split, self.config, self.device)
        improved = scores["dev_bleu"] > self.state["best_bleu"]
        self.state["bad_validations"] = 0 if improved else self.state["bad_validations"] + 1
        if improved:
            self.state["best_bleu"] = scores["dev_bleu"]
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(scores["dev_bleu"])
        return scores

    def _log_metrics(self, record: dict) -> None:
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def run(self, stop: StopSignal | None = None) -> TrainResult:
        stop = stop or StopSignal()
        cfg, state = self.cfg, self.state
        log.info("model: %s parameters, %s attention, device %s, precision %s",
                 f"{count_parameters(self.model):,}", self.config.model.attention.type, self.device, cfg.precision)
        started = time.monotonic() - state["elapsed"]
        window_tokens, window_start, window_losses = 0, time.monotonic(), []
        reason = "epochs"
        batches = self._batches()
        self.model.train()
        with tqdm(total=cfg.max_steps, initial=state["step"], desc="train", unit="step", disable=not self.progress,
                  dynamic_ncols=True) as bar, logging_redirect_tqdm():
            while True:
                if cfg.max_steps is not None and state["step"] >= cfg.max_steps:
                    reason = "max_steps"
                    break
                if cfg.max_minutes is not None and time.monotonic() - started >= cfg.max_minutes * 60:
                    reason = "max_minutes"
                    break
                if stop.received:
                    reason = stop.received
                    break
                micro = [b for _, b in zip(range(cfg.accumulate), batches, strict=False)]
                if not micro:
                    break
                step_start = time.monotonic()
                result = self._step(micro)
                state["train_seconds"] += time.monotonic() - step_start
                if result is None:
                    continue
                loss, tokens = result
                state["step"] += 1
                state["tokens"] += tokens
                window_tokens += tokens
                window_losses.append(loss)
                bar.update(1)
                if state["step"] % cfg.log_every == 0:
                    rate = window_tokens / max(1e-9, time.monotonic() - window_start)
                    lr = self.optimizer.param_groups[0]["lr"]
                    mean_loss = sum(window_losses) / len(window_losses)
                    bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{rate:,.0f}", lr=f"{lr:.1e}")
                    if not self.progress:
                        log.info("step %d | epoch %d | loss %.3f | %s tok/s | lr %.2e", state["step"],
                                 state["epoch"] + 1, mean_loss, f"{rate:,.0f}", lr)
                    self._log_metrics({"step": state["step"], "epoch": state["epoch"] + 1, "loss": mean_loss,
                                       "tokens_per_s": rate, "lr": lr, "elapsed": time.monotonic() - started})
                    window_tokens, window_start, window_losses = 0, time.monotonic(), []
                if state["step"] % cfg.validate_every == 0:
                    if self._checkpoint_with_validation(started):
                        reason = "patience"
                        break
                    window_start = time.monotonic()
        if stop.received:
            state["elapsed"] = time.monotonic() - started
            path = self._save(None)
            log.info("%s: saved %s; continue with: nmt train --config <config> --resume", stop.received, path)
        elif state["step"] % cfg.validate_every != 0 or state["step"] == 0:
            self._checkpoint_with_validation(started)
        log.info("stopped (%s) after %d steps; best dev BLEU %.2f; skipped steps: %d non-finite, %d out of memory",
                 reason, state["step"], state["best_bleu"], state["skipped_nonfinite"], state["skipped_oom"])
        return TrainResult(self.run_dir, state["step"], state["best_bleu"], reason)

    def _checkpoint_with_validation(self, started: float) -> bool:
        """Validate, log, save; True when early stopping's patience has run out."""
        scores = self._validate()
        state = self.state
        state["elapsed"] = time.monotonic() - started
        record = {"step": state["step"], "epoch": state["epoch"] + 1, **scores, "elapsed": state["elapsed"],
                  "train_tokens_per_s": state["tokens"] / max(1e-9, state["train_seconds"]),
                  "peak_rss_mb": _peak_rss_mb()}
        self._log_metrics(record)
        log.info("validation at step %d: dev loss %.3f | ppl %.2f | BLEU %.2f%s", state["step"], scores["dev_loss"],
                 scores["dev_ppl"], scores["dev_bleu"], " (best)" if state["bad_validations"] == 0 else "")
        self._save(scores)
        return self.cfg.patience is not None and state["bad_validations"] >= self.cfg.patience


def train(config: Config, resume: bool = False, progress: bool | None = None) -> TrainResult:
    trainer = Trainer(config, resume, progress)
    handler = logging.FileHandler(trainer.run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("nmt").addHandler(handler)
    try:
        with StopSignal().installed() as stop:
            return trainer.run(stop)
    finally:
        logging.getLogger("nmt").removeHandler(handler)
        handler.close()
