"""Starting from a pretrained model: tiny random-weight MarianMTModels built with transformers (shared and
separate vocabularies, SentencePiece models trained on a few lines) are imported with `nmt import`; our logits,
token ids, greedy and beam outputs must equal transformers' own. Then the imported run is used as any other:
`nmt attention`, the served API, and fine-tuning from it with `nmt train --init-from`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

from nmt.data.batching import collate  # noqa: E402
from nmt.inference.translate import Translator  # noqa: E402
from nmt.runs.loading import load_model  # noqa: E402
from nmt.runs.marian import read_marian  # noqa: E402

NMT = shutil.which("nmt") or str(Path(sys.executable).parent / "nmt")
EN = ["the cat sits on the mat", "a dog runs in the park", "two people walk along the river",
      "the children play with a red ball", "an old man reads a book", "she drinks coffee every morning",
      "we went to the market yesterday", "the train leaves at noon", "my brother plays the guitar",
      "it is raining in the city"]
DE = ["die katze sitzt auf der matte", "ein hund läuft im park", "zwei leute gehen am fluss entlang",
      "die kinder spielen mit einem roten ball", "ein alter mann liest ein buch", "sie trinkt jeden morgen kaffee",
      "wir gingen gestern zum markt", "der zug fährt mittags ab", "mein bruder spielt gitarre",
      "es regnet in der stadt"]
PROBES = ["the cat plays in the park", "a red train", "zebra xylophone quietly", "my old dog reads"]
SOURCES = PROBES + EN
MAX_NEW = 12
EOS_BIASES = [0.5 * i for i in range(13)]  # tried on EOS's logit bias (_calibrate_eos)
LOGIT_TOLERANCE = 1e-4
INIT_STD = 0.3  # wide enough that logits differ by several nats (a comparison that can fail)


def _train_spm(lines: list[str], path: Path) -> list[str]:
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines * 3), model_prefix=str(path.with_suffix("")),
                                   vocab_size=60, minloglevel=2, hard_vocab_limit=False)
    path.with_suffix(".model").rename(path)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not (sp.is_control(i) or sp.is_unknown(i))]


def _vocab(pieces: list[str], size: int | None = None) -> dict[str, int]:
    """Marian's layout: </s> 0, <unk> 1, the pieces, <pad> last (at `size` - 1 when given)."""
    vocab = {"</s>": 0, "<unk>": 1}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    if size is not None:
        while len(vocab) < size - 1:
            vocab[f"▁filler{len(vocab)}"] = len(vocab)
    vocab["<pad>"] = len(vocab)
    return vocab


def build_marian(folder: Path, shared: bool, seed: int = 0, calibrate: bool = True) -> transformers.MarianMTModel:
    """A random-weight MarianMTModel saved as OPUS-MT models are: config, weights, two SentencePiece models and
    the vocabularies (vocab.json, and target_vocab.json when the vocabularies are separate). `calibrate`: with
    translations that end mid-way (what comparing searches needs; seconds)."""
    folder.mkdir(parents=True)
    src_pieces = _train_spm(EN, folder / "source.spm")
    tgt_pieces = _train_spm(DE, folder / "target.spm")
    if shared:
        src_vocab = tgt_vocab = _vocab(src_pieces + tgt_pieces)
    else:  # both sides' pad at one id (config.pad_token_id); the target side is the larger here
        tgt_vocab = _vocab(tgt_pieces + ["▁extra", "▁more"])
        src_vocab = _vocab(src_pieces, len(tgt_vocab))
        (folder / "target_vocab.json").write_text(json.dumps(tgt_vocab))
    (folder / "vocab.json").write_text(json.dumps(src_vocab))
    pad = src_vocab["<pad>"]
    assert tgt_vocab["<pad>"] == pad
    config = transformers.MarianConfig(
        vocab_size=len(src_vocab), decoder_vocab_size=len(tgt_vocab), d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_position_embeddings=64, activation_function="swish", scale_embedding=True, pad_token_id=pad,
        decoder_start_token_id=pad, eos_token_id=0, forced_eos_token_id=0, share_encoder_decoder_embeddings=shared,
        init_std=INIT_STD)
    torch.manual_seed(seed)
    model = transformers.MarianMTModel(config).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_(0.0, 0.5)  # a bias worth importing
        if calibrate:
            _calibrate_eos(model, transformers.MarianTokenizer.from_pretrained(folder))
    model.save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"separate_vocabs": not shared, "source_lang": "en",
                                                              "target_lang": "de"}))
    return model


def _calibrate_eos(model: transformers.MarianMTModel, tokenizer: transformers.MarianTokenizer) -> None:
    """Raise EOS's logit bias to where the most greedy translations of SOURCES end at EOS after a few tokens:
    random weights otherwise repeat one token to the length limit, or end at once, and the comparison of
    searches would never see a hypothesis end mid-way."""
    inputs = tokenizer(SOURCES, return_tensors="pt", padding=True)
    pad, base = model.config.pad_token_id, float(model.final_logits_bias[0, 0])

    def mid_way(bias: float) -> int:
        model.final_logits_bias[0, 0] = base + bias
        out = model.generate(**inputs, max_new_tokens=MAX_NEW, forced_eos_token_id=None, bad_words_ids=[[pad]])
        return sum(0 < len([t for t in row[1:] if t not in (pad, 0)]) < MAX_NEW for row in out.tolist())

    best = max(EOS_BIASES, key=mid_way)
    model.final_logits_bias[0, 0] = base + best


def nmt(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([NMT, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module", params=["shared", "separate"])
def imported(request, tmp_path_factory):
    """(transformers model, MarianTokenizer, Marian folder, imported run) for each vocabulary layout."""
    root = tmp_path_factory.mktemp(request.param)
    model = build_marian(root / "marian", shared=request.param == "shared")
    result = nmt("import", "--hf", root / "marian", "--run-dir", root / "run")
    assert result.returncode == 0, result.stderr
    assert "transformer 2+2x32, 4 heads" in result.stdout
    with pytest.warns(UserWarning, match="sacremoses") if not _has_sacremoses() else _nothing():
        tokenizer = transformers.MarianTokenizer.from_pretrained(root / "marian")
    return model, tokenizer, root / "marian", root / "run"


def _has_sacremoses() -> bool:
    try:
        import sacremoses  # noqa: F401
    except ImportError:
        return False
    return True


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_the_run_records_marians_architecture_and_origin(imported):
    _, _, folder, run = imported
    loaded = load_model(run)
    t = loaded.config.model.transformer
    assert (t.norm, t.positions, t.activation, t.scale_embeddings, t.final_logits_bias) == (
        "post", "sinusoidal_halves", "silu", True, True)
    assert t.tie == ("all" if folder.parent.name.startswith("shared") else "decoder")
    origin = loaded.checkpoint.meta["imported_from"]
    assert origin["format"] == "marian" and origin["source"] == str(folder)
    assert set(origin["sha256"]) >= {"config.json", "model.safetensors", "source.spm", "target.spm", "vocab.json"}


def test_token_ids_are_marian_tokenizers(imported):
    """Our ids, mapped back through the import's id table, are MarianTokenizer's, source and target side."""
    _, tokenizer, folder, run = imported
    loaded, marian = load_model(run), read_marian(folder)
    src_back = {ours: theirs for theirs, ours in marian.src.ours().items()}
    tgt_back = {ours: theirs for theirs, ours in marian.tgt.ours().items()}
    lines = PROBES + EN[:3]
    assert [[src_back[i] for i in ids] for ids in loaded.tokenizer.encode_src(lines)] == \
        tokenizer(lines)["input_ids"]
    unknown = "zebra ünknown ★"  # a piece outside the vocabulary is UNK on both sides
    targets = DE[:3] + [unknown]
    theirs = tokenizer(text_target=targets)["input_ids"]
    assert [[tgt_back[i] for i in ids] for ids in loaded.tokenizer.encode_tgt(targets)] == [t[:-1] for t in theirs]
    decoded = [loaded.tokenizer.decode_tgt(ids) for ids in loaded.tokenizer.encode_tgt(DE[:3])]
    assert decoded == tokenizer.batch_decode([t[:-1] for t in theirs[:3]], skip_special_tokens=True) == DE[:3]


def _marian_inputs(loaded, marian, model, src_ids, tgt_in):
    back_src = {ours: theirs for theirs, ours in marian.src.ours().items()}
    back_tgt = {ours: theirs for theirs, ours in marian.tgt.ours().items()}
    pad = model.config.pad_token_id
    src = torch.tensor([[back_src.get(int(i), pad) for i in row] for row in src_ids])
    tgt = torch.tensor([[back_tgt.get(int(i), pad) for i in row] for row in tgt_in])
    return src, tgt


def test_logits_equal_transformers_within_tolerance(imported):
    """Teacher-forced logits on the same sentences (a padded batch) agree within 1e-4 on every real position;
    so do the log-probabilities: the PAD row Marian lacks takes no probability."""
    model, _, folder, run = imported
    loaded, marian = load_model(run), read_marian(folder)
    src = loaded.tokenizer.encode_src(PROBES)
    batch = collate(src, loaded.tokenizer.encode_tgt(DE[:4]), list(range(4)))
    with torch.no_grad():
        ours = loaded.model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in)
        marian_src, marian_tgt = _marian_inputs(loaded, marian, model, batch.src, batch.tgt_in)
        theirs = model(input_ids=marian_src, attention_mask=batch.src_mask.long(),
                       decoder_input_ids=marian_tgt).logits
    columns = torch.tensor([marian.tgt.ours()[i] for i in range(theirs.shape[-1])])
    real = batch.tgt_out != 0  # the positions that predict a token (EOS included)
    logit_gap = (ours[..., columns] - theirs).abs()[real].max().item()
    log_prob_gap = (ours.log_softmax(-1)[..., columns] - theirs.log_softmax(-1)).abs()[real].max().item()
    assert logit_gap < LOGIT_TOLERANCE and log_prob_gap < LOGIT_TOLERANCE, (logit_gap, log_prob_gap)
    assert theirs[real].std() > 0.5  # the comparison is not between near-constant logits


@pytest.mark.parametrize("beams", [1, 4])
def test_greedy_and_beam_equal_generate(imported, beams):
    """`nmt translate`'s search against transformers' generate on the same model: the same ids. Conventions
    set to match: no length normalization (our GNMT alpha 0, their length_penalty 0), beam search done when
    `beams` hypotheses ended (their early_stopping=True), no forced EOS at the length limit, pad banned (as
    OPUS-MT's generation_config.json does; our search never emits BOS or PAD)."""
    model, tokenizer, folder, run = imported
    marian = read_marian(folder)
    loaded = load_model(run, overrides=["decoding.max_ratio=0.01", f"decoding.max_extra={MAX_NEW}",
                                        "decoding.length_penalty=0"])
    translator = Translator.for_run(loaded)
    found = translator.search_ids(loaded.tokenizer.encode_src(SOURCES), beams)
    inputs = tokenizer(SOURCES, return_tensors="pt", padding=True)
    pad = model.config.pad_token_id
    beam_settings = {"length_penalty": 0.0, "early_stopping": True} if beams > 1 else {}
    generated = model.generate(**inputs, num_beams=beams, do_sample=False, max_new_tokens=MAX_NEW,
                               forced_eos_token_id=None, bad_words_ids=[[pad]], **beam_settings)
    back = {ours: theirs for theirs, ours in marian.tgt.ours().items()}
    ours = [[back[t] for t in hyps[0].tokens] for hyps in found]
    theirs = [[t for t in row[1:] if t not in (pad, 0)] for row in generated.tolist()]
    assert ours == theirs
    assert any(len(t) < MAX_NEW for t in ours) and any(len(t) == MAX_NEW for t in ours), ours  # EOS and limit
    assert beams > 1 or any(0 < len(t) < MAX_NEW for t in ours), ours  # greedy ends at EOS after some tokens
    texts = [t.text for t in translator.translate(SOURCES, beam_size=beams)]
    assert texts == tokenizer.batch_decode(generated, skip_special_tokens=True)


@pytest.mark.slow  # subprocesses of the CLI: seconds each
def test_missing_files_and_unsupported_architectures_are_one_line_errors(tmp_path):
    build_marian(tmp_path / "marian", shared=True)
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "marian", broken)
    (broken / "target.spm").unlink()
    result = nmt("import", "--hf", broken, "--run-dir", tmp_path / "run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {broken / 'target.spm'}: missing (the SentencePiece "
                                                  "model of the target side)"]
    assert not (tmp_path / "run").exists()
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "bart"}))
    result = nmt("import", "--hf", broken, "--run-dir", tmp_path / "run")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "model_type 'bart' is not supported" in result.stderr
    (broken / "config.json").write_text(json.dumps({**config, "activation_function": "gelu_new"}))
    result = nmt("import", "--hf", broken, "--run-dir", tmp_path / "run")
    assert result.returncode == 2 and "activation_function 'gelu_new' is not supported" in result.stderr
    assert nmt("import", "--hf", tmp_path / "marian", "--run-dir", tmp_path / "run").returncode == 0
    again = nmt("import", "--hf", tmp_path / "marian", "--run-dir", tmp_path / "run")
    assert again.returncode == 2 and "exists and is not empty" in again.stderr
    pickled = tmp_path / "pickled"  # weights as a pickle that runs code when unpickled: refused, in one line
    shutil.copytree(tmp_path / "marian", pickled)
    for weights in pickled.glob("model*.safetensors*"):
        weights.unlink()
    torch.save({"model.shared.weight": torch.zeros(2), "code": Path}, pickled / "pytorch_model.bin")
    result = nmt("import", "--hf", pickled, "--run-dir", tmp_path / "run_pickled")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "cannot read the weights safely" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run_pickled").exists()


@pytest.mark.slow  # subprocesses of the CLI: seconds each
def test_attention_command_and_the_served_api_work_on_an_imported_run(imported, tmp_path):
    """`nmt attention` and the FastAPI app serve the imported run as any trained one: the served translation is
    `nmt translate`'s, and the attention rows are distributions over the source pieces of MarianTokenizer."""
    from fastapi.testclient import TestClient

    from nmt.serve.server import Limits, create_app
    from nmt.serve.service import ModelRegistry

    _, tokenizer, _, run = imported
    sentence = PROBES[0]
    result = nmt("attention", "--model", run, sentence, "--output-dir", tmp_path / "att", "--kind", "encoder",
                 "--layer", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{sentence}\n-> ") and "mean ± std" in result.stdout
    assert len(list((tmp_path / "att").glob("*.png"))) == len(list((tmp_path / "att").glob("*.html"))) == 1
    expected = nmt("translate", "--model", run, sentence)
    assert expected.returncode == 0, expected.stderr

    registry = ModelRegistry.load([("marian", run)])
    with TestClient(create_app(registry, Limits(max_texts=8, batch_wait_ms=1))) as client:
        served = client.post("/translate", json={"text": [sentence], "model": "marian"})
        assert served.status_code == 200, served.text
        assert served.json()["translations"][0]["text"] + "\n" == expected.stdout
        grid = client.post("/attention", json={"text": sentence, "model": "marian"}).json()
        assert grid["col_tokens"] == tokenizer.tokenize(sentence) + ["</s>"]  # Marian's pieces, EOS as it writes it
        rows = torch.tensor(grid["weights"])
        torch.testing.assert_close(rows.sum(dim=1), torch.ones(rows.shape[0]), atol=1e-5, rtol=0)
        models = {m["name"]: m for m in client.get("/models").json()}
        assert models["marian"]["layers"] == 2 and models["marian"]["heads"] == 4


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """An imported run (shared vocabulary) to fine-tune from."""
    root = tmp_path_factory.mktemp("pretrained")
    build_marian(root / "marian", shared=True)
    result = nmt("import", "--hf", root / "marian", "--run-dir", root / "run")
    assert result.returncode == 0, result.stderr
    return root / "run"


def fine_tune_config(root: Path, **training: object) -> Path:
    """A German corpus to fine-tune on (the tiny one above, in both splits); no model or tokenizer section."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    (root / "train.en").write_text("".join(line + "\n" for line in EN), encoding="utf-8")
    (root / "train.de").write_text("".join(line + "\n" for line in DE), encoding="utf-8")
    split = {"format": "text", "src": str(root / "train.en"), "tgt": str(root / "train.de")}
    raw = {"name": "finetune", "run_dir": str(root / "run"), "seed": 5,
           "data": {"src_lang": "en", "tgt_lang": "de", "cache_dir": str(root / "cache"), "train": split,
                    "dev": dict(split), "clean": {"unicode_normalization": "none"}},
           "training": {"batch_tokens": 120, "lr": 1e-3, "max_steps": 6, "validate_every": 3, "log_every": 1,
                        **training},
           "decoding": {"max_extra": 4, "max_ratio": 0.5}}
    path = root / "finetune.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def _weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from nmt.runs.checkpoint import find_checkpoint
    from nmt.runs.rundir import RunDir

    return load_file(str(find_checkpoint(RunDir(run), which).files.weights))


def test_fine_tuning_starts_from_the_imported_weights_and_resumes_exactly(pretrained, tmp_path):
    from nmt.config import load_config
    from nmt.runs.rundir import RunDir
    from nmt.training.init_from import with_init_from
    from nmt.training.recipe import train

    # One step at a negligible learning rate leaves the imported weights (Adam moves each by about lr).
    still = train(with_init_from(load_config(fine_tune_config(tmp_path / "still", lr=1e-9, max_steps=1)),
                                 pretrained), show_progress=False)
    before, after = _weights(pretrained), _weights(still.run_dir)
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name], atol=1e-6, rtol=0)
    saved = load_config(RunDir(still.run_dir).config_path, check_files=False)
    assert saved.training.init_from is not None and saved.training.init_from.run == str(pretrained)
    assert saved.training.init_from.checkpoint == "step-00000000"
    assert saved.model == load_model(pretrained).config.model  # the imported model, not the config's default
    assert (RunDir(still.run_dir).vocab_path).read_text() == RunDir(pretrained).vocab_path.read_text()

    straight = train(with_init_from(load_config(fine_tune_config(tmp_path / "a", max_steps=6)), pretrained),
                     show_progress=False)
    path = fine_tune_config(tmp_path / "b", max_steps=3)
    source = tmp_path / "source"  # a copy of the imported run, gone before the resume: the run resumes on its own
    shutil.copytree(pretrained, source)
    train(with_init_from(load_config(path), source), show_progress=False)
    shutil.rmtree(source)
    resumed = train(with_init_from(load_config(path, ["training.max_steps=6"]), source), resume=True,
                    show_progress=False)
    assert straight.steps == resumed.steps == 6
    losses = [{r["step"]: r["loss"] for r in RunDir(run).metrics() if "loss" in r}
              for run in (straight.run_dir, resumed.run_dir)]
    assert losses[0] == losses[1] and len(losses[0]) == 6
    a, b = _weights(straight.run_dir), _weights(resumed.run_dir)
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert not torch.equal(a["tgt_embed.weight"], before["tgt_embed.weight"])  # it did train


def test_a_dropout_only_override_fine_tunes_the_runs_model_and_nothing_else_is_accepted(pretrained, tmp_path):
    """`--set model.transformer.dropout=0.3` with --init-from used to be refused: the rest of the model fell back
    to the defaults (d_model 256, relu, ...), which differ from the run's."""
    from nmt.config import load_config
    from nmt.errors import ConfigError
    from nmt.runs.loading import load_run_config
    from nmt.runs.rundir import RunDir
    from nmt.training.init_from import with_init_from
    from nmt.training.recipe import train

    path = fine_tune_config(tmp_path / "dropout", max_steps=1)
    result = train(with_init_from(load_config(path, ["model.transformer.dropout=0.3"]), pretrained),
                   show_progress=False)
    source = load_run_config(RunDir(pretrained)).model
    saved = load_config(RunDir(result.run_dir).config_path, check_files=False).model
    assert saved.transformer.dropout == 0.3 != source.transformer.dropout
    assert saved == source.model_copy(update={"transformer": saved.transformer}) and \
        saved.transformer.model_copy(update={"dropout": source.transformer.dropout}) == source.transformer
    wider = with_init_from(load_config(fine_tune_config(tmp_path / "wider", max_steps=1),
                                       ["model.transformer.dropout=0.3", "model.transformer.d_model=64"]), pretrained)
    with pytest.raises(ConfigError, match=r"model differs from the run's: model.transformer.d_model 32 -> 64 \("):
        train(wider, show_progress=False)  # only the key set is named, not every default
    assert not (tmp_path / "wider" / "run").exists()


def test_the_readme_vocab_extend_example_works_on_a_shared_vocabulary_import(pretrained, tmp_path):
    """`finetune.yaml` without a tokenizer section, as the README's: the imported run shares one vocabulary
    (tie: all), so the extended one is shared too (it used to need `tokenizer.joint: true`, and the error quoted
    the whole config)."""
    from nmt.config import load_config
    from nmt.errors import ConfigError
    from nmt.runs.rundir import RunDir
    from nmt.training.init_from import with_init_from
    from nmt.training.recipe import train

    path = fine_tune_config(tmp_path / "extend", max_steps=1)
    result = train(with_init_from(load_config(path), pretrained, "extend"), show_progress=False)
    saved = load_config(RunDir(result.run_dir).config_path, check_files=False)
    assert saved.tokenizer.joint and saved.model.transformer.tie == "all"
    old, new = (json.loads(RunDir(run).vocab_path.read_text()) for run in (pretrained, result.run_dir))
    assert new["src"] == new["tgt"] and new["src"][: len(old["src"])] == old["src"]
    assert len(new["src"]) > len(old["src"])
    separate = with_init_from(load_config(path, ["tokenizer.joint=false", f"run_dir={tmp_path / 'separate'}"]),
                              pretrained, "extend")
    with pytest.raises(ConfigError, match="tie all shares source and target embeddings: set tokenizer.joint: true$"):
        train(separate, show_progress=False)
    assert not (tmp_path / "separate").exists()


@pytest.mark.slow  # subprocesses of the CLI: seconds each
def test_another_vocabulary_is_refused_and_extend_maps_it(pretrained, tmp_path):
    from nmt.runs.rundir import RunDir

    path = fine_tune_config(tmp_path / "refused")
    raw = path.read_text() + "tokenizer:\n  vocab_size: 40\n  model_type: bpe\n  joint: true\n"
    path.write_text(raw, encoding="utf-8")
    refused = nmt("train", "--config", path, "--init-from", pretrained)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "another vocabulary than the run's" in refused.stderr
    assert "--vocab extend" in refused.stderr and not (tmp_path / "refused" / "run" / "checkpoints").exists()

    extended = nmt("train", "--config", path, "--init-from", pretrained, "--vocab", "extend", "--set",
                   "training.lr=1e-9", "--set", "training.max_steps=1")
    assert extended.returncode == 0, extended.stderr
    old = json.loads(RunDir(pretrained).vocab_path.read_text())
    new = json.loads(RunDir(tmp_path / "refused" / "run").vocab_path.read_text())
    for side in ("src", "tgt"):
        assert new[side][: len(old[side])] == old[side] and len(new[side]) > len(old[side])
    before, after = _weights(pretrained), _weights(tmp_path / "refused" / "run")
    rows = len(old["tgt"])
    assert after["tgt_embed.weight"].shape[0] == len(new["tgt"])
    torch.testing.assert_close(after["tgt_embed.weight"][:rows], before["tgt_embed.weight"], atol=1e-6, rtol=0)
    assert after["tgt_embed.weight"][rows:].abs().sum() > 0  # new pieces got rows of their own
    torch.testing.assert_close(after["encoder_layers.0.ff.inner.weight"], before["encoder_layers.0.ff.inner.weight"],
                               atol=1e-6, rtol=0)
    assert nmt("translate", "--model", tmp_path / "refused" / "run", EN[0]).returncode == 0


def test_a_ctranslate2_export_of_an_imported_run_decodes_as_pytorch(imported, tmp_path):
    """The export carries Marian's choices (SiLU, the logits bias, the sinusoid halves): CTranslate2's greedy
    ids equal ours on the same (random-weight) model."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from nmt.export.ctranslate2 import export_ctranslate2

    _, _, _, run = imported
    folder = export_ctranslate2(run, output=tmp_path / "ct2")
    loaded = load_model(run, overrides=["decoding.max_ratio=0.01", f"decoding.max_extra={MAX_NEW}"])
    translator = Translator.for_run(loaded)
    sources = translator.encode(SOURCES)
    ours = [hyps[0].tokens for hyps in translator.search_ids(sources, 1)]
    tokenizer = loaded.tokenizer
    found = ctranslate2.Translator(str(folder), device="cpu").translate_batch(
        [tokenizer.src_pieces(s) for s in sources], beam_size=1, max_decoding_length=MAX_NEW, min_decoding_length=0)
    ids = {piece: i for i, piece in enumerate(tokenizer.tgt_pieces(range(tokenizer.tgt_vocab_size)))}
    assert [[ids[p] for p in r.hypotheses[0]] for r in found] == ours


@pytest.mark.slow  # subprocesses of the CLI: seconds each
def test_evaluate_tune_analyze_int8_and_onnx_work_on_an_imported_run(imported, tmp_path):
    """The other commands on an imported run, which has no corpus of its own: given sentences (--src/--ref),
    the int8 model, and an ONNX export decoding as the checkpoint does."""
    run = imported[3]
    src, ref = tmp_path / "src.en", tmp_path / "ref.de"
    src.write_text("".join(s + "\n" for s in EN), encoding="utf-8")
    ref.write_text("".join(s + "\n" for s in DE), encoding="utf-8")
    for command in (["evaluate"], ["analyze"], ["tune", "--beams", "1,2", "--length-penalties", "0,1", "--dry-run"]):
        result = nmt(*command, "--model", run, "--src", src, "--ref", ref)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (command, result.stderr)
    plain = nmt("translate", "--model", run, "--input", src)
    int8 = nmt("translate", "--model", run, "--input", src, "--quantize", "int8")
    assert plain.returncode == int8.returncode == 0, int8.stderr
    assert len(int8.stdout.splitlines()) == len(EN)
    exported = nmt("export", "--model", run, "--format", "onnx")
    assert exported.returncode == 0, exported.stderr
    onnx = nmt("translate", "--model", run, "--input", src, "--runtime", "onnx")
    assert onnx.returncode == 0 and onnx.stdout == plain.stdout, onnx.stderr
