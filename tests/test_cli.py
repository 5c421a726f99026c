"""The CLI through its real entry point (the installed `nmt` console script)."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from toy import reverse_words

from nmt.runs.rundir import RunDir

NMT = shutil.which("nmt") or str(Path(sys.executable).parent / "nmt")


def run(*args, stdin: str | None = None, cwd=None):
    return subprocess.run([NMT, *map(str, args)], input=stdin, capture_output=True, text=True, cwd=cwd, timeout=300)


def test_help_lists_every_command_and_option():
    result = run("--help")
    assert result.returncode == 0
    for name in ("data", "train", "translate", "evaluate"):
        assert name in result.stdout
    result = run("translate", "--help")
    for option in ("--model", "--input", "--output", "--beam-size", "--n-best", "--checkpoint", "--config"):
        assert option in result.stdout
    as_module = subprocess.run([sys.executable, "-m", "nmt", "--help"], capture_output=True, text=True, timeout=300)
    assert as_module.returncode == 0 and "translate" in as_module.stdout  # what torchrun starts: -m nmt


def test_bad_config_is_one_line_exit_2_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntraining: {max_steps: -1}\n")
    result = run("data", "--config", bad)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "training.max_steps" in result.stderr and "data: Field required" in result.stderr
    assert all(line.startswith("error: ") for line in result.stderr.strip().splitlines())


def test_bad_override_and_missing_config(toy_config_path):
    result = run("data", "--config", toy_config_path, "--set", "model.attention.type=cosine")
    assert result.returncode == 2 and "model.attention.type" in result.stderr and "Traceback" not in result.stderr
    result = run("data", "--config", "does-not-exist.yaml")
    assert result.returncode == 2 and "config file not found" in result.stderr


def test_data_prints_statistics(toy_config_path):
    result = run("data", "--config", toy_config_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^train\s+1500\s", out, re.MULTILINE), out
    for needle in ("split", "pairs", "src tokens", "dropped", "vocabulary: source", "padding"):
        assert needle in out
    assert "built cache" in out
    assert "reused cache" in run("data", "--config", toy_config_path).stdout


@pytest.mark.slow
def test_translate_through_argument_file_and_stdin(trained_run, tmp_path):
    sentences = ["ab ca de", "", "fo gu hi jo"]
    one = run("translate", "--model", trained_run, "ab ca de", "--beam-size", "1")
    assert one.returncode == 0, one.stderr
    assert one.stdout == reverse_words("ab ca de") + "\n"  # the fixture learned the probes (conftest)
    source = tmp_path / "in.txt"
    source.write_text("\n".join(sentences) + "\n")
    out = tmp_path / "out.txt"
    from_file = run("translate", "--model", trained_run, "--input", source, "--output", out)
    assert from_file.returncode == 0, from_file.stderr
    lines = out.read_text().split("\n")[:-1]
    assert lines == [reverse_words(s) for s in sentences]
    from_stdin = run("translate", "--model", trained_run, stdin="\n".join(sentences) + "\n")
    assert from_stdin.stdout.split("\n")[:-1] == lines
    nbest = run("translate", "--model", trained_run, "ab ca de", "--beam-size", "3", "--n-best", "3")
    rows = [line.split("\t") for line in nbest.stdout.strip().split("\n")]
    assert len(rows) == 3 and rows[0][2] == reverse_words("ab ca de")
    scores = [float(r[1]) for r in rows]
    assert scores == sorted(scores, reverse=True)


def test_translate_errors_are_clean(trained_run, tmp_path):
    result = run("translate", "--model", tmp_path, "hello")
    assert result.returncode == 2 and "not a run directory" in result.stderr and "Traceback" not in result.stderr
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\xfe\n")
    result = run("translate", "--model", trained_run, "--input", bad)
    assert result.returncode == 2 and "bad.txt line 2: invalid UTF-8" in result.stderr
    result = run("translate", "--model", trained_run, "x", "--checkpoint", "newest")
    assert result.returncode == 2


@pytest.mark.parametrize("split", ["dev", "test"])
def test_evaluate_matches_the_sacrebleu_command_line(trained_run, split):
    result = run("evaluate", "--model", trained_run, "--split", split, "--beam-size", "1")
    assert result.returncode == 0, result.stderr
    bleu_line = next(line for line in result.stdout.splitlines() if line.startswith("BLEU"))
    ours = bleu_line.split("=")[1].split()[0]
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in bleu_line
    assert any(line.startswith("chrF") for line in result.stdout.splitlines())
    hyp, report = RunDir(trained_run).eval_files(split, 1)
    ref = trained_run.parent / "corpus" / f"{split}.tgt"
    sacre = subprocess.run([sys.executable, "-m", "sacrebleu", str(ref), "-i", str(hyp), "-m", "bleu", "-b",
                            "-w", "2", "-tok", "13a"], capture_output=True, text=True, check=True)
    assert sacre.stdout.strip() == ours
    assert report.is_file()


@pytest.mark.slow
def test_attention_analyze_and_compare_commands(trained_run, tmp_path):
    from toy import toy_config_dict, write_config

    result = run("attention", "--model", trained_run, "ab ca de fo", "--output-dir", tmp_path / "att")
    assert result.returncode == 0, result.stderr
    assert f"-> {reverse_words('ab ca de fo')}" in result.stdout
    assert "entropy" in result.stdout and "mean ± std" in result.stdout
    for suffix in ("png", "html"):
        assert len(list((tmp_path / "att").glob(f"ab_ca_de_fo-*.{suffix}"))) == 1

    result = run("analyze", "--model", trained_run, "--split", "test", "--buckets", "3,5")
    assert result.returncode == 0, result.stderr
    assert "1-3" in result.stdout and "4-5" in result.stdout and "6-6" in result.stdout
    assert (RunDir(trained_run).analysis_dir / "test.png").is_file()

    other = tmp_path / "bahdanau"
    raw = toy_config_dict(other, training={"max_steps": 20, "validate_every": 10})
    trained = run("train", "--config", write_config(other, raw))
    assert trained.returncode == 0, trained.stderr
    assert re.search(r": 20 steps \(max_steps\) in [\d.]+ min, [\d,]+ target tokens/s, best dev BLEU", trained.stdout)
    result = run("compare", trained_run, other / "run", "--output", tmp_path / "cmp.png")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "model" in lines[0] and "dev BLEU" in lines[0]
    assert any("general" in line for line in lines) and any("bahdanau" in line for line in lines)
    assert (tmp_path / "cmp.png").is_file()
    result = run("compare", tmp_path)
    assert result.returncode == 2 and "not a run directory" in result.stderr


def test_translate_takes_n_best_from_the_run_config(trained_run):
    result = run("translate", "--model", trained_run, "ab ca de", "--set", "decoding.beam_size=3",
                 "--set", "decoding.n_best=2")
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.strip().split("\n")]
    assert len(rows) == 2 and rows[0][2] == reverse_words("ab ca de")
    refused = run("translate", "--model", trained_run, "ab", "--set", "model.embed_dim=8")
    assert refused.returncode == 2 and "only decoding.* and evaluation.*" in refused.stderr


def _one_error_line(result, code=2):
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr


def test_beam_size_and_n_best_are_bounded(trained_run):
    huge = run("translate", "--model", trained_run, "ab ca", "--beam-size", "100000")
    assert huge.returncode == 2 and "--beam-size" in huge.stderr and "Traceback" not in huge.stderr
    over = run("translate", "--model", trained_run, "ab ca", "--set", "decoding.beam_size=65")
    _one_error_line(over)
    assert "decoding.beam_size" in over.stderr
    short = run("translate", "--model", trained_run, "ab ca", "--beam-size", "3", "--n-best", "5")
    _one_error_line(short)
    assert "--n-best: 5 cannot exceed the beam size (3)" in short.stderr


def test_lines_without_content_translate_to_empty_lines(trained_run):
    """NUL characters or a zero-width space are no sentence: no invented translation."""
    result = run("translate", "--model", trained_run, stdin="\x00\x00\n\u200b\nab ca\n \u200b\u00a0\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:-1] == ["", "", "CA AB", ""]


def test_heatmap_file_names_never_collide(trained_run, tmp_path):
    from nmt.inspect.sentence import inspect_sentence

    shared = "ab ca de fo gu hi jo ku le mi no pa ab ca de"  # 44 characters: the first 40 are shared
    names = {inspect_sentence(trained_run, sentence, out_dir=tmp_path).png
             for sentence in ("!!!", "", shared + " fo", shared + " gu")}
    assert len(names) == 4 and all(name.is_file() for name in names)


def test_evaluate_on_empty_files_is_one_line(trained_run, tmp_path):
    (tmp_path / "empty.src").write_text("")
    (tmp_path / "empty.ref").write_text("")
    result = run("evaluate", "--model", trained_run, "--src", tmp_path / "empty.src", "--ref", tmp_path / "empty.ref")
    _one_error_line(result)
    assert "hold no sentences" in result.stderr


@pytest.mark.slow
def test_sweep_trains_one_run_per_value_and_compares_them(tmp_path):
    from toy import toy_config_dict, write_config

    raw = toy_config_dict(tmp_path, training={"max_steps": 4, "validate_every": 2})
    script = Path(__file__).resolve().parent.parent / "scripts" / "sweep.py"
    result = subprocess.run([sys.executable, str(script), "--config", str(write_config(tmp_path, raw)),
                             "--key", "model.attention.dropout", "--values", "0", "0.2"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for value in ("0", "0.2"):
        run = RunDir(tmp_path / f"run-dropout-{value}")
        assert f"dropout: {float(value)}" in run.config_path.read_text()
        assert any(line.startswith(f"run-dropout-{value} ") for line in result.stdout.splitlines())
    assert (tmp_path / "compare-dropout.png").is_file()


@pytest.mark.parametrize(("args", "named"), [
    (["translate", "--model", "RUN", "ab", "--sample", "--top-p", "0"], "top-p 0"),
    (["translate", "--model", "RUN", "ab", "--sample", "--temperature", "nan"], "temperature nan"),
    (["translate", "--model", "RUN", "ab", "--sample", "--seed", "99999999999999999999999"], "seed"),
    (["translate", "--model", "RUN", "ab", "--sample", "--seed", "1e23"], "'--seed'"),
    (["attention", "--model", "RUN", "ab", "--threshold", "nan"], "'--threshold'"),
    (["translate", "--model", "RUN", "ab", "--beam-size", "0"], "'--beam-size'"),
    (["translate", "--bogus"], "--bogus"),
    (["bogus"], "'bogus'"),
    (["train"], "--config")])
def test_usage_errors_are_one_line_naming_the_option(trained_run, args, named):
    """Typer's boxed usage messages and the values it passes on (NaN, a seed no generator takes) alike."""
    result = run(*[str(trained_run) if a == "RUN" else a for a in args])
    _one_error_line(result)
    assert named in result.stderr


def test_a_refused_seed_writes_nothing(toy_config_path, tmp_path):
    result = run("train", "--config", toy_config_path, "--set", f"run_dir={tmp_path / 'never'}", "--set", "seed=-1")
    _one_error_line(result)
    assert "seed" in result.stderr and not (tmp_path / "never").exists()


@pytest.mark.slow
def test_inputs_longer_than_a_transformers_positions_are_truncated_with_a_warning(tmp_path):
    """A Transformer with max_positions 16 takes fewer tokens than decoding.max_src_tokens: train, translate,
    attention and score used to crash (`sequence of 81 positions is longer than max_positions 64`)."""
    from toy import toy_config_dict, write_config
    from toy_runs import TOY_TRANSFORMER

    model = {**TOY_TRANSFORMER, "transformer": {**TOY_TRANSFORMER["transformer"], "max_positions": 16}}
    raw = toy_config_dict(tmp_path, model=model, tokenizer={"joint": True, "vocab_size": 60},
                          training={"max_steps": 2, "validate_every": 2})
    trained = run("train", "--config", write_config(tmp_path, raw))
    assert trained.returncode == 0 and "longer than model.transformer.max_positions (16): left out" in \
        trained.stderr, trained.stderr  # training used to crash on them
    long = " ".join(["ab ca de fo"] * 20)
    (tmp_path / "src.txt").write_text(f"{long}\nab ca\n")
    (tmp_path / "ref.txt").write_text(f"{reverse_words(long)}\nCA AB\n")
    runs = [run("translate", "--model", tmp_path / "run", "--input", tmp_path / "src.txt"),
            run("attention", "--model", tmp_path / "run", long, "-o", tmp_path / "maps"),
            run("score", "--model", tmp_path / "run", "--src", tmp_path / "src.txt", "--ref", tmp_path / "ref.txt")]
    for result in runs:
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        assert "truncated to 16 (model.transformer.max_positions)" in result.stderr or "its first 15 scored" in \
            result.stderr, result.stderr
    assert len(runs[0].stdout.splitlines()) == 2
    rows = [json.loads(line) for line in runs[2].stdout.splitlines()]
    assert [r["truncated"] for r in rows] == [True, False] and len(rows[0]["tokens"]) == 15



@pytest.mark.slow  # subprocesses of the CLI: seconds each
def test_attention_by_words_without_eos_and_with_attribution(trained_transformer, tmp_path):
    result = run("attention", "--model", trained_transformer, "abca de fo", "--words", "--no-eos", "--layer", "2",
                 "--head", "1", "--attribution", "input_x_gradient", "--output-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    table = result.stdout.split("mean ± std")[0]
    assert "word" in table and "</s>" not in table and "▁" not in table
    assert re.search(r"mean Spearman \(attention vs attribution\): [+-]\d\.\d{3} over \d+ rows", result.stdout)
    assert len(list(tmp_path.glob("abca_de_fo-*.words.no-eos.png"))) == 1
    assert len(list(tmp_path.glob("abca_de_fo-*.input_x_gradient.png"))) == 1

    pieces = run("attention", "--model", trained_transformer, "abca de fo", "--output-dir", tmp_path)
    assert pieces.returncode == 0, pieces.stderr
    assert "</s>" in pieces.stdout and "attribution" not in pieces.stdout

    wrong = run("attention", "--model", trained_transformer, "ab ca", "--kind", "encoder", "--attribution",
                "integrated_gradients", "--output-dir", tmp_path)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert wrong.stderr.strip() == "error: --attribution is over the source tokens: it goes with --kind cross, " \
                                   "not encoder"


@pytest.mark.slow  # subprocesses of the CLI: seconds each
def test_analyze_by_words(trained_transformer, tmp_path):
    sources = ["ab ca", "de fo gu", "hi jo ku le", "mi no pa ab ca"]
    (tmp_path / "src").write_text("".join(s + "\n" for s in sources), encoding="utf-8")
    (tmp_path / "ref").write_text("".join(reverse_words(s) + "\n" for s in sources), encoding="utf-8")
    found = {}
    for switches in ([], ["--words", "--no-eos"]):
        result = run("analyze", "--model", trained_transformer, "--src", tmp_path / "src", "--ref", tmp_path / "ref",
                     *switches)
        assert result.returncode == 0, result.stderr
        assert "entropy" in result.stdout and "per layer and head" in result.stdout
        found[bool(switches)] = result.stdout.split("per layer and head")[1]
    assert found[True] != found[False]  # the heads' entropies are of the word maps without EOS


def test_align_writes_pharaoh_lines_and_scores_every_head_against_gold(trained_transformer, tmp_path):
    sources = ["ab ca de fo", "gu hi jo", "le mi no pa ku"]
    (tmp_path / "src").write_text("".join(s + "\n" for s in sources), encoding="utf-8")
    (tmp_path / "tgt").write_text("".join(reverse_words(s) + "\n" for s in sources), encoding="utf-8")
    mirrored = [" ".join(f"{i}-{len(s.split()) - 1 - i}" for i in range(len(s.split()))) for s in sources]
    (tmp_path / "gold").write_text("".join(line + "\n" for line in mirrored), encoding="utf-8")

    result = run("align", "--model", trained_transformer, "--src", tmp_path / "src", "--tgt", tmp_path / "tgt",
                 "--gold", tmp_path / "gold", "--choose-head-on", tmp_path / "gold")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and all(re.fullmatch(r"(\d+-\d+)( \d+-\d+)*", line) for line in lines)
    assert [len(line.split()) for line in lines] == [4, 3, 5]  # argmax: one link per target word
    assert re.search(r"chosen on .*gold: layer \d head \d \(AER \d\.\d{3}\)", result.stderr)
    assert "precision" in result.stderr and "AER" in result.stderr and "average" in result.stderr
    assert re.search(r"written \(layer \d head \d\): precision \d\.\d{3}, recall \d\.\d{3}, AER \d\.\d{3}",
                     result.stderr)

    own = run("align", "--model", trained_transformer, "--src", tmp_path / "src", "--layer", "1",
              "--threshold", "0.3", "--output", tmp_path / "out.align")
    assert own.returncode == 0, own.stderr
    assert own.stdout == "" and len((tmp_path / "out.align").read_text().splitlines()) == 3


@pytest.mark.slow  # subprocesses of the CLI: seconds each
def test_align_errors_are_one_line_naming_the_file_and_line(trained_transformer, tmp_path):
    (tmp_path / "src").write_text("ab ca\nde fo\n", encoding="utf-8")
    (tmp_path / "tgt").write_text("CA AB\nFO DE\n", encoding="utf-8")
    (tmp_path / "gold").write_text("0-1 1-0\n0-1 x\n", encoding="utf-8")
    cases = [
        (["--tgt", tmp_path / "tgt", "--gold", tmp_path / "gold"], f"{tmp_path / 'gold'}:2: 'x' is no link"),
        (["--gold", tmp_path / "gold"], "add --tgt FILE"),
        (["--tgt", tmp_path / "tgt", "--layer", "7"], "--layer: 7 is outside 1..2: the model has 2 layers"),
    ]
    for extra, message in cases:
        result = run("align", "--model", trained_transformer, "--src", tmp_path / "src", *extra)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert message in result.stderr


@pytest.mark.slow  # subprocesses of the CLI, and eflomal: seconds each
def test_align_prepare_writes_the_guided_alignment_file_then_training_reads_it(tmp_path):
    pytest.importorskip("eflomal")
    from toy import toy_config_dict, write_config
    from toy_runs import TRANSFORMER_RUN

    raw = toy_config_dict(tmp_path, **TRANSFORMER_RUN)
    raw["training"] = {**raw["training"], "max_steps": 6, "validate_every": 6, "log_every": 2,
                       "guided_alignment": {"path": str(tmp_path / "links"), "weight": 0.5}}
    config = write_config(tmp_path, raw)
    missing = run("train", "--config", config)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1].startswith("error: training.guided_alignment.path")
    assert "nmt align --prepare" in missing.stderr

    prepared = run("align", "--prepare", "--config", config)
    assert prepared.returncode == 0, prepared.stderr
    assert re.search(r"links: 1,500 training pairs, [\d,]+ links", prepared.stdout)
    assert len((tmp_path / "links").read_text().splitlines()) == 1500

    trained = run("train", "--config", config)
    assert trained.returncode == 0, trained.stderr
    guided = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(record.get("alignment_loss", 0) > 0 for record in guided)
    for bad in (["--prepare"], ["--prepare", "--config", config, "--src", config]):
        refused = run("align", *bad)
        assert refused.returncode == 2 and "--prepare aligns a training corpus" in refused.stderr
