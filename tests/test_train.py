import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from toy import reverse_words, toy_config_dict, write_config
from toy_runs import MIN_DEV_BLEU

from nmt.config import load_config
from nmt.errors import ConfigError
from nmt.runs.checkpoint import find_checkpoint, latest_intact
from nmt.runs.rundir import RunDir
from nmt.training.recipe import train


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in RunDir(run_dir).metrics() if "loss" in r}


def final_weights(run_dir):
    return load_file(str(find_checkpoint(RunDir(run_dir), "last").files.weights))


RNN_DROPOUT = {"encoder": {"dropout": 0.3}, "decoder": {"dropout": 0.3}}
TRANSFORMER = {"type": "transformer", "transformer": {"d_model": 32, "heads": 4, "ff_size": 64, "encoder_layers": 2,
                                                     "decoder_layers": 2, "dropout": 0.2, "attention_dropout": 0.2}}


@pytest.mark.numerics
@pytest.mark.parametrize("extra,model", [
    ({}, RNN_DROPOUT), pytest.param({"teacher_forcing": 0.7, "accumulate": 2}, RNN_DROPOUT, marks=pytest.mark.slow),
    ({"accumulate": 2}, TRANSFORMER)], ids=["rnn", "rnn-sampling", "transformer"])
def test_resume_is_exact(tmp_path, extra, model):
    """N steps + stop + resume + N steps == 2N uninterrupted steps (losses and weights), on CPU."""
    common = {"log_every": 1, "validate_every": 10, **extra}
    straight = toy_config_dict(tmp_path / "a", training={"max_steps": 16, **common}, model=model)
    train(load_config(write_config(tmp_path / "a", straight)))
    halves = toy_config_dict(tmp_path / "b", training={"max_steps": 7, **common}, model=model)
    path = write_config(tmp_path / "b", halves)
    train(load_config(path))
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(load_config(path))
    train(load_config(path, ["training.max_steps=16"]), resume=True)
    a, b = tmp_path / "a" / "run", tmp_path / "b" / "run"
    assert losses(a) == losses(b)
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


@pytest.mark.numerics
def test_training_learns_and_writes_a_complete_run_directory(trained_run):
    run = RunDir(trained_run)
    rows = list(run.metrics())
    train_losses = [r["loss"] for r in rows if "loss" in r]
    bleus = [r["dev_bleu"] for r in rows if "dev_bleu" in r]
    assert train_losses[-1] < train_losses[0] / 3
    assert bleus[-1] >= MIN_DEV_BLEU and (bleus[-1] > bleus[0] or bleus[0] >= MIN_DEV_BLEU), bleus
    for path in (run.config_path, run.log_path, trained_run / "src.model", trained_run / "tgt.model",
                 trained_run / "tokenizer.json"):
        assert path.is_file(), path
    checkpoint = latest_intact(run)
    files = checkpoint.files
    assert {p.name for p in checkpoint.path.iterdir()} == {p.name for p in (files.weights, files.state, files.meta,
                                                                             files.manifest)}
    assert len(run.checkpoints()) <= 3  # keep_last


def test_early_stopping_and_time_budget(tmp_path):
    raw = toy_config_dict(tmp_path, training={"max_steps": 1000, "validate_every": 5, "patience": 1, "lr": 1e-9})
    result = train(load_config(write_config(tmp_path, raw)))
    assert result.stop_reason == "patience" and result.steps == 10
    raw = toy_config_dict(tmp_path / "t", training={"max_steps": 100000, "max_minutes": 0.05, "validate_every": 1000})
    result = train(load_config(write_config(tmp_path / "t", raw)))
    assert result.stop_reason == "max_minutes" and 0 < result.steps < 100000
    # the summary line `nmt train` ends with: what the budget reached on this machine, and how fast
    assert result.minutes >= 0.05 and result.tokens_per_s > 0  # stopped because the budget was spent
    assert re.fullmatch(rf".*/run: {result.steps} steps \(max_minutes\) in \d+\.\d min, [\d,]+ target tokens/s, "
                        rf"best dev BLEU -?\d+\.\d\d", result.summary()), result.summary()


def test_fp16_on_cpu_is_a_config_error(tmp_path):
    raw = toy_config_dict(tmp_path, training={"precision": "fp16", "device": "cpu"})
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        train(load_config(write_config(tmp_path, raw)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (and a CUDA build of torch)")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_on_cuda_learns(tmp_path, precision):
    raw = toy_config_dict(tmp_path, training={"precision": precision, "device": "cuda", "max_steps": 300,
                                              "validate_every": 150, "lr": 0.01})
    result = train(load_config(write_config(tmp_path, raw)))
    assert result.best_bleu > 50


def test_non_finite_steps_are_skipped_counted_and_stop_training(tmp_path, monkeypatch, caplog):
    import logging

    from nmt.training import step as step_module

    caplog.set_level(logging.INFO, logger="nmt")
    from nmt.errors import TrainingError

    real_loss = step_module.token_loss
    calls = {"n": 0}

    def sometimes_nan(logits, tgt_out, smoothing):  # training steps 3 and 4, and every step after the 10th
        loss = real_loss(logits, tgt_out, smoothing)
        if not torch.is_grad_enabled():  # validation
            return loss
        calls["n"] += 1
        return loss * float("nan") if calls["n"] in (3, 4) or calls["n"] > 10 else loss

    monkeypatch.setattr(step_module, "token_loss", sometimes_nan)
    raw = toy_config_dict(tmp_path, training={"max_steps": 8, "validate_every": 4, "max_nonfinite": 3})
    path = write_config(tmp_path, raw)
    result = train(load_config(path))
    assert result.steps == 8  # two NaN steps were skipped, not counted as steps
    assert "2 non-finite" in caplog.text
    checkpoint = latest_intact(RunDir(tmp_path / "run"))
    with pytest.raises(TrainingError, match="3 consecutive non-finite steps"):
        train(load_config(path, ["training.max_steps=100"]), resume=True)
    assert latest_intact(RunDir(tmp_path / "run")).path == checkpoint.path  # nothing saved from the diverged steps
    for tensor in final_weights(tmp_path / "run").values():
        assert torch.isfinite(tensor).all()


def test_resume_refuses_a_different_model_before_writing_anything(tmp_path):
    raw = toy_config_dict(tmp_path, training={"max_steps": 4, "validate_every": 2})
    path = write_config(tmp_path, raw)
    train(load_config(path, ["model.encoder.hidden_size=16"]))
    run = RunDir(tmp_path / "run")
    saved = run.config_path.read_text()
    with pytest.raises(ConfigError, match=r"model.encoder.hidden_size 16 -> 48") as err:
        train(load_config(path, ["training.max_steps=8"]), resume=True)
    assert f"nmt train --config {run.config_path} --resume" in str(err.value)
    assert run.config_path.read_text() == saved  # the run is still usable as it was
    for refused in ("tokenizer.vocab_size=30", "seed=3", "data.clean.lowercase=true"):
        with pytest.raises(ConfigError, match=refused.split("=")[0]):
            train(load_config(run.config_path, [refused]), resume=True)


@pytest.mark.parametrize("refusal", ["guided_alignment", "init_from", "empty_corpus"])
def test_a_refused_train_leaves_no_run_directory_and_keeps_one_it_found(tmp_path, refusal):
    """Refused before anything is written: by guided alignment (after SentencePiece), by --init-from, by a
    corpus with nothing to train on. The run directory used to be left holding only `.lock`."""
    from nmt.errors import DataError
    from nmt.training.init_from import with_init_from

    raw = toy_config_dict(tmp_path, training={"max_steps": 2})
    if refusal == "guided_alignment":
        raw["training"]["guided_alignment"] = {"path": str(tmp_path / "no-links")}
    if refusal == "empty_corpus":
        for side in ("src", "tgt"):
            Path(raw["data"]["train"][side]).write_text("")
    config = load_config(write_config(tmp_path, raw))
    if refusal == "init_from":
        config = with_init_from(config, tmp_path / "no-run")
    run = tmp_path / "run"
    for found in (False, True):  # a folder that was there before (made by hand, empty) is left as it was
        if found:
            run.mkdir()
        with pytest.raises((ConfigError, DataError)):
            train(config, show_progress=False)
        assert run.is_dir() == found and (not found or {p.name for p in run.iterdir()} <= {".lock"})


def test_a_lock_file_removed_by_a_refused_trainer_is_not_the_one_the_next_trainer_holds(tmp_path, monkeypatch):
    """A refused trainer removes RUN/.lock (and the folder) while another trainer has opened it but not yet locked
    it: that one must lock the new file, or a third would get the run too."""
    import fcntl

    from nmt.runs.lock import lock_run

    run = RunDir(tmp_path / "run")
    real, calls = fcntl.flock, []

    def flock(handle, how):
        if not calls:  # between this trainer's open and its lock, the refused one gives the run up
            run.lock_path.unlink()
            run.path.rmdir()
        calls.append(how)
        return real(handle, how)

    monkeypatch.setattr(fcntl, "flock", flock)
    held = lock_run(run)
    try:
        assert len(calls) == 2 and os.path.samestat(os.fstat(held.handle.fileno()), os.stat(run.lock_path))
    finally:
        held.release()


def test_resume_accepts_and_records_budget_changes(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="nmt")
    raw = toy_config_dict(tmp_path, training={"max_steps": 4, "validate_every": 2})
    path = write_config(tmp_path, raw)
    train(load_config(path))
    result = train(load_config(path, ["training.max_steps=6", "training.patience=3"]), resume=True)
    assert result.steps == 6
    run = RunDir(tmp_path / "run")
    assert "training.max_steps 4 -> 6" in caplog.text and "training.patience None -> 3" in caplog.text
    assert "training.max_steps 4 -> 6" in run.log_path.read_text()
    assert "max_steps: 6" in run.config_path.read_text()


def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path, caplog):
    """A restart loop that always passes --resume recovers a run killed before its first checkpoint; the
    run's config is still checked."""
    import shutil

    raw = toy_config_dict(tmp_path, training={"max_steps": 4, "validate_every": 2})
    path = write_config(tmp_path, raw)
    result = train(load_config(path), resume=True)
    assert result.steps == 4
    assert "no intact checkpoint yet; starting from scratch" in caplog.text
    shutil.rmtree(RunDir(result.run_dir).checkpoints_dir)  # killed before its first checkpoint
    with pytest.raises(ConfigError, match="model.decoder.hidden_size 64 -> 32"):
        train(load_config(path, ["model.decoder.hidden_size=32"]), resume=True)
    assert train(load_config(path), resume=True).steps == 4


def test_metrics_hold_one_row_per_step_after_resume(tmp_path):
    raw = toy_config_dict(tmp_path, training={"max_steps": 7, "validate_every": 4, "log_every": 1})
    path = write_config(tmp_path, raw)
    train(load_config(path))  # checkpoints at 4 and at the end (7); logged steps 1..7
    run = RunDir(tmp_path / "run")
    for files in run.checkpoints():
        if files.folder.name.endswith("7"):
            import shutil

            shutil.rmtree(files.folder)  # as if killed after step 7 was logged but before it was saved
    train(load_config(path, ["training.max_steps=9"]), resume=True)
    steps = [r["step"] for r in run.metrics() if "loss" in r]
    assert steps == list(range(1, 10))


def test_a_changed_learning_rate_on_resume_is_the_one_trained_with(tmp_path):
    from nmt.training.recipe import Trainer

    raw = toy_config_dict(tmp_path, training={"max_steps": 4, "validate_every": 2, "lr": 0.001})
    path = write_config(tmp_path, raw)
    train(load_config(path))
    trainer = Trainer(load_config(path, ["training.max_steps=6", "training.lr=0.005"]), resume=True)
    trainer.setup()
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.005]
    trainer.train_step(trainer.batches.next_share(trainer.batches.order(trainer.progress)), trainer.progress)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.005]
    trainer.cleanup()


def test_resuming_a_finished_run_again_changes_nothing(tmp_path):
    """A restart loop that always passes --resume must not re-validate, re-log or rewrite the last checkpoint."""
    raw = toy_config_dict(tmp_path, training={"max_steps": 5, "validate_every": 2})
    path = write_config(tmp_path, raw)
    train(load_config(path))
    run = RunDir(tmp_path / "run")
    rows, meta = list(run.metrics()), run.checkpoint(5).meta.read_text()
    result = train(load_config(path), resume=True)
    assert result.steps == 5 and result.stop_reason == "max_steps"
    assert list(run.metrics()) == rows
    assert run.checkpoint(5).meta.read_text() == meta


@pytest.mark.numerics
def test_a_transformer_trains_through_the_trainer_and_translates(trained_transformer):
    """The toy reversal task end to end with model.type transformer: loss falls, dev BLEU rises, and the run
    directory decodes with greedy and beam search."""
    from nmt.inference.translate import translate_lines

    run = RunDir(trained_transformer)
    losses = [r["loss"] for r in run.metrics() if "loss" in r]
    bleus = [r["dev_bleu"] for r in run.metrics() if "dev_bleu" in r]
    assert losses[-1] < losses[0] / 3
    assert bleus[-1] >= MIN_DEV_BLEU and (bleus[-1] > bleus[0] or bleus[0] >= MIN_DEV_BLEU), bleus
    greedy = translate_lines(trained_transformer, ["ab ca de fo"], beam_size=1).translations[0].text
    beam = translate_lines(trained_transformer, ["ab ca de fo"], beam_size=4).translations[0].text
    assert greedy == beam == reverse_words("ab ca de fo")


def test_auto_precision_takes_the_faster_step_measured_here_and_caches_it(tmp_path, monkeypatch):
    import time

    from nmt.training import precision
    from nmt.training.precision import CACHE_FILE, choose_cpu_precision

    # bf16 as fast as fp32 in a matmul, whatever the CPU running the test: the model's steps decide
    monkeypatch.setattr(precision, "bf16_matmul_slowdown", lambda: 1.0)
    calls: list[str] = []

    def step(precision: str) -> None:
        calls.append(precision)
        torch.rand(1)  # the random state moves, as dropout moves it
        time.sleep(0.02 if precision == "bf16" else 0.001)

    state = torch.get_rng_state()
    first = choose_cpu_precision(step, "key", tmp_path)
    assert first.precision == "fp32" and not first.cached and set(calls) == {"fp32", "bf16"}
    assert first.step_ms["bf16"] > first.step_ms["fp32"]
    assert torch.equal(torch.get_rng_state(), state)  # training draws the same masks as without a measurement
    calls.clear()
    again = choose_cpu_precision(step, "key", tmp_path)
    assert again.cached and again.precision == "fp32" and not calls
    (tmp_path / CACHE_FILE).write_text("{not json")  # a damaged cache is measured again, not an error
    assert choose_cpu_precision(step, "key", tmp_path).precision == "fp32" and calls


def test_a_resumed_run_keeps_the_precision_it_trained_in(tmp_path, caplog):
    from nmt.training.precision import CACHE_FILE
    from nmt.training.recipe import Trainer

    raw = toy_config_dict(tmp_path, training={"precision": "auto", "max_steps": 2, "validate_every": 2})
    first = train(load_config(write_config(tmp_path, raw)), show_progress=False)
    assert first.steps == 2
    cache = tmp_path / "cache" / CACHE_FILE
    entries = json.loads(cache.read_text())
    (measured,) = {entry["precision"] for entry in entries.values()}
    other = "fp32" if measured == "bf16" else "bf16"
    # a well-formed entry choosing the other precision (one without its step time is measured again: on a CPU
    # that emulates bf16 only fp32 is timed)
    cache.write_text(json.dumps({key: {**entry, "precision": other, "step_ms": {**entry["step_ms"], other: 1.0}}
                                 for key, entry in entries.items()}))
    raw["training"]["max_steps"] = 4
    with caplog.at_level(logging.INFO, logger="nmt"):
        resumed = Trainer(load_config(write_config(tmp_path, raw)), resume=True)
        resumed.setup()
    resumed.cleanup()
    assert resumed.precision == measured and f"trains in {measured} as before" in caplog.text


def test_measuring_the_matmuls_draws_no_random_numbers(tmp_path):
    from nmt.training.precision import choose_cpu_precision

    state = torch.get_rng_state()
    choose_cpu_precision(lambda precision: None, "key", tmp_path)  # the real matmul probe, on this CPU
    assert torch.equal(torch.get_rng_state(), state)


def test_auto_precision_does_not_time_an_emulated_bf16_step(tmp_path, monkeypatch):
    from nmt.training import precision

    monkeypatch.setattr(precision, "bf16_matmul_slowdown", lambda: 400.0)  # oneDNN held to AVX2 measured 400x
    calls: list[str] = []
    found = precision.choose_cpu_precision(calls.append, "key", tmp_path)
    assert found.precision == "fp32" and set(calls) == {"fp32"} and "emulated" in found.describe()


def _bf16_faster(calls: list[str]) -> Callable[[str], None]:
    """A step whose bf16 runs faster than its fp32, recording what was timed."""
    import time

    def step(precision: str) -> None:
        calls.append(precision)
        time.sleep(0.001 if precision == "bf16" else 0.01)
    return step


@pytest.mark.parametrize("entry", [
    {"step_ms": "12 ms"}, {"step_ms": 12.0}, {"step_ms": None}, {"step_ms": {"fp32": "12"}},
    {"bf16_matmul_slowdown": "fast"}, {"bf16_matmul_slowdown": None}, {"bf16_matmul_slowdown": {"x": 1}},
    {"precision": "fp16"}, {"precision": None}], ids=lambda entry: json.dumps(entry))
def test_a_wrong_typed_cache_entry_is_measured_again_with_a_warning_naming_the_file_and_key(
        tmp_path, monkeypatch, caplog, entry):
    from nmt.training import precision
    from nmt.training.precision import CACHE_FILE, bf16_kind, choose_cpu_precision

    monkeypatch.setattr(precision, "bf16_matmul_slowdown", lambda: 1.0)
    key, other = f"key | {bf16_kind(1.0)}", "another | bf16 native"
    good = {"precision": "fp32", "step_ms": {"fp32": 3.0}, "bf16_matmul_slowdown": 1.0}
    cache = tmp_path / CACHE_FILE
    cache.write_text(json.dumps({key: {**good, "precision": "bf16", "step_ms": {"bf16": 1.0}, **entry},
                                 other: good}))
    calls: list[str] = []
    with caplog.at_level(logging.WARNING, logger="nmt"):
        found = choose_cpu_precision(_bf16_faster(calls), "key", tmp_path)  # used to raise a TypeError or ValueError
    assert not found.cached and set(calls) == {"fp32", "bf16"} and found.precision == "bf16"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(cache) in warning and repr(key) in warning and "measuring again" in warning
    rewritten = json.loads(cache.read_text())
    assert rewritten[other] == good and rewritten[key]["precision"] == "bf16"  # the other entry kept
    calls.clear()
    assert choose_cpu_precision(_bf16_faster(calls), "key", tmp_path).cached and not calls


def test_an_oversize_cache_is_never_loaded_whole_and_is_started_anew(tmp_path, monkeypatch, caplog):
    import tracemalloc

    from nmt.training import precision
    from nmt.training.precision import CACHE_FILE, MAX_CACHE_BYTES, bf16_kind, choose_cpu_precision

    monkeypatch.setattr(precision, "bf16_matmul_slowdown", lambda: 1.0)
    key = f"key | {bf16_kind(1.0)}"
    cache = tmp_path / CACHE_FILE
    entry = {"precision": "fp32", "step_ms": {"fp32": 3.0}, "bf16_matmul_slowdown": 1.0}
    with cache.open("w") as handle:  # 8 MB of well-formed entries, the one asked for among them
        handle.write(json.dumps({key: entry})[:-1])
        for i in range(100_000):
            handle.write(f', "padding {i}": {json.dumps(entry)}')
        handle.write("}")
    size = cache.stat().st_size
    assert size > 8 * MAX_CACHE_BYTES
    calls: list[str] = []
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING, logger="nmt"):
            found = choose_cpu_precision(_bf16_faster(calls), "key", tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * MAX_CACHE_BYTES < size / 2, peak  # it read the whole file twice: 2.2 GB for 600 MB
    assert not found.cached and found.precision == "bf16" and calls
    assert str(cache) in caplog.text and "measuring again" in caplog.text
    assert set(json.loads(cache.read_text())) == {key} and cache.stat().st_size < 1000


def test_the_cache_is_written_only_when_a_measurement_adds_to_it(tmp_path, monkeypatch):
    from nmt.training import precision
    from nmt.training.precision import CACHE_FILE, choose_cpu_precision

    monkeypatch.setattr(precision, "bf16_matmul_slowdown", lambda: 1.0)
    choose_cpu_precision(_bf16_faster([]), "key", tmp_path)
    written = (tmp_path / CACHE_FILE).stat()
    for _ in range(3):
        assert choose_cpu_precision(_bf16_faster([]), "key", tmp_path).cached
    again = (tmp_path / CACHE_FILE).stat()
    assert (again.st_ino, again.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)


WRITER = """
import sys
from pathlib import Path
from nmt.training.precision import PrecisionChoice, _store
name, path = sys.argv[1], Path(sys.argv[2])
choice = PrecisionChoice(precision="fp32", step_ms={"fp32": 1.0}, bf16_matmul_slowdown=1.0)
print("ready", flush=True)
sys.stdin.readline()
for i in range(40):
    _store(path, f"{name} {i}", choice)
"""


def test_two_processes_measuring_at_once_keep_each_others_entries(tmp_path):
    import subprocess
    import sys

    from nmt.training.precision import CACHE_FILE

    cache = tmp_path / CACHE_FILE
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, name, str(cache)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for name in ("a", "b")]
    for writer in writers:  # both started (torch imported) before either writes
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
    for writer in writers:
        assert writer.stdin is not None
        writer.stdin.write("go\n")
        writer.stdin.flush()
    for writer in writers:
        writer.communicate(timeout=120)
        assert writer.returncode == 0
    assert set(json.loads(cache.read_text())) == {f"{name} {i}" for name in ("a", "b") for i in range(40)}


def test_a_choice_made_where_bf16_is_native_is_not_reused_where_it_is_emulated(tmp_path, monkeypatch):
    """Two machines whose CPUs share a name (virtual machines show a generic "Intel(R) Xeon(R) Processor") and a
    data cache: on one bf16 is native, on the other emulated (in the second process, oneDNN and torch are held
    to AVX2, where a bf16 matmul runs about 100x slower than fp32)."""
    import platform
    import subprocess
    import sys

    from nmt.training import precision
    from nmt.training.precision import CACHE_FILE, EMULATED, bf16_matmul_slowdown, choose_cpu_precision

    if platform.machine() not in ("x86_64", "AMD64") or bf16_matmul_slowdown() > EMULATED:
        pytest.skip("needs an x86 CPU that multiplies bf16 natively")
    monkeypatch.setattr(precision, "cpu_name", lambda: "a VM's CPU")
    native = choose_cpu_precision(_bf16_faster([]), "key", tmp_path)
    assert native.precision == "bf16" and not native.cached
    script = f"""
import json, sys, time
from pathlib import Path
from nmt.training import precision
precision.cpu_name = lambda: "a VM's CPU"
calls = []
def step(name):
    calls.append(name)
    time.sleep(0.001 if name == "bf16" else 0.01)
found = precision.choose_cpu_precision(step, "key", Path({str(tmp_path)!r}))
print(json.dumps({{"precision": found.precision, "cached": found.cached, "calls": sorted(set(calls)),
                  "slowdown": precision.bf16_matmul_slowdown()}}))
"""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    emulated = json.loads(done.stdout)
    if emulated["slowdown"] <= EMULATED:
        pytest.skip(f"bf16 is not emulated under AVX2 here ({emulated['slowdown']:.1f}x fp32)")
    assert emulated == {**emulated, "precision": "fp32", "cached": False, "calls": ["fp32"]}  # bf16 not even timed
    assert len(json.loads((tmp_path / CACHE_FILE).read_text())) == 2  # both choices kept, each under its own key


def test_auto_precision_is_measured_on_the_models_own_step_and_logged(tmp_path, caplog):
    from nmt.training.precision import CACHE_FILE, EMULATED
    from nmt.training.recipe import Trainer

    config = load_config(write_config(tmp_path, toy_config_dict(tmp_path, training={"precision": "auto"})))
    with caplog.at_level(logging.INFO, logger="nmt"):
        trainer = Trainer(config)
        trainer.setup()
    trainer.cleanup()
    cached = json.loads((tmp_path / "cache" / CACHE_FILE).read_text())
    (entry,) = cached.values()
    assert trainer.precision == entry["precision"] in ("fp32", "bf16")
    # bf16 is stepped unless a matmul found it emulated (an AVX2-only CPU): then fp32 alone
    assert ("bf16" in entry["step_ms"]) == (entry["bf16_matmul_slowdown"] <= EMULATED) and "fp32" in entry["step_ms"]
    assert "precision auto -> " in caplog.text and "measured now" in caplog.text


def test_a_tuned_decoding_survives_a_resume_and_a_real_change_wins(tmp_path, caplog):
    from nmt.inference.tune import tune

    raw = toy_config_dict(tmp_path, training={"max_steps": 4, "validate_every": 2},
                          decoding={"beam_size": 1, "length_penalty": 0.0})
    path = write_config(tmp_path, raw)
    train(load_config(path))
    run = RunDir(tmp_path / "run")
    tuned = tune(run.path, beams=[1, 2], penalties=[0.0, 1.0])  # writes decoding and decoding.tuned
    chosen = load_config(run.config_path).decoding
    assert chosen.tuned is not None and (chosen.beam_size, chosen.length_penalty) == (
        tuned.best.beam_size, tuned.best.length_penalty)
    caplog.set_level(logging.INFO, logger="nmt")
    train(load_config(path, ["training.max_steps=5"]), resume=True)  # the config the run started from
    assert load_config(run.config_path).decoding == chosen
    assert "decoding." not in caplog.text
    train(load_config(path, ["training.max_steps=6", "decoding.beam_size=4"]), resume=True)
    after = load_config(run.config_path).decoding
    assert after.beam_size == 4 and after.tuned is None
    assert "decoding.beam_size" in caplog.text


def test_a_runs_own_config_resumes_that_run_from_anywhere_and_a_copy_resumes_itself(tmp_path, monkeypatch):
    """run_dir is relative to where training started; the run's config.yaml used to resume a new run under
    another working directory, and a copied run into the original's directory."""
    import shutil

    from nmt.runs.loading import read_config

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    raw = toy_config_dict(tmp_path, run_dir="runs/rel", training={"max_steps": 2, "validate_every": 2})
    train(read_config(write_config(tmp_path, raw)))
    own = tmp_path / "a" / "runs" / "rel" / "config.yaml"
    assert "run_dir: runs/rel" in own.read_text()
    monkeypatch.chdir(tmp_path / "b")
    assert train(read_config(own, ["training.max_steps=4"]), resume=True).steps == 4
    assert not (tmp_path / "b" / "runs").exists() and RunDir(own.parent).checkpoint(4).folder.is_dir()
    copy = Path(shutil.copytree(own.parent, tmp_path / "copy"))
    assert train(read_config(copy / "config.yaml", ["training.max_steps=6"]), resume=True).steps == 6
    assert RunDir(copy).checkpoint(6).folder.is_dir() and not RunDir(own.parent).checkpoint(6).folder.exists()
    with pytest.raises(ConfigError, match=r"--set run_dir=.*is the config of the run in .*copy"):
        read_config(copy / "config.yaml", [f"run_dir={tmp_path / 'other'}"])
    assert read_config(write_config(tmp_path, raw)).run_dir == "runs/rel"  # a config kept elsewhere: as written
