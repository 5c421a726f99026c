"""The `nmt` command line. Commands only parse options, call the library and print; errors from the
library are mapped to a one-line message and an exit code in `command`, the one place that does so."""

from __future__ import annotations

import functools
import logging
import sys
import typing
from collections.abc import Callable, Iterable, Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from nmt.config import (
    MAX_ATTRIBUTION_COST,
    MAX_BEAM,
    MAX_MBR_CANDIDATES,
    MAX_NGRAM,
    MAX_STEPS,
    TUNE_BEAMS,
    TUNE_LENGTH_PENALTIES,
    AttentionKind,
    Config,
    MbrConfig,
)
from nmt.errors import ArgumentError, NmtError

if typing.TYPE_CHECKING:
    from nmt.inference.translate import Translation

app = typer.Typer(
    help="Neural machine translation with attention: prepare data, train, translate, evaluate, inspect attention.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="The run's YAML config file.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config value, e.g. --set training.lr=0.002 (repeatable)."),
]
ThreadsOption = Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads for torch's work "
                                                 "(default: one per core; a training uses fewer while other "
                                                 "processes use the cores).")]


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stderr,
                        force=True)


def _as_option(fn: Callable, field: str) -> str:
    """An argument as the command's user wrote it: `beam_size` is `--beam-size` where the command has that
    option (`format` where the command's parameter is `format_`, kept off a builtin's name); other fields (a
    text, a setting) stay as they are."""
    hints = typing.get_type_hints(fn, include_extras=True)
    field = field.replace(".", "_")  # a setting's key: mbr.candidates is --mbr-candidates
    hint = hints.get(field, hints.get(f"{field}_"))
    for info in getattr(hint, "__metadata__", ()):
        if isinstance(info, typer.models.OptionInfo):  # in Annotated, typer keeps the first name as `default`
            names = [n.partition("/")[0] for n in (info.default, *(info.param_decls or ()))  # --mbr/--no-mbr: --mbr
                     if isinstance(n, str) and n.startswith("--")]
            return names[0] if names else f"--{field.replace('_', '-')}"  # typer's own name for an unnamed one
    return field


def command(fn: Callable | None = None, *, name: str | None = None) -> Callable:
    """Register a command whose library errors become one line on stderr and the error's exit code; `name`
    when the command's name is not its function's (a Python keyword)."""
    if fn is None:
        return functools.partial(command, name=name)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ArgumentError as err:
            typer.echo(f"error: {_as_option(fn, err.field)}: {err.message}", err=True)
            raise typer.Exit(err.exit_code) from None
        except NmtError as err:
            for line in str(err).splitlines():
                typer.echo(f"error: {line}", err=True)
            raise typer.Exit(err.exit_code) from None
        except OSError as err:  # a full disk, a read-only folder: say which file, keep what was written
            where = f"{err.filename}: " if err.filename else ""
            typer.echo(f"error: {where}{err.strerror or err}", err=True)
            raise typer.Exit(1) from None

    return app.command(name)(run)


def _use_threads(threads: int | None) -> None:
    if threads:
        from nmt.threads import use_threads

        use_threads(threads)


def _config(path: Path, overrides: list[str] | None) -> Config:
    from nmt.runs.loading import read_config

    return read_config(path, overrides or [])


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned, a rule under the header."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@command
def data(config: ConfigOption, set_: SetOption = None) -> None:
    """Read or download the corpora, clean them, train SentencePiece, encode and cache; print statistics."""
    from nmt.data.prepare import summarize_data

    cfg = _config(config, set_)
    summary = summarize_data(cfg)
    rows = [[s.name, s.pairs, s.src_tokens, s.tgt_tokens,
             ", ".join(f"{k} {v}" for k, v in sorted(s.dropped.items())) or "-"] for s in summary.splits]
    typer.echo(f"corpus {cfg.data.src_lang}->{cfg.data.tgt_lang}: "
               f"{'reused cache' if summary.reused else 'built cache'} {summary.cache_dir}")
    typer.echo(format_table(["split", "pairs", "src tokens", "tgt tokens", "dropped"], rows))
    typer.echo(f"vocabulary: source {summary.src_vocab_size}, target {summary.tgt_vocab_size} "
               f"({cfg.tokenizer.model_type}, {'joint' if cfg.tokenizer.joint else 'separate'})")
    typer.echo(f"training batches: {summary.train_batches} of <= {cfg.training.batch_tokens} tokens, "
               f"padding {summary.padding:.1%}")


class Vocab(str, Enum):
    same = "same"
    extend = "extend"


@command
def train(
    config: ConfigOption,
    set_: SetOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest intact checkpoint (or start, "
                                         "if there is none yet).")] = False,
    init_from: Annotated[Path | None, typer.Option("--init-from", help="Fine-tune: start from this run's best "
                                                   "weights, model and tokenizer (e.g. one from nmt import).")]
    = None,
    vocab: Annotated[Vocab, typer.Option("--vocab", help="With --init-from: same (the run's vocabulary) or extend "
                                         "(a tokenizer trained on this corpus; new pieces get new rows).")]
    = Vocab.same,
    threads: ThreadsOption = None,
) -> None:
    """Train the model the config describes; checkpoints, dev scores and logs go to the run directory."""
    from nmt.training.init_from import with_init_from
    from nmt.training.recipe import train as run_training

    cfg = _config(config, [*(set_ or []), *([f"training.threads={threads}"] if threads else [])])
    if init_from is not None:
        cfg = with_init_from(cfg, init_from, vocab.value)
    elif vocab is not Vocab.same:
        raise typer.BadParameter("--vocab goes with --init-from")
    result = run_training(cfg, resume=resume)
    if result.rank != 0:  # under torchrun, rank 0 reports
        return
    typer.echo(result.summary())
    if result.stop_reason in ("SIGINT", "SIGTERM") and result.ranks == 1:
        raise typer.Exit(130)  # under torchrun a saved, clean stop exits 0: a non-zero rank reads as a crash there


@command(name="import")
def import_(
    hf: Annotated[str, typer.Option("--hf", help="A Marian (OPUS-MT) model in the Hugging Face format: a local "
                                    "folder, or a hub id such as Helsinki-NLP/opus-mt-en-de (fetched online).")],
    run_dir: Annotated[Path, typer.Option("--run-dir", help="The run directory to create.")],
) -> None:
    """Import a pretrained Marian model as a run: translate, evaluate, attention, serve, export and fine-tune
    (nmt train --init-from) then work on it."""
    from nmt.runs.marian import import_marian

    found = import_marian(hf, run_dir)
    typer.echo(f"{found.source} -> {found.run_dir}: {found.summary}, {found.parameters:,} parameters, vocabulary "
               f"source {found.src_vocab_size}, target {found.tgt_vocab_size}")


class Split(str, Enum):
    dev = "dev"
    test = "test"


RunSetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override the run's decoding.* or evaluation.* settings, e.g. "
                 "--set decoding.length_penalty=0.6 (repeatable)."),
]
ModelOption = Annotated[Path | None, typer.Option("--model", "-m", help="Run directory of a trained model.")]
CheckpointOption = Annotated[str, typer.Option("--checkpoint", help="best (by dev BLEU: the trained weights "
                                               "or, with training.ema, their moving average), last (the newest), "
                                               "averaged (written by nmt average), ema (the moving average of "
                                               "the weights, training.ema) or a checkpoint's folder name "
                                               "(step-00003000).")]
RunConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="Find the run directory from a config.")]
SplitOption = Annotated[Split | None, typer.Option("--split", help="A split of the run's corpus (default dev).")]
SrcOption = Annotated[Path | None, typer.Option("--src", help="External source file (with --ref).")]
RefOption = Annotated[Path | None, typer.Option("--ref", help="External reference file (with --src).")]
KindOption = Annotated[AttentionKind, typer.Option("--kind", help="Cross-attention, or encoder / decoder "
                                                  "self-attention where the model has them (a Transformer).")]
WordsOption = Annotated[bool, typer.Option("--words/--subwords", help="Merge subwords into words: a source word's "
                                           "pieces summed, a target word's averaged (rows still sum to 1); the "
                                           "statistics are of the merged map.")]
EosOption = Annotated[bool, typer.Option("--eos/--no-eos", help="Show the end-of-sentence token, or leave its row "
                                         "and column out (each row renormalized to sum to 1).")]


class Attribution(str, Enum):
    input_x_gradient = "input_x_gradient"
    integrated_gradients = "integrated_gradients"


class Quantize(str, Enum):
    int8 = "int8"


QuantizeOption = Annotated[Quantize | None, typer.Option("--quantize", help="int8: dynamically quantized linear "
                                                         "and RNN layers, faster CPU decoding.")]
class DocumentFormat(str, Enum):
    text = "text"
    html = "html"
    xml = "xml"


class Runtime(str, Enum):
    torch = "torch"
    onnx = "onnx"


RuntimeOption = Annotated[Runtime, typer.Option("--runtime", help="torch: the checkpoint; onnx: the run's ONNX "
                                                "export (nmt export) on onnxruntime.")]
BeamOption = Annotated[int | None, typer.Option("--beam-size", "-b", min=1, max=MAX_BEAM,
                                                help="Beam size (1 = greedy); default: the config's decoding.")]
MbrOption = Annotated[bool | None, typer.Option("--mbr/--no-mbr", help="Choose each translation among candidates by "
                                                "minimum Bayes risk, with the config's decoding.mbr settings (else "
                                                "the 16-best of a beam, chrF); default: on where decoding.mbr is "
                                                "set.")]
MbrCandidatesOption = Annotated[int | None, typer.Option("--mbr-candidates", help=f"MBR: candidates per sentence "
                                                         f"(2..{MAX_MBR_CANDIDATES}); implies --mbr.")]
MbrSourceOption = Annotated[str | None, typer.Option("--mbr-source", help="MBR: beam (a beam's n-best) or sample "
                                                     "(epsilon sampling); implies --mbr.")]
MbrMetricOption = Annotated[str | None, typer.Option("--mbr-metric", help="MBR: the utility, chrf, bleu or ter; "
                                                     "implies --mbr.")]


def _mbr(mbr: bool | None, candidates: int | None, source: str | None, metric: str | None) -> object:
    """--mbr/--no-mbr and the --mbr-* settings as the library's `mbr=` takes them: None (the run's), False, True,
    or the settings given, over the run's (else the defaults)."""
    given = {key: value for key, value in (("candidates", candidates), ("source", source), ("metric", metric))
             if value is not None}
    if mbr is False and given:
        raise typer.BadParameter("--mbr-candidates, --mbr-source and --mbr-metric set MBR: leave out --no-mbr")
    return given or mbr


ModelsOption = Annotated[list[Path] | None, typer.Option("--model", "-m", help="Run directory of a trained model; "
                                                         "repeat for an ensemble of runs with the same vocabularies.")]


def _run_dirs(models: list[Path] | None, config: Path | None) -> list[Path]:
    return models if models else [_run_dir(None, config)]


def _run_dir(model: Path | None, config: Path | None) -> Path:
    if model is not None:
        return model
    if config is not None:
        from nmt.runs.loading import read_config

        return read_config(config, check_files=False).run_path
    raise typer.BadParameter("give --model RUN_DIR or --config X.yaml")


def _write_out(text: str, output: Path | None) -> None:
    """To standard output, or atomically to a file."""
    from nmt.fileio import atomic_write_text

    if output is None:
        typer.echo(text, nl=False)
    else:
        atomic_write_text(output, text)


def _progress() -> bool:
    return sys.stderr.isatty()


@command
def translate(
    sentence: Annotated[str | None, typer.Argument(help="A sentence to translate (else --input or stdin).")] = None,
    model: ModelsOption = None,
    config: RunConfigOption = None,
    input_: Annotated[Path | None, typer.Option("--input", "-i", help="File to translate, one sentence a line.")]
    = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write translations here, not stdout.")]
    = None,
    beam_size: BeamOption = None,
    n_best: Annotated[int | None, typer.Option("--n-best", min=1, max=MAX_BEAM, help="Print the N best hypotheses "
                                               "with scores (at most the beam size); default: the config's "
                                               "decoding.n_best.")] = None,
    checkpoint: CheckpointOption = "best",
    set_: RunSetOption = None,
    sample: Annotated[bool, typer.Option("--sample", help="Draw each translation from the model instead of "
                                         "searching (back-translation); beam and n-best do not apply.")] = False,
    temperature: Annotated[float, typer.Option(help="--sample: divide the logits by this (> 0).")] = 1.0,
    top_k: Annotated[int, typer.Option(help="--sample: keep the K most probable tokens (0: all).")] = 0,
    top_p: Annotated[float, typer.Option(help="--sample: keep the smallest set of tokens whose "
                                         "probability reaches P (0 < P <= 1).")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="--sample, or MBR with sampled candidates: seed for "
                                         "reproducible draws (MBR's default: 0).")] = None,
    quantize: QuantizeOption = None,
    runtime: RuntimeOption = Runtime.torch,
    prefix: Annotated[str | None, typer.Option("--prefix", help="Every translation begins with this target text; "
                                               "the search continues it.")] = None,
    prefix_file: Annotated[Path | None, typer.Option("--prefix-file", help="A target prefix per input line "
                                                     "(an empty line: none).")] = None,
    constraint: Annotated[list[str] | None, typer.Option("--constraint", help="A target phrase every translation "
                                                         "must contain (repeatable).")] = None,
    constraints_file: Annotated[Path | None, typer.Option("--constraints-file", help="Per input line, the target "
                                                          "phrases its translation must contain, tab-separated.")]
    = None,
    glossary: Annotated[Path | None, typer.Option("--glossary", help="Lines `source term<TAB>target term`: a "
                                                  "translation whose source has the term (a whole word, same "
                                                  "case) must contain its target term.")] = None,
    no_repeat_ngram_size: Annotated[int | None, typer.Option("--no-repeat-ngram-size", help="No n-gram of this "
                                                             f"size repeats in a translation (1..{MAX_NGRAM}); "
                                                             "default: the config's.")] = None,
    repetition_penalty: Annotated[float | None, typer.Option("--repetition-penalty", help="Multiply the "
                                                             "log-probability of tokens already generated by this "
                                                             "(>= 1); default: the config's.")] = None,
    n_alternatives: Annotated[int | None, typer.Option("--n-alternatives", help="Print the K best continuations "
                                                       "that differ at the first token after the prefix.")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Print each translation as it is decoded, one line at "
                                         "a time.")] = False,
    format_: Annotated[DocumentFormat, typer.Option("--format", help="html or xml: translate a document, its "
                                                    "inline tags placed by word alignment, blocks translated "
                                                    "sentence by sentence; text: a sentence a line.")]
    = DocumentFormat.text,
    protect: Annotated[bool | None, typer.Option("--protect/--no-protect", help="Carry URLs, e-mail addresses, "
                                                 "numbers, placeholders and decoding.protect's patterns through "
                                                 "unchanged (default: on for html and xml).")] = None,
    align_layer: Annotated[int | None, typer.Option("--align-layer", min=1, help="--format: place tags by this "
                                                    "decoder layer's cross-attention (default: the guided head's, "
                                                    "else the last).")] = None,
    align_head: Annotated[int | None, typer.Option("--align-head", min=1, help="--format: by this head of it "
                                                   "(default: the guided head, else the heads averaged; `nmt align "
                                                   "--choose-head-on` finds the best).")] = None,
    mbr: MbrOption = None,
    mbr_candidates: MbrCandidatesOption = None,
    mbr_source: MbrSourceOption = None,
    mbr_metric: MbrMetricOption = None,
    scores: Annotated[bool, typer.Option("--scores", help="Print each translation's quality score first, "
                                         "`score<TAB>translation`: an estimate of its sentence chrF (0-100), "
                                         "calibrated on dev.")] = False,
    min_quality: Annotated[float | None, typer.Option("--min-quality", min=0.0, max=100.0, help="Add a column ok "
                                                      "or low (quality below this) before each translation, and "
                                                      "say on stderr how many are low.")] = None,
    threads: ThreadsOption = None,
) -> None:
    """Translate a sentence, a file or standard input: one output line per input line, order kept; or a whole
    HTML or XML document (--format)."""
    _use_threads(threads)
    if (align_layer or align_head) and format_ is DocumentFormat.text:
        raise typer.BadParameter("--align-layer and --align-head place tags: they go with --format html or xml")
    if format_ is not DocumentFormat.text or protect:
        _translate_document(sentence, model, config, input_, output, format_.value, protect, checkpoint, set_,
                            quantize, runtime, beam_size, glossary, no_repeat_ngram_size, repetition_penalty,
                            (align_layer, align_head),
                            others={"--n-best": n_best, "--sample": sample, "--prefix": prefix,
                                    "--prefix-file": prefix_file, "--constraint": constraint,
                                    "--constraints-file": constraints_file, "--n-alternatives": n_alternatives,
                                    "--stream": stream, "--mbr": mbr, "--mbr-candidates": mbr_candidates,
                                    "--mbr-source": mbr_source, "--mbr-metric": mbr_metric, "--scores": scores,
                                    "--min-quality": min_quality is not None})
        return
    from nmt.data.corpus import read_lines, read_stream
    from nmt.inference.search import Sampling
    from nmt.inference.steer import Glossary, line_constraints, read_aligned, steer_lines
    from nmt.inference.translate import translate_lines

    if sentence is not None:
        lines = [sentence]
    elif input_ is not None:
        lines = list(read_lines(input_))
    elif sys.stdin.isatty():
        raise typer.BadParameter("give a sentence, --input FILE, or pipe text into standard input")
    else:
        lines = read_stream(sys.stdin.buffer, "<stdin>")
    if not sample and (temperature != 1.0 or top_k or top_p != 1.0):
        raise typer.BadParameter("--temperature, --top-k and --top-p go with --sample")
    if sample and (beam_size or n_best):
        raise typer.BadParameter("--sample draws one translation per line: leave out --beam-size and --n-best")
    if prefix is not None and prefix_file is not None:
        raise typer.BadParameter("give --prefix or --prefix-file, not both")
    if stream and (n_best or n_alternatives or output):
        raise typer.BadParameter("--stream prints one translation per line as it is decoded: leave out --n-best, "
                                 "--n-alternatives and --output")
    if (scores or min_quality is not None) and (n_best or n_alternatives or stream):
        raise typer.BadParameter("--scores and --min-quality go with one translation per line: leave out --n-best, "
                                 "--n-alternatives and --stream")
    prefixes = (read_aligned(prefix_file, len(lines), "prefixes") if prefix_file
                else [prefix] * len(lines) if prefix is not None else None)
    constraints = line_constraints(constraint or [], constraints_file, len(lines))
    steers = steer_lines(lines, prefixes, constraints, Glossary.read(glossary) if glossary else None)
    done = translate_lines(_run_dirs(model, config), lines, beam_size, n_best, checkpoint, set_ or [],
                           progress=input_ is not None and _progress() and not stream,
                           sampling=Sampling(temperature, top_k, top_p, seed) if sample else None,
                           quantize=quantize and quantize.value, runtime=runtime.value, steers=steers,
                           no_repeat_ngram_size=no_repeat_ngram_size, repetition_penalty=repetition_penalty,
                           n_alternatives=n_alternatives, stream=_echo_now if stream else None,
                           mbr=_mbr(mbr, mbr_candidates, mbr_source, mbr_metric),
                           seed=None if sample else seed)
    if stream:
        return
    if scores or min_quality is not None:
        text = _with_quality(done.translations, scores, min_quality)
    elif not done.listed:
        text = "".join(t.text + "\n" for t in done.translations)
    else:  # under MBR, ranked by expected utility: that is the score shown
        text = "".join(f"{i}\t{utility if t.utilities else h.score:.4f}\t{line}\n"
                       for i, t in enumerate(done.translations)
                       for h, line, utility in zip(t.hypotheses, t.texts, t.utilities or t.texts, strict=True))
    _write_out(text, output)


def _with_quality(translations: Sequence[Translation], scores: bool, min_quality: float | None) -> str:
    """Each translation after its quality (one decimal; - for an empty line) and/or ok / low against
    `min_quality`, tab-separated; the count of low ones on stderr."""
    lines, low = [], 0
    for t in translations:
        quality = t.quality
        columns = ["-" if quality is None else f"{quality:.1f}"] if scores else []
        if min_quality is not None:
            below = quality is not None and quality < min_quality
            low += below
            columns.append("low" if below else "ok")
        lines.append("\t".join([*columns, t.text]) + "\n")
    if min_quality is not None:
        typer.echo(f"{low} of {len(translations)} translations below quality {min_quality:g}", err=True)
    return "".join(lines)


def _translate_document(sentence: str | None, model: list[Path] | None, config: Path | None, input_: Path | None,
                        output: Path | None, fmt: str, protect: bool | None, checkpoint: str,
                        set_: list[str] | None, quantize: Quantize | None, runtime: Runtime, beam_size: int | None,
                        glossary: Path | None, no_repeat_ngram_size: int | None, repetition_penalty: float | None,
                        alignment: tuple[int | None, int | None], others: dict[str, object]) -> None:
    """`nmt translate --format html|xml` or `--protect`: a document in, the same document out, streamed."""
    from nmt.documents.translate import read_chunks, translate_documents
    from nmt.fileio import atomic_writer
    from nmt.inference.steer import Glossary

    given = [flag for flag, value in others.items() if value]
    if given:
        raise typer.BadParameter(f"{', '.join(given)} go with sentences a line, not with --format {fmt} or "
                                 "--protect: leave them out")
    if sentence is not None:
        chunks: Iterable[str] = [sentence + "\n"]
    elif input_ is not None:
        chunks = read_chunks(input_, fmt)
    elif sys.stdin.isatty():
        raise typer.BadParameter("give a document as an argument, --input FILE, or pipe it into standard input")
    else:
        chunks = iter(lambda: sys.stdin.read(1 << 16), "")
    name = str(input_) if input_ is not None else "<stdin>" if sentence is None else "<argument>"
    loaded_glossary = Glossary.read(glossary) if glossary else None

    def translate_to(write: Callable[[str], object]) -> None:
        translate_documents(_run_dirs(model, config), chunks, fmt, write, name, checkpoint=checkpoint,
                            overrides=set_ or [], quantize=quantize and quantize.value, runtime=runtime.value,
                            protect=protect, beam_size=beam_size, glossary=loaded_glossary,
                            no_repeat_ngram_size=no_repeat_ngram_size, repetition_penalty=repetition_penalty,
                            align_layer=alignment[0], align_head=alignment[1])

    if output is None:
        translate_to(_echo_now)
        return
    with atomic_writer(output) as handle:
        translate_to(lambda text: handle.write(text.encode()))


def _echo_now(text: str) -> None:
    """Standard output, flushed at once (a streamed translation)."""
    sys.stdout.write(text)
    sys.stdout.flush()


@command
def evaluate(
    model: ModelsOption = None,
    config: RunConfigOption = None,
    split: SplitOption = None,
    src: SrcOption = None,
    ref: RefOption = None,
    beam_size: BeamOption = None,
    checkpoint: CheckpointOption = "best",
    set_: RunSetOption = None,
    quantize: QuantizeOption = None,
    runtime: RuntimeOption = Runtime.torch,
    mbr: MbrOption = None,
    mbr_candidates: MbrCandidatesOption = None,
    mbr_source: MbrSourceOption = None,
    mbr_metric: MbrMetricOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Translate a test set and score it with sacrebleu: BLEU, chrF and TER, with signatures; and how well the
    quality scores rank the translations (Spearman's correlation with sentence chrF)."""
    from nmt.inference.evaluate import evaluate as run_evaluation

    _use_threads(threads)

    report = run_evaluation(_run_dirs(model, config), split and split.value, src, ref, checkpoint, beam_size,
                            progress=_progress(), overrides=set_ or [], quantize=quantize and quantize.value,
                            runtime=runtime.value, mbr=_mbr(mbr, mbr_candidates, mbr_source, mbr_metric))
    chosen = report.mbr
    how = f" (MBR: {chosen.candidates} {chosen.source} candidates, {chosen.metric})" if chosen else ""
    typer.echo(f"{report.name}: {report.sentences} sentences{how}, checkpoint {report.checkpoint}")
    for score in report.scores:
        typer.echo(str(score))
    rank = "undefined" if report.quality_spearman is None else f"{report.quality_spearman:+.3f}"
    typer.echo(f"quality: Spearman {rank} with sentence chrF"
               f"{'' if report.quality_calibrated else ' (uncalibrated: no calibration in the checkpoint)'}")
    typer.echo(f"hypotheses: {report.hypotheses_path}\nreport: {report.report_path}")


@command
def attention(
    sentence: Annotated[str, typer.Argument(help="The sentence to translate and inspect.")],
    model: ModelOption = None,
    config: RunConfigOption = None,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Count source positions above this weight.")]
    = 0.1,
    beam_size: BeamOption = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Where to write the heatmaps "
                                                    "(default RUN_DIR/attention).")] = None,
    checkpoint: CheckpointOption = "best",
    set_: RunSetOption = None,
    kind: KindOption = "cross",
    layer: Annotated[int | None, typer.Option("--layer", min=1, help="Which layer (default the last); "
                                              "`nmt serve`'s /models lists a model's layers.")] = None,
    head: Annotated[int | None, typer.Option("--head", min=1, help="One head (default a grid of all heads "
                                             "of the layer, when it has several).")] = None,
    words: WordsOption = False,
    eos: EosOption = True,
    attribution: Annotated[Attribution | None, typer.Option(
        "--attribution", help="Also attribute each target token to the source tokens by gradients (captum), drawn "
                              "beside the attention, with the rank correlation (Spearman) of the two per row.")]
    = None,
    steps: Annotated[int, typer.Option("--steps", min=1, max=MAX_STEPS, help="Integration steps of "
                                       "--attribution integrated_gradients.")] = 32,
    max_cost: Annotated[int, typer.Option("--max-cost", min=1, help="Refuse an attribution costing more: target x "
                                          "source tokens x steps (one for input_x_gradient); the server's 413 "
                                          "bound, max_attribution_cost, is the same.")] = MAX_ATTRIBUTION_COST,
) -> None:
    """Translate a sentence, draw its attention heatmap (PNG + HTML) and print per-step attention statistics;
    per layer and head too when the model has several; with --attribution, gradient attribution beside it."""
    import math

    from nmt.inspect.sentence import inspect_sentence

    found = inspect_sentence(_run_dir(model, config), sentence, threshold=threshold, beam_size=beam_size,
                             checkpoint=checkpoint, out_dir=output_dir, overrides=set_ or [], kind=kind, layer=layer,
                             head=head, words=words, eos=eos, attribution=attribution and attribution.value,
                             steps=steps, max_cost=max_cost)
    stats = found.stats
    typer.echo(f"{found.source}\n-> {found.translation}\n")
    if len(found.heads) > 1:
        typer.echo(format_table(["layer", "head", "entropy", "max weight"],
                                [[h.layer, h.head, f"{h.entropy:.3f}", f"{h.max_weight:.3f}"] for h in found.heads]))
        typer.echo("")
    unit = "word" if words else "token"
    rows = [[label, f"{e:.3f}", f"{m:.3f}", n] for label, e, m, n in
            zip(found.row_labels, stats.entropy, stats.max_weight, stats.above_threshold, strict=True)]
    shown = "heads averaged" if len(found.panels) > 1 else "weights"
    typer.echo(format_table([unit, f"entropy ({shown})", "max weight", f"> {threshold:g}"], rows))
    summary = stats.summary()
    typer.echo("mean ± std: " + ", ".join(f"{k} {m:.3f} ± {s:.3f}" for k, (m, s) in summary.items()))
    typer.echo(f"heatmap: {found.png}\n         {found.html}")
    explained = found.attribution
    if explained is not None:
        typer.echo(f"\nattribution ({explained.method}, share of each row) beside the attention ({shown}):")
        typer.echo(format_table([unit, "entropy", "max share", "Spearman"], [
            [label, f"{e:.3f}", f"{m:.3f}", "-" if math.isnan(r) else f"{r:+.3f}"] for label, e, m, r in
            zip(explained.row_labels, explained.stats.entropy, explained.stats.max_weight, explained.spearman,
                strict=True)]))
        defined = sum(not math.isnan(r) for r in explained.spearman)
        typer.echo(f"mean Spearman (attention vs attribution): {explained.mean_spearman:+.3f} over {defined} rows")
        typer.echo(f"attribution: {found.attribution_png}")


def _numbers(option: str, text: str, kind: type[int] | type[float], example: str) -> list:
    try:
        return [kind(part) for part in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{option} {text!r}: give comma-separated numbers, e.g. {example}") from None


def _parse_buckets(text: str | None) -> list[int] | None:
    return _numbers("--buckets", text, int, "8,12") if text else None


@command
def analyze(
    model: ModelOption = None,
    config: RunConfigOption = None,
    split: SplitOption = None,
    src: SrcOption = None,
    ref: RefOption = None,
    buckets: Annotated[str | None, typer.Option(help="Upper bounds of source-length buckets in words, e.g. "
                                                "10,20 (default: terciles: short, medium, long).")] = None,
    beam_size: BeamOption = None,
    checkpoint: CheckpointOption = "best",
    set_: RunSetOption = None,
    kind: KindOption = "cross",
    words: WordsOption = False,
    eos: EosOption = True,
) -> None:
    """BLEU, chrF, attention entropy and maximum weight by source length: a table and plots in the run dir;
    with several layers or heads also the entropy of every layer and head by source length."""
    from nmt.inspect.buckets import analyze as run_analysis

    found = run_analysis(_run_dir(model, config), split and split.value, src_file=src, ref_file=ref,
                         edges=_parse_buckets(buckets), beam_size=beam_size, checkpoint=checkpoint,
                         progress=_progress(), overrides=set_ or [], kind=kind, words=words, eos=eos)
    typer.echo(format_table(["src words", "sentences", "BLEU", "chrF", "entropy", "max weight"],
                            [[r.label, r.sentences, f"{r.bleu:.2f}", f"{r.chrf:.2f}", f"{r.entropy:.3f}",
                              f"{r.max_weight:.3f}"] for r in found.rows]))
    if found.heads is not None:
        heads = found.heads
        typer.echo(f"\n{heads.kind} attention entropy (nats) per layer and head, by source length in words:")
        layers, count = heads.entropy.shape[1:]
        typer.echo(format_table(["layer", "head", *heads.buckets],
                                [[layer + 1, head + 1, *(f"{e:.3f}" for e in heads.entropy[:, layer, head])]
                                 for layer in range(layers) for head in range(count)]))
        typer.echo(f"plot: {found.heads_png}")
    typer.echo(f"plot: {found.png}\nreport: {found.report}")


@command
def align(
    src: Annotated[Path | None, typer.Option("--src", help="Source sentences, one a line, words separated by "
                                             "spaces.")] = None,
    tgt: Annotated[Path | None, typer.Option("--tgt", help="Their translations, line by line (forced decoding); "
                                             "default: the model's own translations.")] = None,
    model: ModelOption = None,
    config: RunConfigOption = None,
    layer: Annotated[int | None, typer.Option("--layer", min=1, help="Which layer's cross-attention (default the "
                                              "last).")] = None,
    head: Annotated[int | None, typer.Option("--head", min=1, help="One head (default: the layer's heads "
                                             "averaged).")] = None,
    choose_head_on: Annotated[Path | None, typer.Option(
        "--choose-head-on", help="Gold links of the --src/--tgt pairs (i-j sure, i?j possible): align with the "
                                 "head of the lowest AER on them.")] = None,
    threshold: Annotated[float | None, typer.Option(
        "--threshold", min=0.0, max=1.0, help="Link every source word that gets at least this weight (default: "
                                              "each target word's most attended source word).")] = None,
    gold: Annotated[Path | None, typer.Option("--gold", help="Gold links of the pairs: print precision, recall and "
                                              "AER (Och & Ney 2003), overall and per layer and head, to stderr.")]
    = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the alignments here, not stdout.")]
    = None,
    beam_size: BeamOption = None,
    checkpoint: CheckpointOption = "best",
    set_: RunSetOption = None,
    attribution: Annotated[Attribution | None, typer.Option(
        "--attribution", help="Link by gradient attribution instead of attention; with --gold, each head's rank "
                              "correlation with it too.")] = None,
    prepare: Annotated[bool, typer.Option("--prepare", help="Instead: align the training pairs of --config with "
                                          "eflomal, for training.guided_alignment (written to its path, or "
                                          "--output).")] = False,
) -> None:
    """Word alignments from cross-attention, in Pharaoh format (source-target word indices from 0), one line per
    sentence pair; with --gold, which heads align. With --prepare, a training corpus's alignments by eflomal."""
    from nmt.data.links import format_links
    from nmt.inspect.aligner import align_files

    if prepare:
        others = [src, tgt, model, layer, head, choose_head_on, threshold, gold, attribution, beam_size]
        if config is None or any(option is not None for option in others):
            raise typer.BadParameter("--prepare aligns a training corpus: give --config X.yaml (and --output) "
                                     "only")
        from nmt.data.word_aligner import prepare_alignment

        done = prepare_alignment(_config(config, None), output)
        typer.echo(f"{done.path}: {done.pairs:,} training pairs, {done.links:,} links, {done.unaligned:,} pairs left "
                   f"empty (their words and the tokenizer's disagree) ({done.seconds:.0f} s)")
        return
    if src is None:
        raise typer.BadParameter("give --src FILE (or --prepare --config X.yaml)")
    found = align_files(_run_dir(model, config), src, tgt, layer=layer, head=head, threshold=threshold,
                        gold_file=gold, choose_on=choose_head_on, beam_size=beam_size, checkpoint=checkpoint,
                        overrides=set_ or [], attribution=attribution and attribution.value)
    _write_out("".join(format_links(links) + "\n" for links in found.links), output)
    which = f"layer {found.layer} " + (f"head {found.head}" if found.head else "heads averaged")
    if found.by_attribution:
        which = f"attribution, {found.by_attribution}"
    if found.chosen is not None:
        typer.echo(f"chosen on {choose_head_on}: {which} (AER {found.chosen.score.aer:.3f})", err=True)
    if found.score is not None:
        spearman = ["spearman vs attribution"] if found.by_attribution else []
        typer.echo(format_table(["layer", "head", "precision", "recall", "AER", *spearman], [
            [row.layer, row.head or "average", f"{row.score.precision:.3f}", f"{row.score.recall:.3f}",
             f"{row.score.aer:.3f}", *([] if row.spearman is None else [f"{row.spearman:.3f}"])]
            for row in found.table]), err=True)
        score = found.score
        typer.echo(f"written ({which}): precision {score.precision:.3f}, recall {score.recall:.3f}, "
                   f"AER {score.aer:.3f}", err=True)


@command
def score(
    src: Annotated[Path, typer.Option("--src", help="Source sentences, one a line.")],
    ref: Annotated[Path, typer.Option("--ref", help="The translations to score, aligned with --src.")],
    model: ModelOption = None,
    config: RunConfigOption = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the JSONL here, not stdout.")] = None,
    checkpoint: CheckpointOption = "best",
    set_: RunSetOption = None,
) -> None:
    """Forced decoding: each translation's log-probability under the model, per sentence and per token (JSONL)."""
    import json

    from nmt.data.corpus import read_text_pairs
    from nmt.inference.forced import score_pairs

    pairs = list(read_text_pairs(src, ref))
    scored = score_pairs(_run_dir(model, config), [s for s, _ in pairs], [t for _, t in pairs], checkpoint,
                         set_ or [])
    _write_out("".join(json.dumps(p.as_dict(), ensure_ascii=False) + "\n" for p in scored), output)


@command
def tune(
    model: ModelOption = None,
    config: RunConfigOption = None,
    beams: Annotated[str, typer.Option(help="Beam sizes to try, comma-separated.")] = ",".join(map(str, TUNE_BEAMS)),
    length_penalties: Annotated[str, typer.Option(help="Length penalties (GNMT alpha) to try, comma-separated.")]
    = ",".join(f"{a:g}" for a in TUNE_LENGTH_PENALTIES),
    split: SplitOption = None,
    src: SrcOption = None,
    ref: RefOption = None,
    checkpoint: CheckpointOption = "best",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the table; leave the run's config as it is.")]
    = False,
    mbr: Annotated[bool, typer.Option("--mbr", help="Also try minimum Bayes risk decoding (the config's "
                                      "decoding.mbr settings, else the defaults); written as decoding.mbr if it "
                                      "wins.")] = False,
) -> None:
    """Search beam size and length penalty (and with --mbr, MBR) on the dev set (or --src/--ref); write the best
    into the run's decoding settings."""
    from nmt.inference.tune import tune as run_tune

    beam_sizes = _numbers("--beams", beams, int, "1,5")
    alphas = _numbers("--length-penalties", length_penalties, float, "0,1.0")
    found = run_tune(_run_dir(model, config), beam_sizes, alphas, split.value if split else "dev", checkpoint,
                     write=not dry_run, src_file=src, ref_file=ref, mbr=mbr)
    typer.echo(format_table(
        ["beam", "length penalty", "mbr", f"{found.split} BLEU", "chrF", "sent/s", ""],
        [[p.beam_size, f"{p.length_penalty:g}", _mbr_label(p.mbr), f"{p.bleu:.2f}", f"{p.chrf:.2f}",
          f"{p.sentences_per_s:,.1f}",
          " ".join(filter(None, ["current" if p.current else "", "best" if p is found.best else ""]))]
         for p in found.points]))
    best = found.best
    verb = "written to" if found.written else "not written (--dry-run) to"
    chosen = f"MBR ({_mbr_label(best.mbr)})" if best.mbr else \
        f"beam {best.beam_size}, length penalty {best.length_penalty:g}"
    typer.echo(f"best: {chosen} ({found.split} BLEU {best.bleu:.2f}); {verb} "
               f"{_run_dir(model, config) / 'config.yaml'}")


def _mbr_label(settings: MbrConfig | None) -> str:
    return f"{settings.candidates} {settings.source}, {settings.metric}" if settings else "-"


@command
def average(
    model: ModelOption = None,
    config: RunConfigOption = None,
    last: Annotated[int | None, typer.Option("--last", min=2, help="Average the newest K checkpoints.")] = None,
    best: Annotated[int | None, typer.Option("--best", min=2, help="Average the K with the highest dev BLEU.")]
    = None,
) -> None:
    """Average checkpoints' weights into checkpoints/averaged (select it with --checkpoint averaged)."""
    from nmt.inference.average import average as run_average

    found = run_average(_run_dir(model, config), last, best)
    typer.echo(f"averaged steps {', '.join(map(str, found.steps))}: dev BLEU {found.dev_bleu:.2f} (greedy)")
    if found.best_single is not None:
        typer.echo(f"best single checkpoint: step {found.best_single.step}, dev BLEU {found.best_single.dev_bleu:.2f}")
    typer.echo(f"written: {found.path}")


class ExportFormat(str, Enum):
    onnx = "onnx"
    ctranslate2 = "ctranslate2"


@command
def export(
    model: ModelOption = None,
    config: RunConfigOption = None,
    format_: Annotated[ExportFormat, typer.Option("--format", help="onnx: the encoder and one decoder step; "
                                                  "ctranslate2: a Transformer run as a CTranslate2 model.")]
    = ExportFormat.onnx,
    checkpoint: CheckpointOption = "best",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder (default RUN/export/FORMAT).")]
    = None,
) -> None:
    """Export a run for decoding outside PyTorch; translate and evaluate run an ONNX export with --runtime onnx."""
    from nmt.export.ctranslate2 import export_ctranslate2
    from nmt.export.onnx import export_onnx

    write = export_onnx if format_ is ExportFormat.onnx else export_ctranslate2
    folder = write(_run_dir(model, config), checkpoint, output)
    typer.echo(f"{format_.value}: {folder}")


@command
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run directories to put side by side.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the comparison plot.")]
    = Path("compare.png"),
) -> None:
    """Runs side by side: attention, size, training time and speed, memory, dev/test scores, attention entropy."""
    from nmt.inspect.comparison import compare_plot, summarize_run

    summaries = [summarize_run(run) for run in runs]
    typer.echo(format_table(
        ["run", "model", "params", "train min", "tok/s", "peak MB", "dev BLEU", "dev chrF", "test BLEU",
         "entropy"],
        [[s.run, s.model, "-" if s.parameters is None else f"{s.parameters:,}", f"{s.minutes:.1f}",
          f"{s.tokens_per_s:,.0f}", f"{s.peak_rss_mb:,.0f}", f"{s.dev_bleu:.2f}", f"{s.dev_chrf:.2f}",
          "-" if s.test_bleu is None else f"{s.test_bleu:.2f}", f"{s.entropy:.3f}"] for s in summaries]))
    typer.echo(f"plot: {compare_plot(summaries, output)}")


@command
def serve(
    model: Annotated[list[str], typer.Option("--model", "-m", help="A run directory to serve, or NAME=RUN_DIR; "
                                             "repeat for several (the first is the default model).")],
    host: Annotated[str, typer.Option(help="Interface to listen on; 0.0.0.0 exposes the server to the network "
                                      "(it has no authentication).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Server processes, each with its own copy of the models.")]
    = 1,
    checkpoint: CheckpointOption = "best",
    max_batch: Annotated[int, typer.Option(min=1, help="Sentences decoded together at most.")] = 64,
    batch_wait_ms: Annotated[float, typer.Option(min=0.0, help="How long a request waits for others to share its "
                                                 "batch.")] = 2.0,
    max_texts: Annotated[int, typer.Option(min=1, help="Texts in one /translate request at most.")] = 64,
    max_request_cost: Annotated[int, typer.Option(min=1, help="Decoding cost of one request at most: beam size "
                                                  "x source tokens (x (1 + constraints) x alternatives where "
                                                  "steered), summed over its texts (413 above).")] = 1024,
    quantize: QuantizeOption = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads of each server process "
                                                "(default: the cores shared among --workers).")] = None,
) -> None:
    """Serve the runs over HTTP: the attention explorer page at /, the REST API (/translate, /attention,
    /models, /health) with its OpenAPI docs at /docs."""
    try:
        from nmt.serve.server import Limits
        from nmt.serve.server import serve as run_server
        from nmt.serve.service import served_runs
    except ImportError as err:
        raise NmtError(f"nmt serve needs the serving extra ({err.name} is missing): pip install 'nmt[serve]'") \
            from None

    run_server(served_runs(model), host, port, workers, checkpoint,
               Limits(max_texts=max_texts, max_batch_sentences=max_batch, batch_wait_ms=batch_wait_ms,
                      max_request_cost=max_request_cost),
               quantize and quantize.value, threads)


def main() -> None:
    """The `nmt` script: the app, with usage errors (a bad option value, an unknown option or command) as one
    line naming the command, exit code 2, like every other error, instead of a boxed usage message."""
    if not sys.argv[1:]:
        app(prog_name="nmt")  # the help, as no_args_is_help prints it
    try:
        code = app(prog_name="nmt", standalone_mode=False)
    except typer.Abort:  # Ctrl-C outside a command's own handling
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.TyperException as err:  # click's usage errors, as Typer raises them
        context = getattr(err, "ctx", None)
        where = context.command_path if context is not None else "nmt"
        message = " ".join(err.format_message().split())
        typer.echo(f"error: {where}: {message} (see {where} --help)", err=True)
        sys.exit(getattr(err, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)
