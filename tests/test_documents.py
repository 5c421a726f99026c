"""Documents through translation: HTML and XML read into segments and inline tags, tags placed back by word
alignment, protected spans carried through. Invariants over synthetic alignments (balanced, nested as the
source, nothing lost) and the trained toy models, whose task (reverse the words, upper-case them) gives the
right placement of every tag."""

from __future__ import annotations

import re
import tracemalloc
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from toy import reverse_words
from typer.testing import CliRunner

from nmt.cli import app
from nmt.documents.markup import Segment, escape_text, read_items
from nmt.documents.placement import place, word_spans, write
from nmt.documents.spans import Protector
from nmt.documents.translate import DocumentTranslator
from nmt.errors import ArgumentError, DataError
from nmt.inference.translate import Translator
from nmt.runs.loading import load_model

runner = CliRunner()


class _Tags(HTMLParser):
    """The tags of a document in order, text left out: what must come through translation unchanged when
    sibling order is kept."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.depth, self.deepest, self.balanced = 0, 0, True

    def handle_starttag(self, tag, attrs):
        self.tags.append(f"<{tag} {sorted(attrs)}>")
        if tag not in ("br", "img", "hr", "input", "meta", "link", "wbr"):
            self.depth += 1
            self.deepest = max(self.deepest, self.depth)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(f"<{tag} {sorted(attrs)}/>")

    def handle_endtag(self, tag):
        self.tags.append(f"</{tag}>")
        self.depth -= 1
        self.balanced &= self.depth >= 0


def tags_of(markup: str) -> list[str]:
    parser = _Tags()
    parser.feed(markup)
    parser.close()
    assert parser.balanced and parser.depth == 0, markup
    return parser.tags


def tree_of(markup: str) -> list:
    """The tag tree with each node's children as a sorted list: siblings may change order in translation,
    nesting may not."""
    root: list = []
    stack = [root]
    for tag in tags_of(markup):
        if tag.startswith("</"):
            stack.pop()
        elif tag.endswith("/>") or tag.split()[0][1:] in ("br", "img", "hr"):
            stack[-1].append((tag, []))
        else:
            node = (tag, [])
            stack[-1].append(node)
            stack.append(node[1])

    def canonical(nodes):
        return sorted((tag, canonical(children)) for tag, children in nodes)

    return canonical(root)


def text_of(markup: str) -> str:
    return " ".join(re.sub(r"<[^>]*>", " ", markup).split())


# Reading ---------------------------------------------------------------------------------------------------

PAGE = """<!DOCTYPE html>
<html><head><title>ab ca</title><style>p { color: red; }</style><script>if (a < b) { x = "<b>"; }</script></head>
<body>
<!-- a comment: never translated -->
<p>ab <b>ca de</b> fo <a href="https://x.org/?a=1&amp;b=2" title="ab ca">gu <i>hi</i></a> jo</p>
<ul>
  <li>ab ca<ul><li>de <em>fo</em></li><li>gu</li></ul></li>
  <li translate="no">ab ca stays</li>
</ul>
<table><tr><th>ab</th><td>ca <span class="notranslate">DE FO</span> gu</td></tr></table>
<p>&lt;script&gt;ab&lt;/script&gt; ca &amp; de</p>
</body></html>
"""


def test_html_is_read_into_segments_with_inline_tags_and_copied_markup():
    items = list(read_items([PAGE[i:i + 13] for i in range(0, len(PAGE), 13)], "html"))  # any chunking
    copied = "".join(item for item in items if isinstance(item, str))
    segments = [item for item in items if isinstance(item, Segment)]
    assert [s.text for s in segments] == ["ab ca", "ab ca de fo gu hi jo", "ab ca", "de fo", "gu", "ab", "ca  gu",
                                          "<script>ab</script> ca & de"]
    paragraph = segments[1]
    assert [(m.open, m.close, paragraph.text[m.start:m.end]) for m in paragraph.marks] == [
        ("<b>", "</b>", "ca de"), ('<a href="https://x.org/?a=1&amp;b=2" title="ab ca">', "</a>", "gu hi"),
        ("<i>", "</i>", "hi")]
    assert paragraph.marks[2].parent == 1
    assert '<script>if (a < b) { x = "<b>"; }</script>' in copied and "<!-- a comment" in copied
    assert '<li translate="no">ab ca stays</li>' in copied  # a block kept verbatim
    assert segments[6].kept[0].raw == '<span class="notranslate">DE FO</span>'  # inline: kept in its sentence


def test_reading_is_streamed_block_by_block():
    """A document is read as it comes: the first block is out before the rest of the input is read."""
    consumed = []

    def chunks():
        yield "<p>ab ca</p><p>"
        consumed.append("rest")
        yield "de fo</p>" * 1000

    items = read_items(chunks(), "html")
    first = next(item for item in items if isinstance(item, Segment))
    assert first.text == "ab ca" and not consumed


def _peak_reading(fmt: str, size: int) -> int:
    """Bytes traced at most while reading a document of about `size` bytes fed in 16 KB chunks."""
    block = "<p>ab <b>ca</b> de &amp; fo</p>\n" * 500

    def chunks():
        yield "<doc>"
        for _ in range(size // len(block)):
            yield block
        yield "</doc>"

    tracemalloc.start()
    try:
        segments = sum(isinstance(item, Segment) for item in read_items(chunks(), fmt))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert segments >= size // len(block) * 500
    return peak


@pytest.mark.parametrize("fmt", ["html", "xml"])
def test_a_document_is_read_in_memory_that_does_not_grow_with_it(fmt):
    """Four times the document, not four times the memory: what is held is a chunk's blocks."""
    small, large = _peak_reading(fmt, 1 << 17), _peak_reading(fmt, 1 << 19)
    assert large < 1.5 * small, (small, large)


def test_hostile_xml_ends_in_a_result_or_one_error_naming_the_place():
    nested = "<doc>" + "<b>" * 10_000 + "ab" + "</b>" * 10_000 + "</doc>"
    [segment] = [item for item in read_items([nested], "xml") if isinstance(item, Segment)]
    assert len(segment.marks) == 10_000 and segment.marks[-1].parent == 9_998
    laughs = ('<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">' +
              "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8)) +
              ']><doc>&i;</doc>')
    items = list(read_items([laughs], "xml"))  # entities are copied as written, never expanded
    assert "".join(item for item in items if isinstance(item, str)).count("&i;") == 1
    with pytest.raises(DataError, match=r"line 1, column \d+: not well-formed XML"):
        list(read_items(["<doc>ab &undefined; <x</doc>"], "xml"))


def test_malformed_xml_is_refused_naming_line_and_column_and_cdata_is_kept():
    with pytest.raises(DataError, match=r"doc\.xml, line 2, column 8: not well-formed XML \(mismatched tag\)"):
        list(read_items(["<a>\n<b>ab</a></b>"], "xml", "doc.xml"))
    items = list(read_items(['<?xml version="1.0"?><doc>ab <![CDATA[<b>x</b>]]> ca &amp; <x id="1"></x></doc>'],
                            "xml"))
    segment = next(item for item in items if isinstance(item, Segment))
    assert segment.text == "ab  ca & "
    assert [m.open for m in segment.marks] == ["<![CDATA[<b>x</b>]]>", '<x id="1"/>']


# Placement -------------------------------------------------------------------------------------------------

def marks_of(markup: str) -> Segment:
    [segment] = [item for item in read_items([markup], "html") if isinstance(item, Segment)]
    return segment


def placed(markup: str, target: str, weights: np.ndarray) -> str:
    segment = marks_of(markup)
    return write(target, segment.marks, place(segment.marks, weights, word_spans(segment.text)), [], str,
                 segment.text)


def test_tags_follow_the_alignment_and_stay_balanced_when_it_crosses_them():
    reverse = np.eye(4)[::-1]  # target word j <- source word 3 - j
    assert placed("ab <b>ca de</b> fo", "FO DE CA AB", reverse) == "FO <b>DE CA</b> AB"
    assert placed("<i>ab</i> ca <x/>de fo", "FO DE CA AB", reverse) == "FO <x/>DE CA <i>AB</i>"
    crossing = np.eye(4)[[1, 3, 0, 2]]  # b's words land apart, around i's
    out = placed("<b>ab ca</b> <i>de</i> fo", "CA FO AB DE", crossing)
    assert tags_of(out) == ["<b []>", "</b>", "<i []>", "</i>"] or tags_of(out) == ["<i []>", "</i>", "<b []>",
                                                                                   "</b>"]
    assert text_of(out) == "CA FO AB DE"
    nested = placed("<b>ab <i>ca</i></b> de", "DE CA AB", np.eye(3)[[2, 1, 0]])
    assert nested == "DE <b><i>CA</i> AB</b>"  # the parent widens over its child


def test_text_is_escaped_and_markup_is_not():
    """Text that looks like markup stays text (a `<script>` in the source's text comes out escaped), while
    tags and their attributes are written as the source spelled them."""
    segment = marks_of('<p>&lt;script&gt; <a href="?a=1&amp;b=2">ab</a></p>')
    assert segment.text == "<script> ab"
    weights = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    out = write("<script> & AB", segment.marks, place(segment.marks, weights, word_spans(segment.text)), [],
                escape_text, segment.text)
    assert out == '&lt;script&gt; &amp; <a href="?a=1&amp;b=2">AB</a>'


@pytest.mark.parametrize("seed", range(20))
def test_any_alignment_gives_the_source_tree_and_every_word(seed):
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(12)]
    html, depth = [], 0
    for word in words:
        roll = rng.random()
        if roll < 0.3:
            html.append(f'<b class="{word}">')
            depth += 1
        elif roll < 0.45 and depth:
            html.append("</b>")
            depth -= 1
        elif roll < 0.55:
            html.append("<x/>" if rng.random() < 0.5 else "<img/>")
        html.append(f"{word} ")
    html.append("</b>" * depth)
    markup = "".join(html)
    weights = rng.dirichlet(np.ones(12), size=int(rng.integers(1, 15)))  # any target length, any map
    target = " ".join(f"t{j}" for j in range(weights.shape[0]))
    segment = marks_of(markup)
    out = write(target, segment.marks, place(segment.marks, weights, word_spans(segment.text)), [], str)
    assert tree_of(out) == tree_of(markup)
    assert text_of(out) == target


def test_ten_thousand_nested_tags_are_placed_without_recursion():
    markup = "<b>" * 10_000 + "ab ca" + "</b>" * 10_000
    out = placed(markup, "CA AB", np.eye(2)[::-1])
    assert out == "<b>" * 10_000 + "CA AB" + "</b>" * 10_000


# Protected spans -------------------------------------------------------------------------------------------

def test_protected_spans_are_found_by_kind_and_never_overlap():
    text = "Mail info@example.org, see https://ex.org/a?b=1. {name} has %d items, %(count)s of 1.234,5 at 12:30."
    found = [(text[s.start:s.end], s.kind) for s in Protector(["items"]).find(text)]
    assert found == [("info@example.org", "email"), ("https://ex.org/a?b=1", "url"), ("{name}", "placeholder"),
                     ("%d", "placeholder"), ("items", "protect"), ("%(count)s", "placeholder"),
                     ("1.234,5", "number"), ("12:30", "number")]
    assert Protector(builtin=False).find(text) == []


# The trained toy models ------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["transformer", "rnn"])
def toy(request, trained_transformer, trained_run):
    return load_model(trained_transformer if request.param == "transformer" else trained_run)


def test_tags_are_placed_on_the_reversed_words(toy):
    """The reversal task aligns target word j with source word n - 1 - j: every tag must land there."""
    translator = DocumentTranslator(toy, "html")
    page = ('<p>ab <b>ca de</b> fo</p><ul><li><i>gu</i> hi jo</li>'
            '<li>ab <a href="x?a=1&amp;b=2">ca <b>de</b></a> fo gu</li></ul>')
    assert translator.translate(page) == ('<p>FO <b>DE CA</b> AB</p><ul><li>JO HI <i>GU</i></li>'
                                          '<li>GU FO <a href="x?a=1&amp;b=2"><b>DE</b> CA</a> AB</li></ul>')
    assert translator.stats.tags == 4 and translator.stats.units == 3


def test_a_document_round_trips_its_tag_tree_and_a_plain_sentence_translates_as_plain_text(toy):
    translator = DocumentTranslator(toy, "html")
    out = translator.translate(PAGE)
    assert tree_of(out) == tree_of(PAGE)
    assert '<li translate="no">ab ca stays</li>' in out and '<script>if (a < b) { x = "<b>"; }</script>' in out
    assert '<span class="notranslate">DE FO</span>' in out  # kept inside its translated sentence
    for kept in ('<span class="notranslate">X</span>', "<code>x = 1</code>"):  # at either edge of a sentence
        assert kept in translator.translate(f"<p>ab {kept}</p>") and kept in translator.translate(f"<p>{kept} ab</p>")
    plain = Translator.for_run(toy).translate(["ab ca de fo"])[0].text
    assert translator.translate("<p>ab ca de fo</p>") == f"<p>{plain}</p>"


def test_xliff_placeholders_round_trip(toy):
    document = ('<?xml version="1.0" encoding="UTF-8"?>\n<xliff version="1.2"><file><body>\n'
                '<trans-unit id="1"><source>ab <x id="1"/>ca <g id="2">de fo</g></source></trans-unit>\n'
                '<trans-unit id="2"><source><bx id="3"/>gu hi<ex id="3"/></source></trans-unit>\n'
                '</body></file></xliff>\n')
    out = DocumentTranslator(toy, "xml").translate(document)
    assert out.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<xliff version="1.2">')
    assert '<source><g id="2">FO DE</g> <x id="1"/>CA AB</source>' in out
    assert sorted(re.findall(r"<[^>]+>", out)) == sorted(re.findall(r"<[^>]+>", document.replace("></x>", "/>")))


@pytest.mark.parametrize("markup", [
    "<p>ab <b>ca de fo",  # unclosed
    "<p>ab </b> ca</i> de</p>",  # stray end tags
    "<b>" * 10_000 + "ab ca" + "</b>" * 10_000,
    "<p>ab &amp; ca &#x26; &nbsp; de &bogus; <![CDATA[x]]></p>",
    "<p><b>ab <i>ca</b> de</i></p>",  # misnested
    "<",
])
def test_hostile_html_ends_in_a_result(toy, markup):
    out = DocumentTranslator(toy, "html").translate(markup)
    assert isinstance(out, str)


def test_protected_spans_come_back_in_text(toy):
    """The toy vocabulary has no digits: spans are placed by alignment alone, and each comes back whole."""
    spans = ["https://ex.org/a?b=1", "info@ex.org", "{name}", "%(count)s", "42"]
    translator = DocumentTranslator(toy, "text", protect=True)
    for span in spans:
        out = translator.translate(f"ab ca {span} de fo\n")
        assert out.count(span) == 1 and out.endswith("\n")
        assert out.replace(span, "").split() == reverse_words("ab ca de fo").split()


def test_documents_on_the_command_line_and_bad_formats(trained_transformer, tmp_path):
    page = tmp_path / "page.html"
    page.write_text("<p>ab <b>ca</b> de</p>\n<p>fo gu</p>\n", encoding="utf-8")
    out = tmp_path / "page.yy.html"
    result = runner.invoke(app, ["translate", "--model", str(trained_transformer), "--input", str(page),
                                 "--format", "html", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8") == "<p>DE <b>CA</b> AB</p>\n<p>GU FO</p>\n"
    result = runner.invoke(app, ["translate", "--model", str(trained_transformer), "--format", "pdf", "ab"])
    assert result.exit_code == 2 and "pdf" in result.output
    result = runner.invoke(app, ["translate", "--model", str(trained_transformer), "--format", "html", "--n-best",
                                 "2", "<p>ab</p>"])
    assert result.exit_code == 2 and "--n-best" in result.output
    bad = tmp_path / "bad.xml"
    bad.write_text("<a>\n<b></a>\n", encoding="utf-8")
    result = runner.invoke(app, ["translate", "--model", str(trained_transformer), "--input", str(bad), "--format",
                                 "xml", "--output", str(tmp_path / "bad.out.xml")])
    assert result.exit_code == 2 and "bad.xml, line 2, column 6: not well-formed XML" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "bad.out.xml").exists()


def test_api_formats(trained_transformer):
    import nmt

    run = nmt.load(trained_transformer)
    [found] = run.translate("<p>ab <i>ca</i></p>", format="html")
    assert found.text == "<p><i>CA</i> AB</p>" and found.hypotheses == []
    with pytest.raises(ArgumentError, match="format"):
        run.translate("ab", format="pdf")
    with pytest.raises(ArgumentError, match="prefix"):
        run.translate("<p>ab</p>", format="html", prefix="CA")
    with pytest.raises(ArgumentError, match="9 is outside 1..2: the model has 2 layers"):
        DocumentTranslator(run.loaded, "html", align_layer=9)


def test_protect_patterns_are_checked(toy_config_path):
    from nmt.config import load_config
    from nmt.errors import ConfigError

    with pytest.raises(ConfigError, match="decoding.protect"):
        load_config(toy_config_path, ["decoding.protect=['(']"])
    with pytest.raises(ConfigError, match="matches empty text"):
        load_config(toy_config_path, ["decoding.protect=['x*']"])


def test_a_large_document_keeps_its_blocks(trained_transformer, tmp_path):
    """Many blocks in several batches: every block out, in order."""
    loaded = load_model(Path(trained_transformer))
    blocks = [f"<li>ab <b>ca</b> {'de' if i % 2 else 'fo'}</li>" for i in range(300)]
    out = DocumentTranslator(loaded, "html").translate("<ul>" + "".join(blocks) + "</ul>")
    expected = [f"<li>{'DE' if i % 2 else 'FO'} <b>CA</b> AB</li>" for i in range(300)]
    assert out == "<ul>" + "".join(expected) + "</ul>"
