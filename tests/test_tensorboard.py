"""`training.tensorboard: true`: event files in RUN/tensorboard, read back with tensorboard's own reader, hold
what metrics.jsonl holds (train loss, lr, tokens/s, gradient norm; dev loss, BLEU, chrF), one attention image per
validation, and after a resume each step once."""

from __future__ import annotations

import pytest
import torch
from toy import toy_config_dict, write_config

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from nmt.config import load_config  # noqa: E402
from nmt.runs.loading import load_tokenizer  # noqa: E402
from nmt.runs.rundir import RunDir  # noqa: E402
from nmt.training.recipe import train  # noqa: E402
from nmt.training.tensorboard import CELL_PIXELS, attention_image  # noqa: E402

TRAIN_TAGS = {"train/loss", "train/lr", "train/tokens_per_s", "train/grad_norm"}
DEV_TAGS = {"dev/loss", "dev/ppl", "dev/bleu", "dev/chrf", "dev/attention_entropy"}


def events(run: RunDir) -> EventAccumulator:
    accumulator = EventAccumulator(str(run.tensorboard_dir), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def test_event_files_hold_the_metrics_and_one_heatmap_per_validation_and_survive_a_resume(tmp_path):
    settings = {"max_steps": 4, "validate_every": 2, "log_every": 1, "tensorboard": True}
    path = write_config(tmp_path, toy_config_dict(tmp_path, training=settings))
    train(load_config(path), show_progress=False)
    train(load_config(path, ["training.max_steps=6"]), resume=True, show_progress=False)
    run = RunDir(tmp_path / "run")
    found = events(run)
    tags = found.Tags()
    assert TRAIN_TAGS | DEV_TAGS <= set(tags["scalars"])
    metrics = run.metrics()
    for tag, key in (("train/loss", "loss"), ("train/lr", "lr"), ("dev/bleu", "dev_bleu"), ("dev/loss", "dev_loss"),
                     ("dev/chrf", "dev_chrf")):
        logged = {e.step: e.value for e in found.Scalars(tag)}
        recorded = {r["step"]: r[key] for r in metrics if key in r}
        assert sorted(logged) == sorted(recorded), tag  # each step once, the resumed steps not twice
        assert logged == pytest.approx(recorded, rel=1e-6), tag  # float32 in the event file
    assert all(e.value > 0 for e in found.Scalars("train/grad_norm"))
    assert [e.step for e in found.Scalars("train/loss")] == list(range(1, 7))

    images = found.Images("dev/attention_first_sentence")
    assert [i.step for i in images] == [2, 4, 6]
    first_source = load_config(path).data.dev
    tokenizer = load_tokenizer(run)
    src_tokens = len(tokenizer.encode_src([open(first_source.src, encoding="utf-8").readline().strip()])[0])
    for image in images:
        assert image.width == CELL_PIXELS * src_tokens and image.height % CELL_PIXELS == 0 and image.height > 0


def test_attention_image_is_the_scaled_weight_matrix():
    weights = torch.tensor([[0.7, 0.2, 0.1], [0.0, 0.5, 0.5]])
    image = attention_image(weights)
    assert image.shape == (2 * CELL_PIXELS, 3 * CELL_PIXELS)
    assert float(image.max()) == 1.0 and float(image.min()) == 0.0
    torch.testing.assert_close(image[::CELL_PIXELS, ::CELL_PIXELS], weights / 0.7)
    assert torch.equal(image[:CELL_PIXELS, :CELL_PIXELS], torch.full((CELL_PIXELS, CELL_PIXELS), 1.0))
