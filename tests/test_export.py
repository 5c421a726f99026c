"""Exports decode like PyTorch: the encoder and one decoder step on onnxruntime, driven by the Python search
(greedy and beam, RNN and Transformer), and the Transformer on CTranslate2.

Two runtimes are different kernels, so their floating-point sums differ in the last bits, and a near-tie
between two tokens can go either way. Token ids are compared by an agreement rate (printed), and every
disagreement must be a near-tie: the two outputs' log-probabilities under the PyTorch model within NEAR_TIE.
A wrong export (a swapped weight, a missing bias, a wrong cache) changes far more than that.

Exports are also written whole or not at all (killed, concurrent, onto a full disk) and checked when loaded."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from test_checkpoint import _fill
from toy_runs import PROBES

from nmt.data.batching import collate
from nmt.data.splits import eval_set
from nmt.errors import CheckpointError, ConfigError, DiskFullError
from nmt.fileio import describe_files, staged_folder
from nmt.inference.steer import Steer
from nmt.inference.translate import Translator, translate_lines
from nmt.runs.loading import LoadedRun, load_model, load_run_config
from nmt.runs.rundir import RunDir

pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install -e '.[export]'")

pytestmark = pytest.mark.numerics

MIN_AGREEMENT = 0.95  # of the dev sentences with identical token ids (both fixtures: 100% measured, README)
NEAR_TIE = 0.05  # nats between the log-probabilities of two different outputs under PyTorch


def forced_log_probs(loaded: LoadedRun, sources: Sequence[str], outputs: Sequence[list[int]]) -> list[float]:
    """log p(output + EOS | source) under the PyTorch model, teacher-forced."""
    src = Translator.for_run(loaded).encode(list(sources))
    batch = collate(src, list(outputs), np.arange(len(src)))
    assert batch.tgt_in is not None and batch.tgt_out is not None
    with torch.inference_mode():
        logits = loaded.model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in)
        chosen = logits.float().log_softmax(-1).gather(-1, batch.tgt_out.unsqueeze(-1)).squeeze(-1)
    return [float(chosen[row, : len(out) + 1].sum()) for row, out in enumerate(outputs)]


def assert_agreement(loaded: LoadedRun, sources: Sequence[str], reference: Sequence[list[int]],
                     other: Sequence[list[int]], what: str) -> None:
    """`other` equals `reference` on >= MIN_AGREEMENT of the sentences, and each disagreement is a near-tie."""
    differing = [i for i, (a, b) in enumerate(zip(reference, other, strict=True)) if a != b]
    rate = 1 - len(differing) / len(reference)
    gaps = []
    if differing:
        picked = [sources[i] for i in differing]
        mine = forced_log_probs(loaded, picked, [reference[i] for i in differing])
        theirs = forced_log_probs(loaded, picked, [other[i] for i in differing])
        gaps = [abs(a - b) for a, b in zip(mine, theirs, strict=True)]
    differences = f"largest log-probability gap where they differ: {max(gaps):.4f}" if gaps else "no disagreement"
    print(f"{what}: identical token ids on {rate:.1%} of {len(reference)} sentences; {differences}")
    assert all(other), f"{what}: an empty translation"
    assert rate >= MIN_AGREEMENT, f"{what}: identical token ids on {rate:.1%} of the sentences"
    assert all(gap <= NEAR_TIE for gap in gaps), f"{what}: a disagreement that is not a near-tie: {gaps}"


@pytest.mark.parametrize("fixture", ["trained_run", "trained_transformer"])
def test_onnx_runtime_decodes_the_dev_set_as_pytorch_does(fixture, request, tmp_path):
    from nmt.export.onnx import export_onnx

    run = shutil.copytree(request.getfixturevalue(fixture), tmp_path / "run")
    with pytest.raises(ConfigError, match="no exported model"):
        translate_lines(run, ["ab"], runtime="onnx")
    folder = export_onnx(run)
    with pytest.raises(ConfigError, match="runtime: onnx decodes the export"):
        translate_lines(run, ["ab"], checkpoint="last", runtime="onnx")
    assert (folder / "encoder.onnx").is_file() and (folder / "step.onnx").is_file()
    loaded = load_model(run)
    dev = eval_set(load_run_config(RunDir(run)).data).sources
    for beam in (1, 3):
        torch_ids = [t.hypotheses[0].tokens for t in translate_lines(run, dev, beam_size=beam).translations]
        onnx_ids = [t.hypotheses[0].tokens for t in translate_lines(run, dev, beam_size=beam, runtime="onnx")
                    .translations]
        assert_agreement(loaded, dev, torch_ids, onnx_ids, f"onnxruntime, {fixture}, beam {beam}")
    # steering is the search's, so onnxruntime takes it too
    steers = [Steer(prefix="DE", constraints=("GU",)), Steer(constraints=("AB CA", "JO"))]
    steered = translate_lines(run, ["ab ca de fo", "le mi no"], beam_size=3, runtime="onnx", steers=steers,
                              no_repeat_ngram_size=3).translations
    assert steered[0].text.startswith("DE") and all(t.missing == [] for t in steered)
    assert all(p in t.text for t, s in zip(steered, steers, strict=True) for p in s.constraints)


def test_ctranslate2_decodes_a_transformer_as_pytorch_does(trained_transformer, trained_run, tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed: pip install -e '.[export]'")
    from nmt.export.ctranslate2 import MANIFEST, export_ctranslate2

    with pytest.raises(ConfigError, match="format: ctranslate2: a rnn, .* model cannot be exported to ctranslate2; "
                                          "it can be exported to onnx"):
        export_ctranslate2(trained_run, output=tmp_path / "rnn")
    folder = export_ctranslate2(trained_transformer, output=tmp_path / "ct2")
    loaded = load_model(trained_transformer)
    tokenizer = loaded.tokenizer
    dev = eval_set(loaded.config.data).sources
    sources = Translator.for_run(loaded).encode(dev)  # ending in </s>, as the exported model expects
    found = ctranslate2.Translator(str(folder), device="cpu").translate_batch(
        [tokenizer.src_pieces(s) for s in sources], beam_size=1, max_decoding_length=64)
    ct2_ids = [[tokenizer.tgt.piece_to_id(p) for p in r.hypotheses[0]] for r in found]
    torch_ids = [t.hypotheses[0].tokens for t in translate_lines(trained_transformer, dev, beam_size=1).translations]
    assert_agreement(loaded, dev, torch_ids, ct2_ids, "ctranslate2, greedy")
    manifest = json.loads((folder / MANIFEST).read_text())  # every other file's size and sha256
    assert manifest["files"] == {name: record for name, record in describe_files(folder).items() if name != MANIFEST}
    assert {"model.bin", "shared_vocabulary.json"} <= set(manifest["files"])


@pytest.mark.parametrize("layout", ["{not json", '{"memory": ["mask"]}',
                                    '{"memory": [], "state": [], "state_batch_axes": []}', None])
def test_a_damaged_or_tampered_layout_is_refused_in_one_line(trained_run, tmp_path, layout):
    """Garbage, a partial layout, an empty one, or one pointing at another run's checkpoint (`../..`)."""
    from nmt.export.onnx import export_onnx
    from nmt.inference.onnx_runtime import LAYOUT

    run = shutil.copytree(trained_run, tmp_path / "run")
    path = export_onnx(run) / LAYOUT
    if layout is None:
        saved = json.loads(path.read_text())
        path.write_text(json.dumps({**saved, "checkpoint": "../../other/checkpoints/" + saved["checkpoint"]}))
    else:
        path.write_text(layout)
    with pytest.raises(CheckpointError, match=str(path)) as caught:
        translate_lines(run, ["ab"], runtime="onnx")
    assert "\n" not in str(caught.value)


# Atomic, verified exports: staged and swapped in whole, every file's size and sha256 recorded and checked.

NMT = str(Path(sys.executable).parent / "nmt")


@pytest.fixture(scope="module")
def two_exports(trained_run, tmp_path_factory) -> tuple[Path, Path, Path]:
    """A copy of the run and two exports of it from different checkpoints: `old` (step 400, written while the
    best checkpoint was moved away) and `new` (the best one, step 800). The run's export/onnx holds `old`."""
    from nmt.export.onnx import export_onnx

    root = tmp_path_factory.mktemp("exports")
    run = shutil.copytree(trained_run, root / "run")
    best = RunDir(run).checkpoints()[-1].folder
    shutil.move(best, root / "aside")
    old = export_onnx(run, output=root / "old")
    shutil.move(root / "aside", best)
    new = export_onnx(run, output=root / "new")
    assert _layout(old)["checkpoint"] != _layout(new)["checkpoint"] == best.name
    shutil.copytree(old, RunDir(run).export_dir("onnx"))
    return run, old, new


def _layout(folder: Path) -> dict:
    return json.loads((folder / "layout.json").read_text())


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_an_export_replaces_the_previous_one_whole_and_records_every_file(two_exports, tmp_path):
    from nmt.export.onnx import export_onnx
    from nmt.inference.onnx_runtime import ENCODER, LAYOUT, STEP

    run, old, new = two_exports
    run = shutil.copytree(run, tmp_path / "run")
    folder = RunDir(run).export_dir("onnx")
    assert _contents(folder) == _contents(old)
    (folder.parent / ".onnx.0123abcd.tmp").mkdir()  # what a killed export leaves
    assert export_onnx(run) == folder
    assert _contents(folder) == _contents(new)  # the graphs of one checkpoint, none of the other's
    assert [p.name for p in folder.parent.iterdir()] == ["onnx"]  # the old export and the leftover are gone
    assert _layout(folder)["files"] == {name: record for name, record in describe_files(folder).items()
                                        if name != LAYOUT}
    assert set(_layout(folder)["files"]) == {ENCODER, STEP}
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=rf"{tmp_path}: exists and is not an nmt export"):
        export_onnx(run, output=tmp_path)  # the export replaces its whole folder: never one holding other files
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_export_decodes_after_training_pruned_its_checkpoint(two_exports, tmp_path):
    """A run that trains on with keep_last prunes the checkpoint an export came from: the export holds what
    decoding needs (it used to be refused: `MANIFEST.json: missing or unreadable`)."""
    from nmt.inference.ensemble import load_models

    run, old, _ = two_exports
    run = shutil.copytree(run, tmp_path / "run")
    exported = RunDir(run).checkpoints_dir / _layout(old)["checkpoint"]
    step = json.loads((exported / "meta.json").read_text())["step"]
    shutil.rmtree(exported)
    loaded = load_models(run, runtime="onnx")
    assert loaded.checkpoint.step == step and loaded.checkpoint.path == exported
    assert translate_lines(run, ["ab ca de"], runtime="onnx").translations[0].text


def _truncate(folder: Path, old: Path) -> None:
    path = folder / "encoder.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _swap(folder: Path, old: Path) -> None:
    encoder, step = (folder / "encoder.onnx").read_bytes(), (folder / "step.onnx").read_bytes()
    (folder / "encoder.onnx").write_bytes(step)
    (folder / "step.onnx").write_bytes(encoder)


def _foreign(folder: Path, old: Path) -> None:
    shutil.copy(old / "step.onnx", folder / "step.onnx")  # the same model's graph, from another checkpoint


def _unrecorded(folder: Path, old: Path) -> None:
    saved = _layout(folder)
    del saved["files"]  # as nmt export wrote it before it recorded the files
    (folder / "layout.json").write_text(json.dumps(saved))


@pytest.mark.parametrize("tamper, named, reason", [
    (_truncate, "encoder.onnx", "bytes where layout.json records"),
    (_swap, "encoder.onnx", "bytes where layout.json records"),
    (_foreign, "step.onnx", "sha256 does not match layout.json"),
    (lambda folder, old: (folder / "step.onnx").unlink(), "step.onnx", "missing"),
    (_unrecorded, "layout.json", "does not record the size and sha256 of every file"),
], ids=["truncated", "swapped", "foreign", "missing", "unrecorded"])
def test_a_tampered_export_is_refused_before_decoding_in_one_line_naming_the_file(two_exports, tmp_path, tamper,
                                                                                  named, reason):
    run, old, new = two_exports
    run = shutil.copytree(run, tmp_path / "run")
    folder = RunDir(run).export_dir("onnx")
    shutil.rmtree(folder)
    shutil.copytree(new, folder)
    tamper(folder, old)
    with pytest.raises(CheckpointError, match=f"{folder / named}: .*{reason}") as caught:
        translate_lines(run, ["ab"], runtime="onnx")
    assert "\n" not in str(caught.value)


def test_swapped_graphs_are_one_line_through_the_cli(two_exports, tmp_path):
    run, old, new = two_exports
    run = shutil.copytree(run, tmp_path / "run")
    _swap(RunDir(run).export_dir("onnx"), old)
    result = subprocess.run([NMT, "translate", "ab ca", "--model", str(run), "--runtime", "onnx"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == CheckpointError.exit_code and result.stdout == "", result.stderr
    assert result.stderr.startswith(f"error: {RunDir(run).export_dir('onnx') / 'encoder.onnx'}: ")
    assert result.stderr.count("\n") == 1, result.stderr


LIVE_WRITER = """
import sys
from pathlib import Path
from nmt.fileio import staged_folder
with staged_folder(Path(sys.argv[1])) as staging:
    (staging / "encoder.onnx").write_text("live")
    print(staging, flush=True)
    sys.stdin.readline()
"""


def test_an_export_cleans_a_killed_exports_staging_but_never_a_live_ones(tmp_path):
    """Two exports at once: each removes only staging folders no live process holds (their flock)."""
    final = tmp_path / "onnx"
    writer = subprocess.Popen([sys.executable, "-c", LIVE_WRITER, str(final)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None
        live = Path(writer.stdout.readline().strip())
        killed = tmp_path / ".onnx.0123abcd.tmp"
        killed.mkdir()
        (killed / "encoder.onnx").write_text("half a graph")
        with staged_folder(final) as mine:
            (mine / "encoder.onnx").write_text("mine")
        assert not killed.exists() and (live / "encoder.onnx").read_text() == "live"
        assert (final / "encoder.onnx").read_text() == "mine"
    finally:
        writer.communicate("\n", timeout=60)
    assert writer.returncode == 0
    assert (final / "encoder.onnx").read_text() == "live"  # the live one published last, whole
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]


@pytest.mark.parametrize("leave_kb, named", [(40, "encoder.onnx"), (260, "step.onnx")])
def test_an_onnx_export_onto_a_full_disk_is_one_line_and_keeps_the_previous_export(trained_run, tmpfs, leave_kb,
                                                                                   named):
    """A real 2 MB filesystem: the write fails in the first graph, or in the second."""
    from nmt.export.onnx import export_onnx

    disk = tmpfs("2M")
    folder = export_onnx(trained_run, output=disk / "onnx")
    before = _contents(folder)
    _fill(disk, leave=leave_kb * 1024)
    with pytest.raises(DiskFullError) as caught:
        export_onnx(trained_run, output=folder)
    message = str(caught.value)
    assert message.startswith(f"cannot write {folder / named}: no space left on the device"), message
    assert f"; {folder} is as it was" in message and "\n" not in message
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "onnx"]  # no staging folder left
    assert _contents(folder) == before


@pytest.mark.parametrize("leave_kb, named", [(0, "shared_vocabulary.json"), (64, "model.bin")])
def test_a_ctranslate2_export_onto_a_full_disk_is_one_line_through_the_cli(trained_transformer, tmpfs, leave_kb,
                                                                           named):
    """ctranslate2 writes the vocabulary first (the 0-byte shared_vocabulary.json of the report), then model.bin."""
    pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed: pip install -e '.[export]'")
    from nmt.export.ctranslate2 import export_ctranslate2

    disk = tmpfs("2M")
    folder = export_ctranslate2(trained_transformer, output=disk / "ct2")
    before = _contents(folder)
    _fill(disk, leave=leave_kb * 1024)
    result = subprocess.run([NMT, "export", "--model", str(trained_transformer), "--format", "ctranslate2", "--output",
                             str(folder)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"error: cannot write {folder / named}: no space left on the device")
    assert f"; {folder} is as it was" in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert sorted(p.name for p in disk.iterdir()) == ["ct2", "filler"]
    assert _contents(folder) == before


def _state(folder: Path, old: Path, new: Path) -> str:
    """'old' or 'new': which complete export `folder` holds, byte for byte; anything else fails the test."""
    found = _contents(folder)
    assert found in (_contents(old), _contents(new)), f"a mixed or partial export: {sorted(found)}"
    return "old" if found == _contents(old) else "new"


def _kill_when(moment: str, export: subprocess.Popen, folder: Path, new: Path, delay: float) -> None:
    """Wait for `moment` of the export (its staging folder appears; a file appears in it; the new export is in
    place) or its end, then SIGKILL it."""
    deadline = time.monotonic() + 120  # a hang guard
    published = (new / "layout.json").read_bytes()
    while export.poll() is None and time.monotonic() < deadline:
        staging = list(folder.parent.glob(".onnx.*.tmp"))
        if moment == "published":
            reached = (folder / "layout.json").is_file() and (folder / "layout.json").read_bytes() == published
        elif moment in ("staging", "random"):
            reached = bool(staging)
        else:
            reached = any((s / moment).exists() for s in staging)
        if reached:
            time.sleep(delay if moment == "random" else 0)
            break
        time.sleep(0.002)
    export.kill()
    export.wait(timeout=60)


@pytest.mark.slow
def test_a_killed_export_leaves_the_old_export_or_the_new_one_never_a_mix(two_exports, tmp_path):
    """SIGKILL `nmt export` as its staging folder appears, as each file appears in it, right after the new
    export is swapped in, and at random moments; each time the run starts from an export of another
    checkpoint. Afterwards the folder holds one complete export, byte for byte, which --runtime onnx decodes;
    the leftovers are removed by the next export."""
    from nmt.export.onnx import export_onnx

    run, old, new = two_exports
    run = shutil.copytree(run, tmp_path / "run")
    folder = RunDir(run).export_dir("onnx")
    rng = random.Random(23)
    seen = []
    for moment in ["staging", "encoder.onnx", "step.onnx", "layout.json", "published", "random", "random"]:
        shutil.rmtree(folder)
        shutil.copytree(old, folder)
        export = subprocess.Popen([NMT, "export", "--model", str(run)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        _kill_when(moment, export, folder, new, rng.uniform(0, 0.4))
        state = _state(folder, old, new)
        seen.append((moment, state, export.returncode))
        translations = translate_lines(run, PROBES, runtime="onnx").translations
        assert len(translations) == len(PROBES) and all(t.text for t in translations)
    print("killed at, export left, exit code:", seen)
    # Killed before either graph was written, the old export stays; killed once the new one is in, it stays.
    assert seen[0][1] == "old" and seen[4][1] == "new"
    export_onnx(run)
    assert _state(folder, old, new) == "new" and [p.name for p in folder.parent.iterdir()] == ["onnx"]
