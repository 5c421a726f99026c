"""`nmt import` on hostile or broken Marian folders, and racing other writers of its run directory.

Each broken input is one edit of a small Marian folder (test_pretrained.build_marian): the import exits 2 with
one `error:` line naming what is wrong, no traceback, and leaves no run directory. Imports into one folder at
once, and a run copied into the folder while an import works, end with one run, never a replaced one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from toy import toy_config_dict, write_config
from typer.testing import CliRunner

from nmt.cli import app
from nmt.config import ModelConfig
from nmt.fileio import sha256_of
from nmt.models import build_model
from nmt.runs.checkpoint import checkpoint_meta, latest_intact, verify, write_checkpoint
from nmt.runs.lock import lock_run
from nmt.runs.rundir import RunDir

pytest.importorskip("transformers")
from test_pretrained import build_marian  # noqa: E402

NMT = [sys.executable, "-m", "nmt"]
SHARED = "model.shared.weight"


@pytest.fixture(scope="module")
def marian(tmp_path_factory) -> Path:
    """A Marian folder (shared vocabulary of 87 pieces, 2+2 layers of 32) and unrelated files beside its own."""
    folder = tmp_path_factory.mktemp("marian") / "marian"
    build_marian(folder, shared=True, calibrate=False)
    (folder / "README.md").write_text("an unrelated file\n")
    return folder


@pytest.fixture
def broken(marian, tmp_path) -> Path:
    return Path(shutil.copytree(marian, tmp_path / "broken"))


def import_in_process(folder: Path, run: Path):
    return CliRunner().invoke(app, ["import", "--hf", str(folder), "--run-dir", str(run)])


def refusal(folder: Path, run: Path) -> str:
    """The one line `nmt import` refuses `folder` with (exit 2, no traceback, no run directory left)."""
    result = import_in_process(folder, run)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert not run.exists()
    return lines[0].removeprefix("error: ")


def edit_json(name: str, **changes: object) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        raw = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**raw, **changes}))
    return edit


def edit_weights(change: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        tensors = load_file(str(folder / "model.safetensors"))
        change(tensors)
        save_file(tensors, str(folder / "model.safetensors"))
    return edit


def set_tensor(name: str, value: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Path], None]:
    return edit_weights(lambda tensors: tensors.__setitem__(name, value(tensors[name])))


def as_pytorch_bin(make: Callable[[dict[str, torch.Tensor]], object]) -> Callable[[Path], None]:
    """The weights as pytorch_model.bin holding `make(tensors)` instead of model.safetensors."""
    def edit(folder: Path) -> None:
        tensors = load_file(str(folder / "model.safetensors"))
        (folder / "model.safetensors").unlink()
        torch.save(make(tensors), folder / "pytorch_model.bin")
    return edit


def sharded(shard: str) -> Callable[[Path], None]:
    """model.safetensors.index.json naming `shard` for every tensor; the weights moved to ../outside.safetensors
    (a file outside the folder that a shard path may try to reach)."""
    def edit(folder: Path) -> None:
        names = list(load_file(str(folder / "model.safetensors")))
        os.replace(folder / "model.safetensors", folder.parent / "outside.safetensors")
        index = {"metadata": {}, "weight_map": {name: shard for name in names}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return edit


def vocab_id(piece: str, value: int) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        vocab = json.loads((folder / "vocab.json").read_text())
        vocab[piece] = value
        (folder / "vocab.json").write_text(json.dumps(vocab))
    return edit


def then(*edits: Callable[[Path], None]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        for one in edits:
            one(folder)
    return edit


def write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(data)


def sparse(name: str, size: int) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        with open(folder / name, "r+b") as handle:
            handle.truncate(size)
    return edit


FC1 = "model.encoder.layers.0.fc1.weight"
CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    # config.json: sizes bounded before any allocation, types as transformers writes them, ids in the vocabulary
    "huge d_model": (edit_json("config.json", d_model=1 << 30),
                     "parameters (d_model 1073741824, ffn 64, 64 positions, vocabulary 87): more than the "
                     "4,294,967,296 an import accepts"),
    "huge feed-forward": (edit_json("config.json", encoder_ffn_dim=1 << 40, decoder_ffn_dim=1 << 40),
                          "more than the 4,294,967,296 an import accepts"),
    "huge positions": (edit_json("config.json", max_position_embeddings=1 << 40),
                       "more than the 4,294,967,296 an import accepts"),
    "many layers": (edit_json("config.json", encoder_layers=10**7),
                    "config.json: encoder_layers: Input should be less than or equal to 64 (got 10000000)"),
    "pad id outside": (edit_json("config.json", pad_token_id=87, decoder_start_token_id=None),
                       "config.json: pad_token_id 87 is outside the vocabulary (87 ids: 0 to 86)"),
    "string eos": (edit_json("config.json", eos_token_id="0"),
                   "config.json: eos_token_id: Input should be a valid integer (got '0')"),
    "eos -1": (edit_json("config.json", eos_token_id=-1),
               "config.json: eos_token_id: Input should be greater than or equal to 0 (got -1)"),
    "eos is pad": (edit_json("config.json", eos_token_id=86),
                   "config.json: eos_token_id 86 is also the pad_token_id: the end of a sentence needs an id of its "
                   "own"),
    "string size": (edit_json("config.json", d_model="32"),
                    "config.json: d_model: Input should be a valid integer (got '32')"),
    "2 GB config": (sparse("config.json", 2 << 30),
                    "config.json: more than the 1,048,576 bytes a file of its kind may hold (2,147,483,648)"),
    "config a list": (write("config.json", b"[1, 2]"), "config.json: not a JSON object"),
    # generation_config.json
    "num_beams a string": (edit_json("generation_config.json", num_beams="four"),
                           "generation_config.json: num_beams: Input should be a valid integer (got 'four')"),
    "negative length penalty": (edit_json("generation_config.json", length_penalty=-1.0),
                                "generation_config.json: length_penalty: Input should be greater than or equal to 0 "
                                "(got -1.0)"),
    "generation eos differs": (edit_json("generation_config.json", eos_token_id=5),
                               "generation_config.json: eos_token_id 5 is not config.json's 0: the import decodes "
                               "with one set of special ids"),
    # vocabularies and SentencePiece models
    "negative vocab id": (vocab_id("<unk>", -1),
                          "vocab.json: piece '<unk>' has id -1, outside the model's 87 rows (0 to 86)"),
    "repeated vocab id": (vocab_id("<unk>", 0), "vocab.json: pieces '</s>' and '<unk>' both have id 0"),
    "empty source.spm": (write("source.spm", b""),
                         "source.spm: not a SentencePiece model (the file is empty)"),
    "garbage target.spm": (write("target.spm", b"\x00not a model" * 10),
                           "target.spm: not a SentencePiece model (it does not load: "),
    # weights
    "transposed weight": (set_tensor(FC1, lambda t: t.T.contiguous()),
                          f"model.safetensors: {FC1} has shape [32, 64], where config.json implies [64, 32]"),
    "too few embedding rows": (set_tensor(SHARED, lambda t: t[:80].contiguous()),
                               f"model.safetensors: {SHARED} has shape [80, 32], where config.json implies [87, 32]"),
    "scalar final_logits_bias": (set_tensor("final_logits_bias", lambda t: torch.tensor(0.5)),
                                 "model.safetensors: final_logits_bias has shape [], where config.json implies "
                                 "[1, 87]"),
    "integer weights": (set_tensor(FC1, lambda t: t.long()),
                        f"model.safetensors: {FC1} holds int64 values: weights must be floating point (they are "
                        "not cast)"),
    "weights larger than the model": (set_tensor("final_logits_bias", lambda t: torch.zeros(1 << 20)),
                                      "bytes the weights of the model of config.json take at most, in float64"),
    "boolean weights": (set_tensor(FC1, lambda t: t > 0), f"{FC1} holds bool values"),
    "nested dict in pytorch_model.bin": (as_pytorch_bin(lambda tensors: {"model": tensors}),
                                         "pytorch_model.bin: 'model' is a dict, not a tensor: the weights must map "
                                         "names to tensors"),
    "pickled code in pytorch_model.bin": (as_pytorch_bin(lambda tensors: {**tensors, "code": Path}),
                                          "pytorch_model.bin: cannot read the weights safely: not plain tensors "
                                          "(damaged, or pickled objects, which nmt never unpickles); convert them to "
                                          "model.safetensors"),
    "index not JSON": (then(sharded("x"), write("model.safetensors.index.json", b"{")),
                       "model.safetensors.index.json: not JSON (Expecting property name enclosed in double quotes"),
    "index weight_map a list": (then(sharded("x"), write("model.safetensors.index.json", b'{"weight_map": []}')),
                                "model.safetensors.index.json: expected a 'weight_map' object mapping tensor names to "
                                "shard file names"),
    "shard ../": (sharded("../outside.safetensors"),
                  "model.safetensors.index.json: shard '../outside.safetensors' is not the name of a file in the "
                  "folder (no folders, '..' or absolute paths)"),
    "shard in a subfolder that escapes": (then(sharded("sub/../../outside.safetensors"),
                                               lambda folder: (folder / "sub").mkdir()),
                                          "is not the name of a file in"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_broken_marian_folder_is_refused_in_one_line(broken, tmp_path, case):
    edit, expected = CASES[case]
    edit(broken)
    line = refusal(broken, tmp_path / "run")
    assert line.startswith(str(broken)) and expected in line, line
    assert "weights_only" not in line


def test_a_shard_given_by_absolute_path_is_refused(broken, tmp_path):
    outside = broken.parent / "outside.safetensors"
    sharded(str(outside))(broken)
    assert outside.is_file()
    assert "is not the name of a file in the folder" in refusal(broken, tmp_path / "run")


def test_the_provenance_hashes_exactly_the_files_read(broken, tmp_path):
    """Unrelated files (a README, SentencePiece's .vocab files, a big file) are neither read nor hashed; the
    shards of an index are, with the index."""
    with open(broken / "unrelated.bin", "wb") as handle:
        handle.truncate(1 << 30)  # sparse: a hash would still read a gigabyte
    result = import_in_process(broken, tmp_path / "run")
    assert result.exit_code == 0, result.output
    origin = json.loads((tmp_path / "run" / "checkpoints" / "step-00000000" / "meta.json").read_text())
    read = {"config.json", "generation_config.json", "vocab.json", "source.spm", "target.spm", "model.safetensors",
            "tokenizer_config.json"}
    assert origin["imported_from"]["sha256"] == {name: sha256_of(broken / name) for name in read}

    shard = "model-00001-of-00001.safetensors"
    sharded(shard)(broken)
    os.replace(broken.parent / "outside.safetensors", broken / shard)
    result = import_in_process(broken, tmp_path / "sharded")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "sharded" / "checkpoints" / "step-00000000" / "meta.json").read_text())
    assert set(meta["imported_from"]["sha256"]) == read - {"model.safetensors"} | {"model.safetensors.index.json",
                                                                                   shard}
    weights = [load_file(str(tmp_path / run / "checkpoints" / "step-00000000" / "model.safetensors"))
               for run in ("run", "sharded")]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_a_config_as_opus_mt_writes_it_imports(broken, tmp_path):
    """OPUS-MT's config.json carries keys of BART's era (static_position_embeddings true, which Marian's
    positions are), generation settings and labels; its generation_config.json repeats the special ids."""
    edit_json("config.json", static_position_embeddings=True, normalize_before=False, add_final_layer_norm=False,
              bos_token_id=0, bad_words_ids=[[86]], num_beams=4, max_length=512, id2label={"0": "LABEL_0"},
              classif_dropout=0.0)(broken)
    edit_json("generation_config.json", bad_words_ids=[[86]], bos_token_id=0, decoder_start_token_id=86,
              eos_token_id=0, forced_eos_token_id=0, max_length=512, num_beams=4, pad_token_id=86,
              renormalize_logits=True)(broken)
    result = import_in_process(broken, tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "beam_size: 4" in (tmp_path / "run" / "config.yaml").read_text()


def test_an_import_is_refused_while_another_writer_holds_the_run(marian, tmp_path):
    """The lock is flock on RUN/.lock: another open file in this process conflicts as another process's would."""
    run = RunDir(tmp_path / "run")
    held = lock_run(run)
    try:
        result = import_in_process(marian, run.path)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
        assert f"is being written by nmt train, pid {os.getpid()} on " in result.stderr
        assert result.stderr.strip().endswith("one writer at a time per run directory; choose another --run-dir")
        assert [p.name for p in run.path.iterdir()] == [".lock"]
    finally:
        held.release()


def grown(marian: Path, folder: Path, rows: int) -> Path:
    """`marian` with `rows` vocabulary entries (fillers after its own): an import that takes a while."""
    shutil.copytree(marian, folder)
    vocab = json.loads((folder / "vocab.json").read_text())
    vocab.update({f"▁filler{i}": i for i in range(len(vocab), rows)})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": rows, "decoder_vocab_size": rows}))
    tensors = load_file(str(folder / "model.safetensors"))
    extra = rows - tensors[SHARED].shape[0]
    tensors[SHARED] = torch.cat([tensors[SHARED], torch.randn(extra, tensors[SHARED].shape[1])])
    tensors["final_logits_bias"] = torch.cat([tensors["final_logits_bias"], torch.zeros(1, extra)], dim=1)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def slow_marian(marian, tmp_path_factory) -> Path:
    return grown(marian, tmp_path_factory.mktemp("slow") / "marian", 50_000)


def nmt_import(folder: Path, run: Path) -> subprocess.Popen:
    return subprocess.Popen([*NMT, "import", "--hf", str(folder), "--run-dir", str(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def one_line_refusal(code: int, stderr: str) -> bool:
    lines = stderr.strip().splitlines()
    return code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr


@pytest.mark.slow  # real processes or big files: seconds
def test_imports_racing_into_one_folder_leave_one_run(slow_marian, tmp_path):
    """Two real `nmt import` processes into one folder at once: exactly one imports, the other is refused in one
    line (the run is being written, or exists), and the run is whole."""
    run = tmp_path / "run"
    racers = [nmt_import(slow_marian, run) for _ in range(2)]
    outcomes = [(racer.wait(timeout=300), racer.communicate()[1]) for racer in racers]
    assert sorted(code for code, _ in outcomes) == [0, 2], outcomes
    for code, stderr in outcomes:
        assert code == 0 or one_line_refusal(code, stderr), stderr
        assert code == 0 or any(reason in stderr for reason in ("is being written by nmt import, pid",
                                                                  "exists and is not empty",
                                                                  "written by another process during the import"))
    checkpoint = latest_intact(RunDir(run))
    assert checkpoint is not None and checkpoint.step == 0
    verify(checkpoint.files)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]  # no staging folder left


@pytest.mark.slow  # real processes or big files: seconds
def test_a_run_copied_in_while_an_import_works_is_never_replaced(slow_marian, tmp_path):
    """A real import, stopped (SIGSTOP) once it holds RUN/.lock: a trained run's checkpoint is written into RUN
    without the lock (a copy), and `nmt train` on RUN is refused naming the import (its CLI in this process: flock
    conflicts between two open files as between two processes). Let go, the import finds the
    run before its rename and is refused in one line; the checkpoint is as written."""
    config = write_config(tmp_path, toy_config_dict(tmp_path))  # its run_dir is tmp_path / "run"
    run = RunDir(tmp_path / "run")
    importer = nmt_import(slow_marian, run.path)
    try:
        deadline = time.monotonic() + 120
        while f"nmt import, pid {importer.pid} on " not in (run.lock_path.read_text() if run.lock_path.exists()
                                                            else ""):
            assert time.monotonic() < deadline and importer.poll() is None, importer.communicate()
            time.sleep(0.005)
        importer.send_signal(signal.SIGSTOP)
        model = build_model(ModelConfig(embed_dim=8), 12, 12)
        write_checkpoint(run, run.checkpoint(400), model.state_dict(), {},
                         checkpoint_meta(400, 3, model, ModelConfig(embed_dim=8), {"dev_bleu": 12.5}))
        written = {p.name: sha256_of(p) for p in run.checkpoint(400).folder.iterdir()}
        trainer = CliRunner().invoke(app, ["train", "--config", str(config)])
        assert one_line_refusal(trainer.exit_code, trainer.stderr), trainer.output
        assert f"is being written by nmt import, pid {importer.pid} on " in trainer.stderr
    finally:
        importer.send_signal(signal.SIGCONT)
    code = importer.wait(timeout=300)
    stderr = importer.communicate()[1]
    assert one_line_refusal(code, stderr), stderr
    assert "written by another process during the import (checkpoints)" in stderr or \
        "exists and is not empty (checkpoints)" in stderr, stderr
    assert {p.name: sha256_of(p) for p in run.checkpoint(400).folder.iterdir()} == written
    assert [p.name for p in run.path.iterdir()] == ["checkpoints"] and not (run.path / "config.yaml").exists()


def test_the_size_cap_admits_opus_mt_big():
    """The cap is far above real Marian models: a 12+12 layer OPUS-MT big shape (tc-big has 6+6) is well within
    it, counted with every embedding matrix apart."""
    from nmt.runs.marian_files import MAX_PARAMETERS, HFConfig

    big = HFConfig(model_type="marian", d_model=1024, encoder_attention_heads=16, decoder_attention_heads=16,
                   encoder_ffn_dim=4096, decoder_ffn_dim=4096, encoder_layers=12, decoder_layers=12,
                   max_position_embeddings=1024, vocab_size=60_000, pad_token_id=59_999, eos_token_id=0)
    assert big.most_parameters() < MAX_PARAMETERS / 4
