"""Checkpoints are verified on load, never unpickle arbitrary objects, and never load into another model."""

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from toy_runs import MIN_DEV_BLEU

from nmt.config import ModelConfig
from nmt.errors import CheckpointError
from nmt.models import build_model
from nmt.runs.checkpoint import (
    best_files,
    checkpoint_meta,
    find_checkpoint,
    latest_intact,
    load_train_state,
    save_checkpoint,
    verify,
)
from nmt.runs.loading import load_model, load_weights
from nmt.runs.rundir import RunDir


class Payload:
    """Unpickling this would run os.system: loading must refuse it before anything runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


CONFIG = ModelConfig(embed_dim=8)


def small_checkpoints(tmp_path, steps=(1, 2, 3), bleus=None, keep_last=5) -> RunDir:
    run = RunDir(tmp_path)
    model = build_model(CONFIG, 20, 20)
    for i, step in enumerate(steps):
        scores = {"dev_bleu": bleus[i]} if bleus else None
        save_checkpoint(run, model, {"progress": {"step": step}}, checkpoint_meta(step, 0, model, CONFIG, scores),
                        keep_last=keep_last)
    return run


def test_pickle_payload_in_the_training_state_is_refused_with_our_own_message(tmp_path):
    run = small_checkpoints(tmp_path, steps=(1,))
    checkpoint = latest_intact(run)
    marker = tmp_path / "pwned"
    with open(checkpoint.files.state, "wb") as handle:
        pickle.dump({"evil": Payload(marker)}, handle)
    with pytest.raises(CheckpointError, match="not a safe checkpoint") as err:
        load_train_state(checkpoint)
    assert not marker.exists()
    assert "weights_only" not in str(err.value) and "False" not in str(err.value)


def test_corrupted_checkpoint_is_named_and_the_newest_intact_one_is_used(tmp_path, caplog):
    run = small_checkpoints(tmp_path)
    newest = run.checkpoint(3)
    with open(newest.weights, "r+b") as handle:
        handle.seek(100)
        handle.write(b"garbage")
    with pytest.raises(CheckpointError, match="step-00000003/model.safetensors: corrupted"):
        verify(newest)
    assert latest_intact(run).step == 2
    assert "skipping checkpoint" in caplog.text and "corrupted" in caplog.text
    run.checkpoint(2).state.write_bytes(b"trunc")
    assert find_checkpoint(run, "last").step == 1


def test_an_incomplete_checkpoint_without_manifest_is_skipped(tmp_path):
    run = small_checkpoints(tmp_path, steps=(1,))
    run.checkpoint(9).folder.mkdir()
    assert latest_intact(run).step == 1


@pytest.mark.parametrize("manifest", ["[]", "{}", '{"model.safetensors": "00"}', "null", '"text"'])
def test_a_manifest_that_does_not_list_every_file_is_a_corrupted_checkpoint(tmp_path, manifest, caplog):
    run = small_checkpoints(tmp_path, steps=(1, 2))
    run.checkpoint(2).manifest.write_text(manifest)
    with pytest.raises(CheckpointError, match="MANIFEST.json"):
        verify(run.checkpoint(2))
    assert latest_intact(run).step == 1
    assert "step-00000002" in caplog.text


@pytest.mark.parametrize("meta", ["garbage{", "[]", '{"step": "x"}'])
def test_a_garbage_meta_is_a_corrupted_checkpoint(tmp_path, meta, rewrite_meta):
    """meta.json is hashed too, so a rewritten one fails the manifest; one rewritten with its manifest fails as
    metadata. Either way the checkpoint is skipped by name, with no traceback."""
    run = small_checkpoints(tmp_path, steps=(1, 2))
    files = run.checkpoint(2)
    rewrite_meta(files, lambda _text: meta)
    with pytest.raises(CheckpointError, match="meta.json"):
        verify(files)
    assert latest_intact(run).step == 1


def test_non_finite_weights_are_never_saved(tmp_path):
    model = build_model(CONFIG, 20, 20)
    with torch.no_grad():
        model.decoder.combine.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="decoder.combine.weight is not finite"):
        save_checkpoint(RunDir(tmp_path), model, {}, {"step": 1}, keep_last=2)
    assert latest_intact(RunDir(tmp_path)) is None


def test_keep_last_prunes_old_checkpoints_but_never_the_best(tmp_path):
    run = small_checkpoints(tmp_path, steps=(1, 2, 3, 4, 5), bleus=[10.0, 30.0, 20.0, 25.0, 30.0], keep_last=2)
    assert [f.folder.name for f in run.checkpoints()] == ["step-00000002", "step-00000004", "step-00000005"]
    assert best_files(run) == run.checkpoint(2)  # the earliest of equal scores, as training reports it


def test_the_best_checkpoint_is_found_from_what_is_on_disk(tmp_path):
    """No separate marker: a crash between a checkpoint's rename and any later write cannot lose the best."""
    run = small_checkpoints(tmp_path, steps=(1, 2, 3), bleus=[5.0, 40.0, 12.0])
    assert find_checkpoint(run, "best").step == 2
    assert find_checkpoint(run, "last").step == 3


def test_a_corrupted_best_falls_back_to_the_newest_intact_checkpoint_with_a_warning(tmp_path, caplog):
    run = small_checkpoints(tmp_path, steps=(1, 2, 3), bleus=[5.0, 40.0, 12.0])
    run.checkpoint(2).weights.write_bytes(b"broken")
    found = find_checkpoint(run, "best")
    assert found.step == 3
    assert "step-00000002" in caplog.text and "step-00000003" in caplog.text


def _edit_run_config(run_dir: Path, edit) -> None:
    path = RunDir(run_dir).config_path
    raw = yaml.safe_load(path.read_text())
    edit(raw["model"])
    path.write_text(yaml.safe_dump(raw))


@pytest.mark.parametrize("edit,named", [
    (lambda m: m["decoder"].update(hidden_size=32), "model.decoder.hidden_size 64 -> 32"),
    (lambda m: m["attention"].update(type="concat"), "model.attention.type 'general' -> 'concat'"),
    (lambda m: m.update(tie_embeddings=True, embed_dim=64), "model.tie_embeddings False -> True"),
])
def test_a_config_edited_after_training_is_refused_by_name(trained_run, tmp_path, edit, named):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    _edit_run_config(copy, edit)
    with pytest.raises(CheckpointError, match="saved with another model") as err:
        load_model(copy)
    assert named in str(err.value)


def test_a_setting_added_after_the_checkpoint_takes_its_default(trained_run, tmp_path, rewrite_meta):
    """A checkpoint recorded before `attention.scale` existed loads while the config keeps the default."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)

    def older(text: str) -> str:
        meta = json.loads(text)
        del meta["model"]["attention"]["scale"]
        return json.dumps(meta)

    for files in RunDir(copy).checkpoints():
        rewrite_meta(files, older)
    assert load_model(copy).config.model.attention.scale is False
    _edit_run_config(copy, lambda m: m["attention"].update(scale=True))
    with pytest.raises(CheckpointError, match="model.attention.scale False -> True"):
        load_model(copy)


def test_shapes_are_checked_even_without_a_recorded_model(trained_run, tmp_path, rewrite_meta):
    """Checkpoints written before the metadata recorded the model config are still refused by shape."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    for files in RunDir(copy).checkpoints():
        rewrite_meta(files, lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "model"}))
    _edit_run_config(copy, lambda m: m["decoder"].update(hidden_size=32))
    with pytest.raises(CheckpointError, match=r"decoder\.\S+ \(64, 96\) in the checkpoint, \(32, 96\) in the model"):
        load_model(copy)


@pytest.mark.parametrize("saved_tied", [True, False])
def test_flipped_tying_is_refused_even_without_a_recorded_model(tmp_path, saved_tied):
    """Same shapes either way: only the tying tells the two apart, and loading must not guess."""
    square = {"embed_dim": 16, "encoder": {"hidden_size": 8}, "decoder": {"hidden_size": 16}}
    saved, loading = (ModelConfig(**square, tie_embeddings=t) for t in (saved_tied, not saved_tied))
    run = RunDir(tmp_path)
    model = build_model(saved, 20, 20)
    save_checkpoint(run, model, {}, {"step": 1}, keep_last=2)  # metadata without the model config
    expected = "one tied matrix in the model but differ" if not saved_tied else "tied in the checkpoint but separate"
    with pytest.raises(CheckpointError, match=expected):
        load_weights(build_model(loading, 20, 20), latest_intact(run))
    load_weights(build_model(saved, 20, 20), latest_intact(run))  # the right model still loads


def test_load_model_rebuilds_from_the_run_directory_alone(trained_run):
    loaded = load_model(trained_run, "best")
    assert loaded.config.model.attention.type == "general"
    assert not loaded.model.training
    assert loaded.checkpoint.meta["dev_bleu"] >= MIN_DEV_BLEU
    assert loaded.checkpoint.meta["parameters"] == sum(p.numel() for p in loaded.model.parameters())


TINY = ModelConfig(embed_dim=8, encoder={"hidden_size": 8}, decoder={"hidden_size": 8})


def _fill(folder: Path, leave: int) -> None:
    free = shutil.disk_usage(folder).free
    (folder / "filler").write_bytes(b"\0" * max(0, free - leave))


@pytest.mark.parametrize("fails_in", ["estimate", "torch.save", "safetensors"])
def test_a_really_full_disk_is_a_clear_error_that_removes_the_staging_folder(tmpfs, monkeypatch, fails_in):
    """Refused before writing when the free space is visibly short; and when a write itself hits ENOSPC
    (torch.save raises RuntimeError, safetensors its own error, neither an OSError), the staging folder is
    still removed and the error is the same one line."""
    import nmt.runs.checkpoint

    disk = tmpfs("4M")
    run = RunDir(disk / "run")
    model = build_model(TINY, 20, 20)
    save_checkpoint(run, model, {"progress": {}}, checkpoint_meta(1, 0, model, TINY, {"dev_bleu": 1.0}), keep_last=5)
    _fill(disk, leave={"estimate": 1536, "torch.save": 1536, "safetensors": 4}[fails_in] * 1024)
    if fails_in != "estimate":  # the estimate passes, so the fault comes from the real write
        monkeypatch.setattr(nmt.runs.checkpoint, "checkpoint_bytes", lambda *_: 0)
    state = {"moments": torch.zeros(768 * 1024)}  # 3 MB of training state
    with pytest.raises(CheckpointError, match=r"no space left on the device of .*needs about \d+ MB, \d+ MB free"):
        save_checkpoint(run, model, state, checkpoint_meta(2, 0, model, TINY, None), keep_last=5)
    assert run.stale_staging() == []
    assert [verify(c).step for c in run.checkpoints()] == [1]
