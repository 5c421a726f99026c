"""A trained run as a Python object, and training and comparing runs from Python: what the `nmt` commands do,
returning objects instead of printing, for notebooks and scripts."""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nmt.api.inline import explorer_html, page_data
from nmt.api.views import AttentionView, KindMaps, plotting
from nmt.config import MAX_ATTRIBUTION_COST, MAX_STEPS, Config, MbrConfig, apply_override, parse_config
from nmt.data.splits import EvalSet, eval_set
from nmt.documents.translate import DocumentTranslator, check_format
from nmt.errors import ArgumentError, ConfigError
from nmt.inference import arguments, translate
from nmt.inference.forced import ScoredPair, score_with
from nmt.inference.metrics import Score
from nmt.inference.options import DecodingOptions
from nmt.inference.scoring import decode_and_score
from nmt.inference.steer import Glossary, Term, steer_lines
from nmt.inference.streaming import StreamedToken, TextDeltas
from nmt.inference.translate import Translator
from nmt.inspect.attribution import METHODS, AttributionView, attribution_view
from nmt.inspect.view import attention_view, layer_views, pick
from nmt.runs.loading import LoadedRun, load_model, read_config
from nmt.serve.service import ModelRegistry, ServedModel, translate_response

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from nmt.inspect.comparison import RunSummary


def _per_text(value: str | Sequence[str] | None, count: int, field: str) -> list[str] | None:
    """One text for every text, or a sequence of one per text."""
    if value is None:
        return None
    if isinstance(value, str):
        return [arguments.text(value, field)] * count
    found = arguments.texts(value, field)
    if len(found) != count:
        raise ArgumentError(field, f"{len(found)} for {count} texts: give one for every text or one per text")
    return found


def _constraints_per_text(value: Sequence[str] | Sequence[Sequence[str]] | None, count: int
                          ) -> list[list[str]] | None:
    """Phrases for every text (a sequence of strings), or a sequence of phrase lists, one per text."""
    if value is None:
        return None
    if isinstance(value, str):
        raise ArgumentError("constraints", "a list of phrases (or of phrase lists, one per text), not one string")
    items = list(value)
    if all(isinstance(item, str) for item in items):
        return [arguments.texts(items, "constraints")] * count
    if len(items) != count:
        raise ArgumentError("constraints", f"{len(items)} phrase lists for {count} texts: one per text")
    return [arguments.texts(item, f"constraints[{i}]") if not isinstance(item, str) else [item]
            for i, item in enumerate(items)]


def _hypotheses(found: translate.Translation) -> list[Hypothesis]:
    """A translation's hypotheses as the API gives them, with their expected utility under MBR."""
    utilities: list[float | None] = list(found.utilities) if found.utilities else [None] * len(found.texts)
    return [Hypothesis(text, h.score, h.log_prob, utility)
            for h, text, utility in zip(found.hypotheses, found.texts, utilities, strict=True)]


def _glossary(value: Glossary | Mapping[str, str] | str | Path | None) -> Glossary | None:
    if value is None or isinstance(value, Glossary):
        return value
    if isinstance(value, Mapping):
        terms = [Term(arguments.text(source, "glossary").strip(), arguments.text(target, f"glossary[{source!r}]")
                      .strip(), number) for number, (source, target) in enumerate(value.items(), start=1)]
        if any(not term.source or not term.target for term in terms):
            raise ArgumentError("glossary", "a source or target term is empty")
        return Glossary(terms)
    return Glossary.read(Path(value))


@dataclass
class Hypothesis:
    text: str
    score: float  # what the beam ranks by: log p / length penalty
    log_prob: float
    utility: float | None = None  # MBR: its expected utility against the other candidates (what ranks them)


@dataclass
class Translation:
    """One source text's translation: `text` is the best of `hypotheses` (n-best or alternatives, best first);
    `missing` lists the constraints it lacks (the length limit left no room, or a repeated n-gram was banned; a
    warning says so)."""

    source: str
    text: str
    hypotheses: list[Hypothesis]
    missing: list[str] = field(default_factory=list)
    quality: float | None = None  # an estimate of the text's sentence chrF, 0-100, calibrated on dev (README)


@dataclass
class Evaluation:
    name: str  # the split, or "sources" for given sentences
    sentences: int
    scores: list[Score]  # BLEU, chrF, TER, each with its sacrebleu signature
    hypotheses: list[str]
    quality_spearman: float | None = None  # how well the quality scores rank the translations by sentence chrF

    @property
    def bleu(self) -> float:
        return self.scores[0].score


class Run:
    """A trained run loaded once: translate, inspect attention, score and evaluate without reloading."""

    def __init__(self, loaded: LoadedRun, checkpoint: str = "best"):
        self.loaded, self.which = loaded, checkpoint
        self._translator = Translator.for_run(loaded)

    @property
    def path(self) -> Path:
        return self.loaded.run.path

    @property
    def config(self) -> Config:
        """The run's saved config (frozen)."""
        return self.loaded.config

    @property
    def checkpoint(self) -> str:
        """The folder name of the checkpoint loaded, e.g. `step-800`."""
        return self.loaded.checkpoint.path.name

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, {self.config.model.summary}, {self.checkpoint})"

    def metrics(self) -> list[dict[str, Any]]:
        """The training log (metrics.jsonl): one record per logged step (loss, tokens_per_s, lr, elapsed) and
        per validation (dev_loss, dev_bleu, dev_chrf, dev_attention_entropy, peak_rss_mb)."""
        return self.loaded.run.metrics()

    def split(self, name: str = "dev") -> EvalSet:
        """A split of the run's corpus as training read and cleaned it: `.sources` and `.references`."""
        return eval_set(self.config.data, name)

    def translate(self, texts: str | Sequence[str], beam_size: int | None = None, n_best: int | None = None,
                  length_penalty: float | None = None, *, prefix: str | Sequence[str] | None = None,
                  constraints: Sequence[str] | Sequence[Sequence[str]] | None = None,
                  glossary: Glossary | Mapping[str, str] | str | Path | None = None,
                  no_repeat_ngram_size: int | None = None, repetition_penalty: float | None = None,
                  n_alternatives: int | None = None, on_token: Callable[[StreamedToken], None] | None = None,
                  format: str = "text", protect: bool | None = None,
                  mbr: bool | Mapping[str, object] | MbrConfig | None = None, seed: int | None = None
                  ) -> list[Translation]:
        """Translate raw texts (one string or several); beam size, n-best and length penalty default to the run's
        decoding settings, within the command line's bounds. Each result holds the `n_best` hypotheses with their
        scores.

        Steering: `prefix` (one for every text, or one per text) begins each translation; `constraints` (phrases
        for every text, or a list of phrases per text) must appear in it, and so must the target term of each
        `glossary` entry (a Glossary, a {source term: target term} mapping or a glossary file) whose source term
        the text contains. `no_repeat_ngram_size` and `repetition_penalty` default to the run's.
        `n_alternatives` K returns the K best continuations that differ at the first word after the prefix.
        `on_token` (one text) receives each token of the best hypothesis as it is decoded, its text `delta`s
        joining to the translation.

        Documents: with `format` "html" or "xml" each text is a document, translated sentence by sentence with
        its inline tags placed by word alignment (its `hypotheses` are left empty); `protect` (default: on for
        documents) carries URLs, e-mail addresses, numbers and placeholders through unchanged, in text too.

        Minimum Bayes risk: `mbr=True` chooses each translation among candidates with the run's decoding.mbr
        settings (else the defaults), a mapping ({"candidates": 32, "source": "beam", "metric": "bleu"}) with
        those over them, False turns off the run's; the hypotheses are then ranked by expected `utility`. `seed`
        draws sampled candidates (default 0). Each result's `quality` estimates its sentence chrF (README,
        "Quality scores")."""
        lines = arguments.texts(texts, "texts")
        if check_format(format) != "text" or protect:
            return self._translate_documents(lines, format, protect, beam_size, length_penalty, glossary,
                                             no_repeat_ngram_size, repetition_penalty, n_best=n_best, prefix=prefix,
                                             constraints=constraints, n_alternatives=n_alternatives,
                                             on_token=on_token, mbr=mbr, seed=seed)
        steers = steer_lines(lines, _per_text(prefix, len(lines), "prefix"),
                             _constraints_per_text(constraints, len(lines)), _glossary(glossary))
        listener = TextDeltas(self.loaded.tokenizer, on_token) if on_token is not None else None
        found = self._translator.translate(lines, beam_size, n_best, length_penalty, steers=steers,
                                           no_repeat_ngram_size=no_repeat_ngram_size,
                                           repetition_penalty=repetition_penalty, n_alternatives=n_alternatives,
                                           listener=listener, mbr=mbr, seed=seed)
        if listener is not None and found:
            listener.rest(found[0].text)  # the deltas are the whole text: nothing is left over
        return [Translation(t.source, t.text, _hypotheses(t), t.missing, t.quality) for t in found]

    def _translate_documents(self, documents: Sequence[str], fmt: str, protect: bool | None, beam_size: int | None,
                             length_penalty: float | None, glossary: Glossary | Mapping[str, str] | str | Path | None,
                             no_repeat_ngram_size: int | None, repetition_penalty: float | None,
                             **others: object) -> list[Translation]:
        given = [name for name, value in others.items() if value is not None]
        if given:
            raise ArgumentError(given[0], f"goes with sentences, not with format={fmt!r} or protect")
        translator = DocumentTranslator(self.loaded, fmt, protect=fmt != "text" if protect is None else protect,
                                        beam_size=beam_size, length_penalty=length_penalty,
                                        glossary=_glossary(glossary),
                                        no_repeat_ngram_size=no_repeat_ngram_size,
                                        repetition_penalty=repetition_penalty)
        return [Translation(document, translator.translate(document), []) for document in documents]

    def _kind_maps(self, text: str, kind: str, threshold: float, beam_size: int, words: bool = False,
                   eos: bool = True) -> KindMaps:
        """Every layer's maps of `kind`, each head and their average, from one translation."""
        return KindMaps.of(layer_views(self.loaded, text, threshold=threshold, beam_size=beam_size, kind=kind,
                                       translator=self._translator, words=words, eos=eos), threshold)

    def attention(self, text: str, kind: str = "cross", layer: int | None = None, head: int | None = None,
                  threshold: float = 0.1, beam_size: int | None = None, words: bool = False, eos: bool = True
                  ) -> AttentionView:
        """Translate `text` (beam size default: the run's) and return where each token looked. `kind` is one of
        the model's attention kinds (`describe().kinds`: cross for every model; encoder and decoder
        self-attention for a Transformer); with neither `layer` nor `head` the view holds every head of every
        layer, with `layer` every head of that layer, with `head` that head (of `layer`, default the last).
        `words` merges subwords into words (a source word's pieces summed, a target word's averaged: rows still
        sum to 1); `eos=False` leaves EOS out. Statistics are of the map so shown."""
        beam_size = DecodingOptions.resolve(self.config.decoding, beam_size, mbr=False).beam_size  # the search's
        maps = self._kind_maps(text, kind, threshold, beam_size, words, eos)
        count = len(maps.averages)
        layer, head = pick(count, layer, "layer"), pick(len(maps.heads[0]), head, "head")
        if head is not None:
            chosen = [maps.heads[(layer or count) - 1][head - 1]]
        else:
            chosen = [m for i, per_layer in enumerate(maps.heads) if layer in (None, i + 1) for m in per_layer]
        return AttentionView(text, maps.translation, kind, layer, head, threshold, beam_size, maps.row_tokens,
                             maps.col_tokens, chosen, maps,
                             kinds=lambda other: self._kind_maps(text, other, threshold, beam_size, words, eos),
                             page=self._page, words=words, eos=eos)

    def attribution(self, text: str, method: str = "input_x_gradient", layer: int | None = None,
                    head: int | None = None, words: bool = False, eos: bool = True, beam_size: int | None = None,
                    steps: int = 32, max_cost: int | None = MAX_ATTRIBUTION_COST) -> AttributionView:
        """Translate `text` and attribute each target token to the source tokens by gradients (captum:
        input_x_gradient, or integrated_gradients with `steps`), beside the cross-attention of `head` of `layer`
        (default the last layer's heads averaged), with Spearman's rank correlation of the two per row
        (`.spearman`, `.mean_spearman`). `words` and `eos` shape both as in `attention`. Refused above `max_cost`
        (target x source tokens x steps; None: no bound). Safe beside other threads using this run: the
        gradients are taken on a copy of the model."""
        method = arguments.choice(method, "method", METHODS)
        steps = arguments.integer(steps, "steps", 1, MAX_STEPS)
        max_cost = None if max_cost is None else arguments.integer(max_cost, "max_cost", 1)
        view = attention_view(self.loaded, text, beam_size=beam_size, layer=layer, head=head,
                              translator=self._translator, words=words, eos=eos)
        return attribution_view(self.loaded, view, method, steps, max_cost)

    def _page(self, view: AttentionView) -> str:
        """The explorer page inline: what the server would answer this run's page, for the view's sentence."""
        served = ServedModel(self.path.name, self.loaded, self._translator)
        described = {**served.describe(), "beam_size": view.beam_size}
        registry = ModelRegistry([served])
        decoding = registry.decoding(None, view.beam_size, min(view.beam_size, 5), None)  # what the page asks
        translate = translate_response(decoding, registry.translate(decoding, [view.source]))
        return explorer_html(page_data(view, described, translate))

    def score(self, sources: str | Sequence[str], targets: str | Sequence[str]) -> list[ScoredPair]:
        """Forced decoding: each target's log-probability under the model, per sentence and per token (one pair
        when given two strings)."""
        return score_with(self.loaded, *arguments.aligned_texts(sources, targets, ("sources", "targets")))

    def evaluate(self, split: str | None = None, sources: str | Sequence[str] | None = None,
                 references: str | Sequence[str] | None = None, beam_size: int | None = None,
                 mbr: bool | Mapping[str, object] | MbrConfig | None = None) -> Evaluation:
        """BLEU, chrF and TER of a split of the run's corpus (default dev) or of given sources and references
        (`mbr` as `translate` takes it), and the quality scores' rank correlation with sentence chrF; writes
        nothing (`nmt evaluate` keeps the hypotheses and a report in the run directory)."""
        if (sources is None) != (references is None):
            raise ConfigError("evaluate: give sources and references together")
        if sources is not None and references is not None:
            if split is not None:
                raise ConfigError("evaluate: give a split or sources and references, not both")
            given = arguments.aligned_texts(sources, references, ("sources", "references"))
            if not given[0]:
                raise ArgumentError("sources", "no texts to evaluate")
            found = EvalSet("sources", *given)
        else:
            found = eval_set(self.config.data, split)
        decoded = decode_and_score(self._translator, found, self.config.evaluation, beam_size, mbr=mbr)
        return Evaluation(found.name, len(found.sources), decoded.scores(found.references, self.config.evaluation),
                          decoded.hypotheses, decoded.quality_spearman(found.references, self.config.evaluation))


def load(run_dir: str | Path, checkpoint: str = "best") -> Run:
    """A trained run from its directory: `checkpoint` is best (by dev BLEU, the moving average's too), last,
    averaged, ema (the moving average of the weights, training.ema) or a checkpoint's folder name
    (`step-00003000`); any other name is an error."""
    return Run(load_model(Path(run_dir), checkpoint), checkpoint)


def _assignments(overrides: Mapping[str, Any], prefix: str = "") -> list[str]:
    """`training__max_steps=5` or `training={"max_steps": 5}` as `--set training.max_steps=5`."""
    found = []
    for key, value in overrides.items():
        dotted = prefix + key.replace("__", ".")
        if isinstance(value, Mapping):
            found += _assignments(value, dotted + ".")
        else:
            found.append(f"{dotted}={json.dumps(value)}")
    return found


def train(config: str | Path | Config, resume: bool = False, **overrides: Any) -> Run:
    """Train the run a config describes and load its best checkpoint. Keyword overrides change the config as
    `--set` does: `training__max_steps=200` or `training={"max_steps": 200}`."""
    from nmt.training.recipe import train as run_training

    assignments = _assignments(overrides)
    if isinstance(config, Config):
        raw = config.model_dump(mode="json")
        for assignment in assignments:
            apply_override(raw, assignment)
        config = parse_config(raw, source=f"config {config.name}", check_files=True)
    else:
        config = read_config(Path(config), assignments)
    return load(run_training(config, resume=resume, show_progress=True).run_dir)


class Comparison(list["RunSummary"]):
    """Runs side by side (`nmt compare`): one record per run, shown as a table in a notebook."""

    COLUMNS = ("run", "model", "parameters", "minutes", "tokens_per_s", "peak_rss_mb", "dev_bleu", "dev_chrf",
               "test_bleu", "entropy")

    def records(self) -> list[dict[str, Any]]:
        return [asdict(s) for s in self]

    def _repr_html_(self) -> str:
        def cell(value: object) -> str:
            shown = "-" if value is None else f"{value:,.2f}" if isinstance(value, float) \
                else f"{value:,}" if isinstance(value, int) else str(value)
            return f"<td>{html.escape(shown)}</td>"

        head = "".join(f"<th>{c}</th>" for c in self.COLUMNS)
        rows = "".join(f"<tr>{''.join(cell(r[c]) for c in self.COLUMNS)}</tr>" for r in self.records())
        return f"<table><tr>{head}</tr>{rows}</table>"

    def plot(self) -> Figure:
        """Best dev BLEU, attention entropy and training speed per run (the `nmt compare` plot)."""
        plotting()
        from nmt.inspect.comparison import compare_figure

        return compare_figure(self)


def compare(runs: Sequence[Run | str | Path]) -> Comparison:
    """What each run achieved, from its directory alone (no model is built)."""
    from nmt.inspect.comparison import summarize_run  # with plotting: loaded when asked for

    return Comparison(summarize_run(r.path if isinstance(r, Run) else Path(r)) for r in runs)
