"""HTML and XML read as a stream of what is copied (`str`: markup and whitespace between blocks, already
serialized) and what is translated (`Segment`: a block's text with its inline tags taken out, each tag kept as
a `Mark` at the text offsets it enclosed).

Block tags (`<p>`, `<li>`, `<td>`, `<br>`, ...) end a segment; inline tags (`<b>`, `<a href=...>`, `<x/>`)
stay inside one. Attributes are never translated: a tag is written back as the source spelled it (HTML) or
as the parser read it (XML). Comments, `<script>`, `<style>`, CDATA and elements marked `translate="no"` or
`class="notranslate"` are copied verbatim. Text is unescaped on reading and escaped again on writing, so a
`&lt;script&gt;` in the source stays text.

The parsers are the standard library's: `html.parser` (recovers from malformed HTML as browsers do) and
expat (refuses malformed XML, naming the line and column). Both are fed in chunks, so a document of any size
is read in the memory of its largest block."""

from __future__ import annotations

import html
import xml.parsers.expat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from xml.sax.saxutils import quoteattr

from nmt.errors import DataError

FORMATS = ("text", "html", "xml")

HTML_BLOCKS = frozenset(
    "address article aside blockquote body br caption dd details dialog div dl dt fieldset figcaption figure "
    "footer form h1 h2 h3 h4 h5 h6 head header hgroup hr html li main nav ol option p pre section summary table "
    "tbody td tfoot th thead title tr ul".split())
HTML_VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())
HTML_VERBATIM = frozenset({"script", "style", "code", "kbd", "samp", "textarea"})
XML_INLINE = frozenset(
    "a abbr b bpt bx cite code em emph ept ex g hi i it mrk pc ph q sc ec span strong sub sup term u x".split())
"""XML has no block elements of its own: these inline elements of XLIFF, TMX, DocBook, TEI and HTML stay
inside a segment, every other element ends one."""


@dataclass
class Mark:
    """An inline tag of a segment: a pair (`open` ... `close`, around text[start:end]) or a point (`open`
    alone at `start`: a self-closing tag, a comment, a stray end tag). `close` is empty for a pair the source
    never closed. `parent` is the index of the enclosing pair in the segment's marks (-1: none)."""

    open: str
    close: str
    start: int
    end: int
    parent: int
    point: bool
    spaced: bool = False  # a point that is a word of text (a protected span): written with a space beside it


@dataclass
class Kept:
    """Source markup kept verbatim inside a segment's text (a `translate="no"` element): `raw` is written in
    place of a stand-in word the model copies."""

    at: int
    raw: str


@dataclass
class Segment:
    text: str
    marks: list[Mark] = field(default_factory=list)
    kept: list[Kept] = field(default_factory=list)


Item = str | Segment


def _local(name: str) -> str:
    return name.rsplit(":", 1)[-1].lower()


def _verbatim_by_attributes(attrs: dict[str, str | None]) -> bool:
    return attrs.get("translate") == "no" or "notranslate" in (attrs.get("class") or "").split()


class _Builder:
    """Turns parser events into items; one for HTML and XML alike, told which tags are blocks."""

    def __init__(self, is_block: Callable[[str], bool], verbatim_tags: frozenset[str]):
        self.is_block, self.verbatim_tags, self.escape = is_block, verbatim_tags, escape_text
        self.items: list[Item] = []
        self._reset()
        self._verbatim: list[str] = []  # the kept element's markup so far
        self._verbatim_name, self._verbatim_depth, self._verbatim_raw_text = "", 0, False

    def _reset(self) -> None:
        self._parts: list[str] = []
        self._length = 0
        self._marks: list[Mark] = []
        self._kept: list[Kept] = []
        self._open: list[tuple[str, int]] = []  # (tag name, mark index) of the pairs open here

    def _has_content(self) -> bool:
        return bool(self._marks or self._kept or any(part.strip() for part in self._parts))

    def flush(self) -> None:
        """End the segment: one with text or tags is translated, whitespace alone is copied."""
        if self._has_content():
            for _, index in self._open:  # never closed in this block
                self._marks[index].end = self._length
            self.items.append(Segment("".join(self._parts), self._marks, self._kept))
        elif self._parts:
            self.items.append(self.escape("".join(self._parts)))
        self._reset()

    def _copy(self, raw: str) -> None:
        self.flush()
        self.items.append(raw)

    def _point(self, raw: str) -> None:
        parent = self._open[-1][1] if self._open else -1
        self._marks.append(Mark(raw, "", self._length, self._length, parent, True))

    def start(self, name: str, raw: str, attrs: dict[str, str | None], void: bool) -> None:
        if self._verbatim_depth:
            self._verbatim.append(raw)
            self._verbatim_depth += not void and name == self._verbatim_name
            return
        block = self.is_block(name)
        if not void and (_verbatim_by_attributes(attrs) or name in self.verbatim_tags):
            if block:
                self.flush()
            self._verbatim, self._verbatim_name, self._verbatim_depth = [raw], name, 1
            self._verbatim_raw_text = name in ("script", "style")
            return
        if block:
            self._copy(raw)
        elif void:
            self._point(raw)
        else:
            parent = self._open[-1][1] if self._open else -1
            self._open.append((name, len(self._marks)))
            self._marks.append(Mark(raw, "", self._length, self._length, parent, False))

    def end(self, name: str, raw: str) -> None:
        if self._verbatim_depth:
            self._verbatim.append(raw)
            self._verbatim_depth -= name == self._verbatim_name
            if not self._verbatim_depth:
                self._end_verbatim(name)
            return
        if self.is_block(name):
            self._copy(raw)
            return
        names = [open_name for open_name, _ in self._open]
        if name not in names:
            self._point(raw)  # a stray end tag: copied where it was
            return
        while self._open:
            open_name, index = self._open.pop()
            self._marks[index].end = self._length
            if open_name == name:
                self._marks[index].close = raw
                return

    def _end_verbatim(self, name: str) -> None:
        raw = "".join(self._verbatim)
        self._verbatim = []
        if self.is_block(name) or name in ("script", "style"):
            self._copy(raw)
        else:
            self._kept.append(Kept(self._length, raw))

    def text(self, data: str) -> None:
        if self._verbatim_depth:
            self._verbatim.append(data if self._verbatim_raw_text else self.escape(data))
            return
        self._parts.append(data)
        self._length += len(data)

    def markup(self, raw: str) -> None:
        """A comment, processing instruction, declaration or CDATA section: a point inside a segment with
        content, else copied."""
        if self._verbatim_depth:
            self._verbatim.append(raw)
        elif self._has_content():
            self._point(raw)
        else:
            self._copy(raw)

    def take(self) -> list[Item]:
        items, self.items = self.items, []
        return items


def escape_text(text: str) -> str:
    """Text as HTML or XML character data: &, < and > escaped."""
    return html.escape(text, quote=False)


class _HtmlReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.builder = _Builder(lambda name: name in HTML_BLOCKS, HTML_VERBATIM)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.builder.start(tag, self.get_starttag_text() or f"<{tag}>", dict(attrs), tag in HTML_VOID)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.builder.start(tag, self.get_starttag_text() or f"<{tag}/>", dict(attrs), True)

    def handle_endtag(self, tag: str) -> None:
        self.builder.end(tag, f"</{tag}>")

    def handle_data(self, data: str) -> None:
        self.builder.text(data)

    def handle_comment(self, data: str) -> None:
        self.builder.markup(f"<!--{data}-->")

    def handle_decl(self, decl: str) -> None:
        self.builder.markup(f"<!{decl}>")

    def handle_pi(self, data: str) -> None:
        self.builder.markup(f"<?{data}>")

    def unknown_decl(self, data: str) -> None:
        self.builder.markup(f"<![{data}]>")


def read_html(chunks: Iterable[str]) -> Iterator[Item]:
    """Items of an HTML document fed in chunks; malformed markup is read as far as the parser recovers."""
    reader = _HtmlReader()
    for chunk in chunks:
        reader.feed(chunk)
        yield from reader.builder.take()
    reader.close()
    reader.builder.flush()
    yield from reader.builder.take()


class _XmlReader:
    """expat without namespace processing: names as written. An element with nothing inside is written
    self-closing (`<x/>`), as XML allows either spelling."""

    def __init__(self, name: str):
        self.name = name
        self.builder = _Builder(lambda tag: _local(tag) not in XML_INLINE, frozenset())
        self.parser = xml.parsers.expat.ParserCreate()
        self.parser.ordered_attributes = True
        self.parser.StartElementHandler = self._start
        self.parser.EndElementHandler = self._end
        self.parser.CharacterDataHandler = self._text
        self.parser.StartCdataSectionHandler = self._start_cdata
        self.parser.EndCdataSectionHandler = self._end_cdata
        self.parser.DefaultHandler = self._default  # declarations, comments, PIs, entity references: as written
        self._pending: tuple[str, list[str]] | None = None  # a start tag not yet written: maybe empty
        self._cdata: list[str] | None = None

    def _flush_pending(self) -> None:
        if self._pending is not None:
            name, attrs = self._pending
            self._pending = None
            pairs = dict(zip(attrs[::2], attrs[1::2], strict=True))
            self.builder.start(name, f"<{name}{_attributes(attrs)}>", dict(pairs), False)

    def _start(self, name: str, attrs: list[str]) -> None:
        self._flush_pending()
        self._pending = (name, attrs)

    def _end(self, name: str) -> None:
        if self._pending is not None:  # nothing inside
            _, attrs = self._pending
            self._pending = None
            pairs = dict(zip(attrs[::2], attrs[1::2], strict=True))
            self.builder.start(name, f"<{name}{_attributes(attrs)}/>", dict(pairs), True)
            return
        self.builder.end(name, f"</{name}>")

    def _text(self, data: str) -> None:
        self._flush_pending()
        if self._cdata is not None:
            self._cdata.append(data)
        else:
            self.builder.text(data)

    def _start_cdata(self) -> None:
        self._flush_pending()
        self._cdata = []

    def _end_cdata(self) -> None:
        content = "".join(self._cdata or [])
        self._cdata = None
        self.builder.markup(f"<![CDATA[{content}]]>")

    def _default(self, data: str) -> None:
        self._flush_pending()
        self.builder.markup(data)

    def feed(self, chunk: str, final: bool = False) -> None:
        try:
            self.parser.Parse(chunk, final)
        except xml.parsers.expat.ExpatError as err:
            message = xml.parsers.expat.ErrorString(err.code)
            raise DataError(f"{self.name}, line {err.lineno}, column {err.offset + 1}: not well-formed XML "
                            f"({message})") from None


def _attributes(attrs: list[str]) -> str:
    return "".join(f" {key}={quoteattr(value)}" for key, value in zip(attrs[::2], attrs[1::2], strict=True))


def read_xml(chunks: Iterable[str], name: str = "<input>") -> Iterator[Item]:
    """Items of an XML document fed in chunks; malformed XML is refused in one line naming `name`, the line
    and the column."""
    reader = _XmlReader(name)
    for chunk in chunks:
        reader.feed(chunk)
        yield from reader.builder.take()
    reader.feed("", final=True)
    reader.builder.flush()
    yield from reader.builder.take()


def read_text(chunks: Iterable[str]) -> Iterator[Item]:
    """Plain text: each line a segment of its own, line ends copied."""
    rest = ""
    for chunk in chunks:
        lines = (rest + chunk).splitlines(keepends=True)
        rest = lines.pop() if lines and not lines[-1].endswith(("\n", "\r")) else ""
        for line in lines:
            yield from _line(line)
    if rest:
        yield from _line(rest)


def _line(line: str) -> Iterator[Item]:
    body = line.rstrip("\r\n")
    yield Segment(body) if body.strip() else body
    if len(body) < len(line):
        yield line[len(body):]


def read_items(chunks: Iterable[str], fmt: str, name: str = "<input>") -> Iterator[Item]:
    """A document's items in the given format (FORMATS); `chunks` are its text in order (any split for
    html and xml, whole lines with their line ends for text)."""
    if fmt == "html":
        return read_html(chunks)
    if fmt == "xml":
        return read_xml(chunks, name)
    return read_text(chunks)
