"""Subword regularization (tokenizer.sampling, tokenizer.dropout) and the moving average of the weights
(training.ema): each epoch segments the training text anew, reproducibly; the average is kept, saved, loaded
with `--checkpoint ema` and resumed exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from toy import toy_config_dict, write_config
from typer.testing import CliRunner

from nmt.cli import app
from nmt.config import EmaConfig, load_config
from nmt.data.prepare import cache_folder, prepare_data
from nmt.data.resegment import resegmented
from nmt.data.tokenizer import Resampling
from nmt.errors import CheckpointError, ConfigError
from nmt.export.onnx import export_onnx
from nmt.inference.ensemble import load_models
from nmt.inference.evaluate import evaluate
from nmt.runs.checkpoint import best_files, find_checkpoint, prune, write_checkpoint
from nmt.runs.rundir import CheckpointFiles, RunDir
from nmt.training.ema import WeightAverage
from nmt.training.recipe import Trainer, train

UNIGRAM = {"model_type": "unigram", "vocab_size": 40, "sampling": {"alpha": 0.1, "nbest": -1}}
BPE_DROPOUT = {"model_type": "bpe", "vocab_size": 40, "dropout": 0.3}


@pytest.fixture(params=[UNIGRAM, BPE_DROPOUT], ids=["unigram-sampling", "bpe-dropout"])
def regularized(request, tmp_path):
    return load_config(write_config(tmp_path, toy_config_dict(tmp_path, tokenizer=request.param)))


def test_an_epoch_is_a_sampled_segmentation_of_the_same_text_and_the_same_for_the_same_epoch(regularized):
    data = prepare_data(regularized)
    train_split, tokenizer = data.splits["train"], data.tokenizer
    first = resegmented(train_split, tokenizer, regularized.tokenizer, regularized.seed, epoch=0)
    again = resegmented(train_split, tokenizer, regularized.tokenizer, regularized.seed, epoch=0)
    second = resegmented(train_split, tokenizer, regularized.tokenizer, regularized.seed, epoch=1)
    assert np.array_equal(first.src_tokens, again.src_tokens) and np.array_equal(first.tgt_offsets,
                                                                                 again.tgt_offsets)
    assert not np.array_equal(first.src_lengths, second.src_lengths)  # another draw
    assert not np.array_equal(first.src_lengths, train_split.src_lengths)  # not the most probable pieces
    for i in range(0, len(train_split), 97):  # every draw spells the sentence it segments
        assert tokenizer.src.decode(first.src_ids(i)[:-1].tolist()) == train_split.src_text[i]
        assert tokenizer.decode_tgt(second.tgt_ids(i).tolist()) == train_split.tgt_text[i]
    # dev, test and inference keep the most probable segmentation
    dev = data.splits["dev"]
    assert tokenizer.encode_src(dev.src_text[:5]) == [dev.src_ids(i).tolist() for i in range(5)]


def test_sampling_does_not_change_the_data_cache(tmp_path):
    plain = load_config(write_config(tmp_path, toy_config_dict(tmp_path, tokenizer={"model_type": "bpe"})))
    dropout = load_config(write_config(tmp_path, toy_config_dict(tmp_path, tokenizer=BPE_DROPOUT)))
    assert cache_folder(plain) == cache_folder(dropout)


def test_a_seed_gives_the_same_draw_in_any_order_of_calls(regularized):
    tokenizer = prepare_data(regularized).tokenizer
    lines = ["ab ca de fo gu", "hi jo ku le mi no", "pa ab ca"] * 20
    draw = Resampling.of(regularized.tokenizer, 11)
    first = tokenizer.encode_src(lines, draw)
    tokenizer.encode_src(lines, Resampling.of(regularized.tokenizer, 12))  # another draw in between
    assert tokenizer.encode_src(lines, draw) == first
    assert tokenizer.encode_src(lines, Resampling.of(regularized.tokenizer, 12)) != first


@pytest.mark.parametrize("tokenizer,message", [
    ({"model_type": "bpe", "sampling": {"alpha": 0.1}}, "sampling samples a unigram model"),
    ({"model_type": "unigram", "dropout": 0.1}, "dropout drops BPE merges"),
    ({"sampling": {"nbest": 1}}, "nbest is -1"),
    ({"sampling": {"alpha": 0}}, "greater than 0"),
    ({"model_type": "bpe", "dropout": 1.0}, "less than 1"),
])
def test_bad_regularization_settings_are_refused_naming_the_key(tmp_path, tokenizer, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(write_config(tmp_path, toy_config_dict(tmp_path, tokenizer=tokenizer)))
    assert "tokenizer" in str(err.value) and "\n" not in str(err.value)


def test_the_moving_average_follows_its_formula():
    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model, EmaConfig(decay=0.9))  # type: ignore[arg-type]
    expected = [p.detach().clone() for p in model.parameters()]
    for n in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        average.update(model)  # type: ignore[arg-type]
        decay = min(0.9, (1 + n) / (10 + n))  # n updates averaged before this one
        for e, p in zip(expected, model.parameters(), strict=True):
            e.copy_(p.detach() if n == 0 else decay * e + (1 - decay) * p.detach())
    assert average.updates == 30
    for e, a in zip(expected, average.averaged.module.parameters(), strict=True):
        assert torch.allclose(e, a, atol=1e-6)
    own = [p.detach().clone() for p in model.parameters()]
    with average.swapped_in(model):  # type: ignore[arg-type]
        assert all(torch.equal(p, a) for p, a in zip(model.parameters(), average.averaged.module.parameters(),
                                                     strict=True))
    assert all(torch.equal(p, o) for p, o in zip(model.parameters(), own, strict=True))


def _weights(path: CheckpointFiles) -> dict[str, torch.Tensor]:
    return load_file(str(path.weights))


@pytest.mark.numerics
def test_resume_is_exact_with_bpe_dropout_and_the_moving_average_across_epochs(tmp_path):
    """N steps + stop + resume + N steps == 2N uninterrupted steps, the sampled epochs and the average included."""
    common = {"log_every": 1, "validate_every": 25, "max_steps": 60, "ema": {"decay": 0.95}}
    sections = {"tokenizer": BPE_DROPOUT, "model": {"encoder": {"dropout": 0.3}, "decoder": {"dropout": 0.3}}}
    straight = write_config(tmp_path / "a", toy_config_dict(tmp_path / "a", training=common, **sections))
    train(load_config(straight))
    halves = write_config(tmp_path / "b", toy_config_dict(tmp_path / "b", training=common, **sections))
    train(load_config(halves, ["training.max_steps=26"]))
    result = train(load_config(halves), resume=True)
    a, b = RunDir(tmp_path / "a" / "run"), RunDir(tmp_path / "b" / "run")
    losses = [{r["step"]: r["loss"] for r in run.metrics() if "loss" in r} for run in (a, b)]
    assert losses[0] == losses[1] and len(losses[0]) == 60
    last_a, last_b = find_checkpoint(a, "last"), find_checkpoint(b, "last")
    for which in (CheckpointFiles(last_a.path), CheckpointFiles(last_a.path, ema=True)):
        other = CheckpointFiles(last_b.path, ema=which.ema)
        wa, wb = _weights(which), _weights(other)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), which
    trainer = Trainer(load_config(halves), resume=True)
    trainer.setup()
    trainer.cleanup()
    assert trainer.progress.epoch >= 1, "the run must cross an epoch to test a second draw"
    assert result.steps == 60


def test_ema_is_validated_saved_and_loaded_with_checkpoint_ema(tmp_path):
    path = write_config(tmp_path, toy_config_dict(tmp_path, training={"max_steps": 30, "validate_every": 15,
                                                                      "ema": {"decay": 0.9}}))
    result = train(load_config(path))
    run = RunDir(tmp_path / "run")
    metrics = [r for r in run.metrics() if "dev_bleu" in r]
    assert len(metrics) == 2 and all("ema_dev_bleu" in r and "ema_dev_loss" in r for r in metrics)
    averaged = find_checkpoint(run, "ema")
    assert averaged.files.ema and averaged.files.weights.name == "ema.safetensors"
    best = max(metrics, key=lambda r: (r["ema_dev_bleu"], -r["step"]))
    assert averaged.step == best["step"] and averaged.dev_bleu == best["ema_dev_bleu"]
    assert averaged.meta["dev_loss"] == best["ema_dev_loss"]
    raw = find_checkpoint(run, averaged.path.name)
    assert raw.dev_bleu == best["dev_bleu"] and raw.weights_sha256 != averaged.weights_sha256
    out = CliRunner().invoke(app, ["translate", "--model", str(run.path), "--checkpoint", "ema", "ab ca de"])
    assert out.exit_code == 0, out.output
    assert out.stdout.count("\n") == 1  # one line translated (a model this young may write an empty one)
    best, ema = evaluate(run.path, split="dev"), evaluate(run.path, split="dev", checkpoint="ema")
    assert ema.report_path != best.report_path and ema.hypotheses_path != best.hypotheses_path
    report = json.loads(ema.report_path.read_text())
    assert report["checkpoint"] == averaged.path.name and report["moving_average"] is True
    assert ema.checkpoint == f"{averaged.path.name} (moving average)"
    # the default weighs both: the highest dev BLEU of the weights and of their average
    top_raw, top_ema = max(r["dev_bleu"] for r in metrics), max(r["ema_dev_bleu"] for r in metrics)
    chosen = find_checkpoint(run, "best")
    assert chosen.dev_bleu == max(top_raw, top_ema) and chosen.files.ema == (top_ema > top_raw)
    assert (result.best_bleu, result.moving_average) == (chosen.dev_bleu, chosen.files.ema)
    assert ("(moving average)" in result.summary()) == chosen.files.ema
    export_onnx(run.path, "ema")
    assert load_models(run.path, runtime="onnx").checkpoint.label == ema.checkpoint


def _scored_checkpoint(run: RunDir, step: int, dev_bleu: float, ema_dev_bleu: float) -> None:
    weights = {"w": torch.zeros(2)}
    write_checkpoint(run, run.checkpoint(step), weights, {}, {"step": step, "dev_bleu": dev_bleu,
                                                              "ema_dev_bleu": ema_dev_bleu}, ema=weights)


def test_best_weighs_the_weights_against_their_average_and_pruning_keeps_both_bests(tmp_path):
    run = RunDir(tmp_path)
    _scored_checkpoint(run, 100, 30.0, 20.0)  # the weights' best
    _scored_checkpoint(run, 200, 10.0, 31.0)  # the average's best
    _scored_checkpoint(run, 300, 10.0, 11.0)
    best = best_files(run)
    assert best is not None and best.ema and best.folder == run.checkpoint(200).folder
    assert best_files(run, ema=False) == run.checkpoint(100)
    assert find_checkpoint(run, "best").label == "step-00000200 (moving average)"
    prune(run, keep_last=1)
    assert [f.folder.name for f in run.checkpoints()] == ["step-00000100", "step-00000200", "step-00000300"]
    _scored_checkpoint(run, 400, 32.0, 32.0)  # a tie goes to the weights themselves
    prune(run, keep_last=1)
    assert [f.folder.name for f in run.checkpoints()] == ["step-00000400"]
    assert best_files(run) == run.checkpoint(400)


def test_checkpoint_ema_of_a_run_without_one_is_refused_in_one_line(trained_run):
    with pytest.raises(CheckpointError, match="no validated moving average") as err:
        find_checkpoint(RunDir(trained_run), "ema")
    assert "\n" not in str(err.value)
    out = CliRunner().invoke(app, ["translate", "--model", str(trained_run), "--checkpoint", "ema", "ab ca"])
    assert out.exit_code != 0 and "training.ema" in out.output and "Traceback" not in out.output
