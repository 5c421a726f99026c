"""The `nmt` command line. Commands only parse options, call the library and print; errors from the
library are mapped to a one-line message and an exit code in `command`, the one place that does so."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from nmt.config import Config, load_config
from nmt.errors import NmtError

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


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stderr,
                        force=True)


def command(fn: Callable) -> Callable:
    """Register a command whose library errors become one line on stderr and the error's exit code."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NmtError as err:
            for line in str(err).splitlines():
                typer.echo(f"error: {line}", err=True)
            raise typer.Exit(err.exit_code) from None
        except OSError as err:  # a full disk, a read-only folder: say which file, keep what was written
            where = f"{err.filename}: " if err.filename else ""
            typer.echo(f"error: {where}{err.strerror or err}", err=True)
            raise typer.Exit(1) from None

    return app.command()(run)


def _config(path: Path, overrides: list[str] | None) -> Config:
    return load_config(path, overrides or [])


@command
def data(config: ConfigOption, set_: SetOption = None) -> None:
    """Read or download the corpora, clean them, train SentencePiece, encode and cache; print statistics."""
    from nmt.report import data_report

    cfg = _config(config, set_)
    typer.echo(data_report(cfg))


@command
def train(
    config: ConfigOption,
    set_: SetOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest intact checkpoint.")] = False,
) -> None:
    """Train the model the config describes; checkpoints, dev scores and logs go to the run directory."""
    from nmt.train import train as run_training

    result = run_training(_config(config, set_), resume=resume)
    typer.echo(f"{result.run_dir}: {result.steps} steps ({result.stop_reason}), best dev BLEU {result.best_bleu:.2f}")
    if result.stop_reason in ("SIGINT", "SIGTERM"):
        raise typer.Exit(130)


RunSetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override the run's decoding.* or evaluation.* settings, e.g. "
                 "--set decoding.length_penalty=0.6 (repeatable)."),
]
ModelOption = Annotated[Path | None, typer.Option("--model", "-m", help="Run directory of a trained model.")]
CheckpointOption = Annotated[str, typer.Option("--checkpoint", help="'best' (by dev BLEU) or 'last'.")]
RunConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="Find the run directory from a config.")]
SplitOption = Annotated[str | None, typer.Option("--split", help="dev or test (default dev).")]
SrcOption = Annotated[Path | None, typer.Option("--src", help="External source file (with --ref).")]
RefOption = Annotated[Path | None, typer.Option("--ref", help="External reference file (with --src).")]
BeamOption = Annotated[int | None, typer.Option("--beam-size", "-b", min=1,
                                                help="Beam size (1 = greedy); default: the config's decoding.")]


def _run_dir(model: Path | None, config: Path | None) -> Path:
    if model is not None:
        return model
    if config is not None:
        return load_config(config, check_files=False).run_path
    raise typer.BadParameter("give --model RUN_DIR or --config X.yaml")


def _check_choice(value: str, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        raise typer.BadParameter(f"{option} must be one of {', '.join(choices)}, not {value!r}")
    return value


@command
def translate(
    sentence: Annotated[str | None, typer.Argument(help="A sentence to translate (else --input or stdin).")] = None,
    model: ModelOption = None,
    config: RunConfigOption = None,
    input_: Annotated[Path | None, typer.Option("--input", "-i", help="File to translate, one sentence a line.")]
    = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write translations here, not stdout.")]
    = None,
    beam_size: BeamOption = None,
    n_best: Annotated[int | None, typer.Option("--n-best", min=1, help="Print the N best hypotheses with scores; "
                                               "default: the config's decoding.n_best.")] = None,
    checkpoint: CheckpointOption = "best",
    set_: RunSetOption = None,
) -> None:
    """Translate a sentence, a file or standard input: one output line per input line, order kept."""
    from nmt.checkpoint import load_model
    from nmt.corpus import read_lines, read_stream
    from nmt.fileio import atomic_write_text
    from nmt.translate import Translator

    _check_choice(checkpoint, ("best", "last"), "--checkpoint")
    if sentence is not None:
        lines = [sentence]
    elif input_ is not None:
        lines = list(read_lines(input_))
    elif sys.stdin.isatty():
        raise typer.BadParameter("give a sentence, --input FILE, or pipe text into standard input")
    else:
        lines = read_stream(sys.stdin.buffer, "<stdin>")
    cfg, tokenizer, net, _ = load_model(_run_dir(model, config), checkpoint, set_ or [])
    beam = beam_size or cfg.decoding.beam_size
    n_best = n_best or cfg.decoding.n_best
    results = Translator(net, tokenizer, cfg.decoding).translate(lines, beam, n_best, progress=input_ is not None)
    if n_best == 1:
        text = "".join(r.text + "\n" for r in results)
    else:
        text = "".join(f"{i}\t{h.score:.4f}\t{t}\n" for i, r in enumerate(results)
                       for h, t in zip(r.hypotheses, r.texts, strict=True))
    if output is None:
        typer.echo(text, nl=False)
    else:
        atomic_write_text(output, text)


@command
def evaluate(
    model: ModelOption = None,
    config: RunConfigOption = None,
    split: SplitOption = None,
    src: SrcOption = None,
    ref: RefOption = None,
    beam_size: BeamOption = None,
    checkpoint: CheckpointOption = "best",
    set_: RunSetOption = None,
) -> None:
    """Translate a test set and score it with sacrebleu: BLEU, chrF and TER, with signatures."""
    from nmt.evaluate import evaluate as run_evaluation

    _check_choice(checkpoint, ("best", "last"), "--checkpoint")
    if split is not None:
        _check_choice(split, ("dev", "test"), "--split")
    report = run_evaluation(_run_dir(model, config), split, src, ref, checkpoint, beam_size,
                            progress=sys.stderr.isatty(), overrides=set_ or [])
    typer.echo(f"{report.name}: {report.sentences} sentences")
    for score in report.scores:
        typer.echo(str(score))
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
) -> None:
    """Translate a sentence, draw its attention heatmap (PNG + HTML) and print per-step attention statistics."""
    from nmt.analysis import inspect_sentence
    from nmt.report import format_table

    _check_choice(checkpoint, ("best", "last"), "--checkpoint")
    found = inspect_sentence(_run_dir(model, config), sentence, threshold, beam_size, checkpoint, output_dir,
                             set_ or [])
    stats = found.stats
    typer.echo(f"{found.source}\n-> {found.translation}\n")
    rows = [[label, f"{e:.3f}", f"{m:.3f}", n] for label, e, m, n in
            zip(found.tgt_labels, stats.entropy, stats.max_weight, stats.above_threshold, strict=True)]
    typer.echo(format_table(["target", "entropy", "max weight", f"> {threshold:g}"], rows))
    summary = stats.summary()
    typer.echo("mean ± std: " + ", ".join(f"{k} {m:.3f} ± {s:.3f}" for k, (m, s) in summary.items()))
    typer.echo(f"heatmap: {found.png}\n         {found.html}")


def _parse_buckets(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"--buckets {text!r}: give comma-separated lengths, e.g. 8,12") from None


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
) -> None:
    """BLEU, chrF, attention entropy and maximum weight by source length: a table and plots in the run dir."""
    from nmt.analysis import analyze as run_analysis
    from nmt.checkpoint import load_run_config
    from nmt.evaluate import test_set
    from nmt.report import format_table

    _check_choice(checkpoint, ("best", "last"), "--checkpoint")
    run_dir = _run_dir(model, config)
    name, sources, references = test_set(load_run_config(run_dir, set_ or []), split, src, ref)
    rows, png, report = run_analysis(run_dir, sources, references, name, _parse_buckets(buckets), beam_size,
                                     checkpoint, progress=sys.stderr.isatty(), overrides=set_ or [])
    typer.echo(format_table(["src words", "sentences", "BLEU", "chrF", "entropy", "max weight"],
                            [[r.label, r.sentences, f"{r.bleu:.2f}", f"{r.chrf:.2f}", f"{r.entropy:.3f}",
                              f"{r.max_weight:.3f}"] for r in rows]))
    typer.echo(f"plot: {png}\nreport: {report}")


@command
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run directories to put side by side.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the comparison plot.")]
    = Path("compare.png"),
) -> None:
    """Runs side by side: attention, size, training time and speed, memory, dev/test scores, attention entropy."""
    from nmt.analysis import compare_plot, summarize_run
    from nmt.report import format_table

    summaries = [summarize_run(run) for run in runs]
    typer.echo(format_table(
        ["run", "attention", "params", "train min", "tok/s", "peak MB", "dev BLEU", "dev chrF", "test BLEU",
         "entropy"],
        [[s.run, s.attention, f"{s.parameters:,}", f"{s.minutes:.1f}", f"{s.tokens_per_s:,.0f}",
          f"{s.peak_rss_mb:,.0f}", f"{s.dev_bleu:.2f}", f"{s.dev_chrf:.2f}",
          "-" if s.test_bleu is None else f"{s.test_bleu:.2f}", f"{s.entropy:.3f}"] for s in summaries]))
    typer.echo(f"plot: {compare_plot(summaries, output)}")
