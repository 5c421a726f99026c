"""The training recipe: `Trainer.setup` builds a run from small `_setup_*` steps, `Trainer.train` is the loop
(optimizer steps, a validation and checkpoint every `validate_every` steps, a stop on a budget, early stopping
or a signal, saving first), `Trainer.cleanup` lets go of the run directory; `train` runs the three, alone or as
one rank of a torchrun job, where rank 0 alone validates, writes and logs, and one collective at the top of
every step shares the decision to stop."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from functools import partial

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.contrib.logging import logging_redirect_tqdm

from nmt.config import Config, TrainingConfig, config_to_yaml, format_diff
from nmt.data.prepare import PreparedData, prepare_data, wait_for_cache
from nmt.errors import ConfigError
from nmt.inference.translate import Translator
from nmt.models import Model, build_model, count_parameters
from nmt.models.dropout import use_fast_dropout
from nmt.progress import progress_bar
from nmt.runs.checkpoint import EMA_PREFIX, Checkpoint, checkpoint_meta, save_checkpoint
from nmt.runs.loading import load_weights, read_weights
from nmt.runs.lock import RunLock, lock_run
from nmt.runs.rundir import CheckpointFiles, RunDir
from nmt.threads import CoreShare, use_threads
from nmt.training import resume
from nmt.training.batches import TrainBatches, check_pairs_fit
from nmt.training.distributed import World, rank_seed
from nmt.training.ema import WeightAverage
from nmt.training.guided import AlignmentGuide
from nmt.training.init_from import Initialization, fine_tuning_start, load_initial_weights, starting_tokenizer
from nmt.training.optim import Schedule, apply_optimizer_settings, make_optimizer, make_schedule
from nmt.training.precision import measure_training_precision, training_precision
from nmt.training.reporting import ThroughputMeter, log_to
from nmt.training.step import Progress, TrainingLoss, TrainStep
from nmt.training.stopping import SIGNALS, StopSignal, TrainResult, stop_reasons, stopped
from nmt.training.tensorboard import TensorBoardLog
from nmt.training.validation import Validation, validate

log = logging.getLogger(__name__)


class Trainer:
    """One training run. The constructor only keeps its arguments; `setup` builds the run, `train` trains it,
    `cleanup` closes the TensorBoard log and releases the run directory."""

    device: torch.device
    run_dir: RunDir
    lock: RunLock | None  # the run directory's lock (rank 0), released by cleanup
    data: PreparedData
    model: Model
    training_loss: TrainingLoss
    forward: nn.Module  # the model's training forward (`TrainingLoss.forward_of`), which DDP wraps under torchrun
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    precision: str
    progress: Progress
    batches: TrainBatches
    train_step: TrainStep
    validation: Validation
    ema: WeightAverage | None  # rank 0 with training.ema

    def __init__(self, config: Config, resume: bool = False, show_progress: bool = False, world: World | None = None):
        self.config, self.resume, self.show_progress = config, resume, show_progress
        self.world = world or World.single()
        self.board: TensorBoardLog | None = None  # rank 0 with training.tensorboard
        self.core_share: CoreShare | None = None  # threads that follow the machine's load (a CPU, threads unset)
        self.resumed_from: Checkpoint | None = None
        self.changes_on_resume: list[tuple[str, object, object]] = []
        self.last_saved_step: int | None = None

    @property
    def cfg(self) -> TrainingConfig:
        return self.config.training

    def setup(self) -> None:
        """Everything before the first step; nothing is written before the config is checked against the run's
        own. Under torchrun rank 0 prepares the data while the others wait for its cache to appear (before the
        process group exists, so a long preparation meets no collective timeout), and writes alone."""
        self._setup_device()
        self.run_dir = RunDir(self.config.run_path)
        self.lock = lock_run(self.run_dir) if self.world.is_main else None  # before anything is read or written
        try:
            fine_tuned = self.cfg.init_from is not None  # fine-tuning, or resuming a fine-tuned run
            existing, init = self._setup_config(fine_tuned)
            self._setup_data(init, fine_tuned)
            self._setup_process_group(existing)
            self._setup_model(init)
            self._setup_optimizer()
            self._setup_precision()
            if existing is not None:
                self._setup_resume(existing)
            self._setup_outputs()
            self._setup_loop()
        except BaseException:
            if self.board is not None:
                self.board.close()
            if self.lock is not None:
                self.lock.abandon()  # refused: a run directory this created, still empty, goes
            raise

    def _setup_device(self) -> None:
        cfg = self.cfg
        cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        if cuda and not torch.cuda.is_available():
            raise ConfigError("training.device: cuda was asked for but no CUDA GPU is available")
        if not cuda and cfg.precision == "fp16":
            raise ConfigError("training.precision: fp16 needs a CUDA GPU; use fp32 (or bf16) on the CPU")
        self.device = self.world.device(cuda)
        follows_load = not cfg.threads and not cuda and not self.world.distributed
        self.cpu_threads = use_threads(cfg.threads, follows_load)
        if follows_load:
            self.core_share = CoreShare(torch.get_num_threads())

    def _setup_config(self, fine_tuned: bool) -> tuple[Checkpoint | None, Initialization | None]:
        """The checkpoint to resume, fine-tuning's starting point, and the config to train with (a resumed run's
        changes checked against its own)."""
        run = self.run_dir
        existing = resume.resumable_checkpoint(run, self.resume)
        config, init = fine_tuning_start(self.config, run, resuming=existing is not None) if fine_tuned \
            else (self.config, None)
        self.config, self.changes_on_resume = resume.resume_changes(run, config) if self.resume else (config, [])
        if self.resume and existing is None:
            log.warning("--resume: %s has no intact checkpoint yet; starting from scratch", run.path)
        return existing, init

    def _setup_data(self, init: Initialization | None, fine_tuned: bool) -> None:
        """The prepared data, with fine-tuning's tokenizer (else one trained on the corpus); pairs too long for
        the model are left out, with a warning."""
        given = starting_tokenizer(init, self.run_dir) if fine_tuned else None
        if not self.world.is_main:
            wait_for_cache(self.config, given)
        self.data = prepare_data(self.config, given)
        check_pairs_fit(self.data.splits, self.config)

    def _setup_process_group(self, existing: Checkpoint | None) -> None:
        self.world.init(self.device, self.cfg.distributed_timeout_minutes)
        resume.agree_on_checkpoint(self.world, existing, self.run_dir)

    def _setup_model(self, init: Initialization | None) -> None:
        """The model, with fine-tuning's starting weights, and the loss it trains on."""
        config, tokenizer = self.config, self.data.tokenizer
        torch.manual_seed(rank_seed(config.seed, self.world.rank))
        self.model = build_model(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size).to(self.device)
        use_fast_dropout(self.model, self.cfg.fast_dropout)
        if init is not None:
            load_initial_weights(self.model, init)
            log.info("weights from %s (%s)", init.checkpoint.path, "vocabulary extended" if init.extend else
                     "same vocabulary")
        guide = AlignmentGuide(config, self.data.splits["train"], tokenizer) \
            if self.cfg.guided_alignment is not None else None
        self.training_loss = TrainingLoss(self.cfg, guide)
        self.forward = self.training_loss.forward_of(self.model)
        self.ema = WeightAverage(self.model, self.cfg.ema) if self.cfg.ema is not None and self.world.is_main \
            else None

    def _setup_optimizer(self) -> None:
        self.optimizer = make_optimizer(self.model, self.cfg)
        self.schedule = make_schedule(self.optimizer, self.cfg)

    def _setup_precision(self) -> None:
        measure = partial(measure_training_precision, self.forward, self.training_loss, self.data.splits["train"],
                          self.config)
        self.precision = training_precision(self.cfg.precision, self.device, self.world, measure)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.progress = Progress(precision=self.precision)

    def _setup_resume(self, checkpoint: Checkpoint) -> None:
        """Weights, optimizer, schedule, scaler, RNG states and progress as saved; then the config's optimizer
        settings win (nmt.training.resume)."""
        load_weights(self.model, checkpoint, self.config.model, self.run_dir.config_path)
        self.progress = resume.restore_train_state(checkpoint, self.optimizer, self.schedule, self.scaler, self.world,
                                                   self.device, self.config.seed)
        self.precision = resume.resumed_precision(self.cfg.precision, self.progress.precision, self.precision)
        self.progress.precision = self.precision
        self.resumed_from, self.last_saved_step = checkpoint, checkpoint.step
        apply_optimizer_settings(self.optimizer, self.schedule, self.cfg)
        if self.ema is not None:
            self._resume_ema(checkpoint)

    def _resume_ema(self, checkpoint: Checkpoint) -> None:
        """The moving average as saved; one the checkpoint lacks (training.ema set on resume) starts here."""
        assert self.ema is not None
        if checkpoint.files.folder.joinpath(CheckpointFiles.EMA_WEIGHTS).is_file():
            # verified with the checkpoint: its manifest's hashes cover ema.safetensors too
            averaged = Checkpoint(CheckpointFiles(checkpoint.path, ema=True), checkpoint.meta)
            self.ema.load(read_weights(averaged), self.progress.ema_updates)
        else:
            log.info("training.ema: %s has no moving average of the weights; it starts from step %d",
                     checkpoint.path.name, checkpoint.step)
            self.progress.ema_updates = 0

    def _setup_outputs(self) -> None:
        """Rank 0: the config and tokenizer written, TensorBoard opened, and metrics.jsonl cut back to the step
        resumed (the steps after it are trained, and logged, again)."""
        if not self.world.is_main:
            return
        run, step = self.run_dir, self.last_saved_step or 0
        run.write_config(config_to_yaml(self.config))
        run.write_tokenizer(self.data.tokenizer)
        if self.cfg.tensorboard:
            self.board = TensorBoardLog(run.tensorboard_dir, purge_step=step + 1)
        if dropped := run.truncate_metrics(step):
            log.info("%s: dropped %d records after step %d (those steps are trained again)", run.metrics_path,
                     dropped, step)

    def _setup_loop(self) -> None:
        """The batches, the step and validation. The training forward runs through DDP under torchrun, which
        all-reduces the gradients during backward; without device_ids it leaves the inputs where they are
        (src_lengths stays on the CPU), and the only buffers (position tables) are constants, not broadcast."""
        config, model, world = self.config, self.model, self.world
        trained = DistributedDataParallel(self.forward, broadcast_buffers=False) if world.distributed else self.forward
        self.batches = TrainBatches(self.data.splits["train"], self.data.tokenizer, config, world, self.device)
        self.train_step = TrainStep(model, trained, self.optimizer, self.schedule, self.scaler, self.training_loss,
                                    self.cfg, world, self.device, self.precision)
        translator = Translator(model, self.data.tokenizer, config.decoding, config.data.clean)
        self.validation = Validation(model, translator, self.data.splits["dev"], config, self.device, world,
                                     self.run_dir, self.board)

    def _save(self, scores: dict[str, float] | None) -> None:
        """A checkpoint with the dev `scores` it was validated with (None: saved on a stop signal). Every rank
        calls it: rank 0 gathers their RNG states and writes; the others wait until the checkpoint is on disk."""
        rng_ranks = self.world.gather(resume.rng_state(self.device))
        if rng_ranks is not None:
            meta = checkpoint_meta(self.progress.step, self.progress.epoch, self.model, self.config.model, scores)
            state = resume.train_state(self.optimizer, self.schedule, self.scaler, rng_ranks, self.progress)
            ema = self.ema.state_dict() if self.ema is not None else None
            save_checkpoint(self.run_dir, self.model, state, meta, self.cfg.keep_last, ema)
        self.world.barrier()
        self.last_saved_step = self.progress.step

    def _validate_and_save(self, started: float) -> None:
        scores, improved = self.validation.score(self.progress, self.precision, self.schedule)
        if self.ema is not None:
            scores = scores | self._score_ema()
        self.progress.elapsed = time.monotonic() - started
        self.validation.record(self.progress, scores, improved)
        self._save(scores)

    def _score_ema(self) -> dict[str, float]:
        """Rank 0: the moving average's dev scores, named with the prefix EMA_PREFIX (the trained weights' decide
        the best checkpoint, patience and the schedule)."""
        assert self.ema is not None
        with self.ema.swapped_in(self.model):
            scores, _ = validate(self.model, self.validation.translator, self.validation.dev, self.config,
                                 self.device, self.precision)
        log.info("  moving average (training.ema): dev loss %.3f | ppl %.2f | BLEU %.2f", scores["dev_loss"],
                 scores["dev_ppl"], scores["dev_bleu"])
        return {f"{EMA_PREFIX}{name}": value for name, value in scores.items()}

    def _log_start(self) -> None:
        if self.resumed_from is not None:
            log.info("resumed from %s (step %d, epoch %d)", self.resumed_from.path, self.progress.step,
                     self.progress.epoch + 1)
            if self.changes_on_resume:
                log.info("changed since the run's last session: %s", format_diff(self.changes_on_resume))
        log.info("model: %s, %s parameters, device %s, precision %s%s", self.config.model.summary,
                 f"{count_parameters(self.model):,}", self.device, self.precision,
                 f", {self.world.size} ranks" if self.world.distributed else "")
        log.info("%s", self.cpu_threads)

    def train(self, stop: StopSignal | None = None) -> TrainResult:
        """Optimizer steps until a budget, early stopping, a signal or the data (max_epochs) ends them; the last
        step validated and saved (on a signal: saved only)."""
        stop = stop or StopSignal()
        cfg, progress, world = self.cfg, self.progress, self.world
        self._log_start()
        started = time.monotonic() - progress.elapsed
        meter = ThroughputMeter(self.run_dir, self.board, world)
        order = self.batches.order(progress)
        self.model.train()
        with progress_bar(total=cfg.max_steps, initial=progress.step, desc="train", unit="step",
                          enabled=self.show_progress and world.is_main) as bar, logging_redirect_tqdm():
            while True:
                seconds = time.monotonic() - started if world.is_main else None
                why = world.agree_stop(stop_reasons(cfg, progress, seconds, stop), self.device)
                if why is not None or (share := self.batches.next_share(order)) is None:
                    break  # a reason to stop, or the data ran out (max_epochs)
                step_start = time.monotonic()
                result = self.train_step(share, progress)
                progress.train_seconds += time.monotonic() - step_start
                if self.core_share is not None:
                    self.core_share.poll()
                if result is None:
                    continue
                progress.step += 1
                progress.tokens += result.tokens
                if self.ema is not None:
                    self.ema.update(self.model)
                    progress.ema_updates = self.ema.updates
                meter.add(result)
                bar.update(1)
                if progress.step % cfg.log_every == 0:
                    meter.report(progress, self.optimizer.param_groups[0]["lr"], started, bar)
                if progress.step % cfg.validate_every == 0:
                    self._validate_and_save(started)
                    meter.restart_clock()
            reason = why or "max_epochs"
        if progress.step != self.last_saved_step:  # else this step's checkpoint (and its scores) is on disk
            if reason in SIGNALS:  # received by this rank or another
                progress.elapsed = time.monotonic() - started
                self._save(None)
            else:
                self._validate_and_save(started)
        return stopped(reason, progress, self.run_dir, world)

    def cleanup(self) -> None:
        """Close the TensorBoard log, release the run directory's lock (rank 0) and give back the thread count."""
        if self.core_share is not None:
            self.core_share.restore()
        if self.board is not None:
            self.board.close()
        if self.lock is not None:
            self.lock.release()


def train(config: Config, resume: bool = False, show_progress: bool = True) -> TrainResult:
    """Train in this process, or as one rank of a torchrun job (World.from_environment says which)."""
    world = World.from_environment()
    if not world.is_main:  # the other ranks report warnings and errors only, and write no log file
        logging.getLogger("nmt").setLevel(logging.WARNING)
    trainer = Trainer(config, resume, show_progress, world)
    trainer.setup()
    try:
        with log_to(trainer.run_dir.log_path) if world.is_main else nullcontext(), StopSignal().installed() as stop:
            result = trainer.train(stop)
    finally:
        trainer.cleanup()
    # Leave the process group on success only (after an error another rank may be inside a collective, and
    # torchrun ends the job): all ranks meet, DDP's reducer goes, then the group, before the interpreter's
    # own teardown, where gloo's threads would otherwise abort the process.
    world.barrier()
    del trainer
    world.close()
    return result
