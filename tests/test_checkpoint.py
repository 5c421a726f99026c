"""Checkpoints are verified on load and never unpickle arbitrary objects."""

import os
import pickle

import pytest
import torch

from nmt.checkpoint import find_checkpoint, latest_intact, load_model, load_train_state, save_checkpoint, verify
from nmt.config import ModelConfig
from nmt.errors import CheckpointError
from nmt.model import build_model


class Payload:
    """Unpickling this would run os.system: loading must refuse it before anything runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def small_checkpoints(tmp_path, steps=(1, 2, 3)):
    model = build_model(ModelConfig(embed_dim=8), 20, 20)
    for step in steps:
        save_checkpoint(tmp_path, model, {"progress": {"step": step}}, {"step": step}, keep_last=5)
    return model


def test_pickle_payload_in_the_training_state_is_refused(tmp_path):
    small_checkpoints(tmp_path, steps=(1,))
    checkpoint = latest_intact(tmp_path)
    marker = tmp_path / "pwned"
    with open(checkpoint.path / "state.pt", "wb") as handle:
        pickle.dump({"evil": Payload(marker)}, handle)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_train_state(checkpoint)
    assert not marker.exists()


def test_corrupted_checkpoint_is_named_and_the_newest_intact_one_is_used(tmp_path, caplog):
    small_checkpoints(tmp_path)
    newest = tmp_path / "checkpoints" / "step-00000003"
    with open(newest / "model.safetensors", "r+b") as handle:
        handle.seek(100)
        handle.write(b"garbage")
    with pytest.raises(CheckpointError, match="step-00000003/model.safetensors: corrupted"):
        verify(newest)
    assert latest_intact(tmp_path).step == 2
    assert "skipping checkpoint" in caplog.text and "corrupted" in caplog.text
    (tmp_path / "checkpoints" / "step-00000002" / "state.pt").write_bytes(b"trunc")
    assert find_checkpoint(tmp_path, "last").step == 1


def test_an_incomplete_checkpoint_without_manifest_is_skipped(tmp_path):
    small_checkpoints(tmp_path, steps=(1,))
    (tmp_path / "checkpoints" / "step-00000009").mkdir()
    assert latest_intact(tmp_path).step == 1


def test_non_finite_weights_are_never_saved(tmp_path):
    model = build_model(ModelConfig(embed_dim=8), 20, 20)
    with torch.no_grad():
        model.decoder.combine.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="decoder.combine.weight is not finite"):
        save_checkpoint(tmp_path, model, {}, {"step": 1}, keep_last=2)
    assert latest_intact(tmp_path) is None


def test_keep_last_prunes_old_checkpoints(tmp_path):
    model = build_model(ModelConfig(embed_dim=8), 20, 20)
    for step in range(1, 6):
        save_checkpoint(tmp_path, model, {}, {"step": step}, keep_last=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000004", "step-00000005"]


def test_load_model_rebuilds_from_the_run_directory_alone(trained_run):
    config, tokenizer, model, checkpoint = load_model(trained_run, "best")
    assert config.model.attention.type == "general"
    assert not model.training
    assert checkpoint.meta["dev_bleu"] > 80
