import gzip
import json
from collections import Counter

import pytest

from nmt.config import CleanConfig, HfSource, parse_config
from nmt.data.corpus import clean_pairs, normalize, read_hf, read_lines, read_text_pairs, read_tsv
from nmt.errors import DataError


def test_plain_and_gzip_files_read_the_same(tmp_path):
    text = "hello world\nsecond line\n"
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    with gzip.open(tmp_path / "a.txt.gz", "wt", encoding="utf-8") as handle:
        handle.write(text)
    assert list(read_lines(tmp_path / "a.txt")) == ["hello world", "second line"]
    assert list(read_lines(tmp_path / "a.txt.gz")) == ["hello world", "second line"]


def test_crlf_and_bom_are_removed(tmp_path):
    (tmp_path / "w.txt").write_bytes("\ufeffone\r\ntwo\r\n".encode())
    assert list(read_lines(tmp_path / "w.txt")) == ["one", "two"]


def test_invalid_utf8_names_file_and_line(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"fine\nalso fine\nbroken \xff here\n")
    with pytest.raises(DataError, match=r"bad.txt line 3: invalid UTF-8"):
        list(read_lines(tmp_path / "bad.txt"))


def test_misaligned_files_name_both_files_and_counts(tmp_path):
    (tmp_path / "x.en").write_text("a\nb\nc\n")
    (tmp_path / "x.ja").write_text("a\nb\n")
    with pytest.raises(DataError, match=r"x.en has 3 lines but .*x.ja has 2"):
        list(read_text_pairs(tmp_path / "x.en", tmp_path / "x.ja"))
    with pytest.raises(DataError, match=r"x.ja has 2 lines but .*x.en has 3"):
        list(read_text_pairs(tmp_path / "x.ja", tmp_path / "x.en"))


def test_tsv_columns_and_short_rows(tmp_path):
    (tmp_path / "p.tsv").write_text("id1\thello\thallo\nid2\tyes\tja\n")
    assert list(read_tsv(tmp_path / "p.tsv", 1, 2)) == [("hello", "hallo"), ("yes", "ja")]
    (tmp_path / "narrow.tsv").write_text("only\ta\n")
    with pytest.raises(DataError, match=r"narrow.tsv line 1: expected at least 3 tab-separated columns, got 2"):
        list(read_tsv(tmp_path / "narrow.tsv", 0, 2))
    (tmp_path / "short.tsv").write_text("a\tb\nonly\n")
    with pytest.raises(DataError, match=r"short.tsv line 2: 1 tab-separated fields, but line 1 has 2$"):
        list(read_tsv(tmp_path / "short.tsv", 0, 1))


def test_tsv_quotes_are_text_and_a_tab_too_many_is_refused_naming_the_line(tmp_path):
    """Quotes, balanced or not, are kept as they are (no csv quoting joining lines); a tab inside a quoted
    field is a separator, so that line has a field too many and is refused rather than shifted."""
    path = tmp_path / "q.tsv"
    path.write_text('"Hi," she said.\t„Hallo", sagte sie.\n5" screen\t5"-Bildschirm\n"a\tb"\tc\nlast\tletzte\n')
    pairs = read_tsv(path, 0, 1)
    assert [next(pairs), next(pairs)] == [('"Hi," she said.', '„Hallo", sagte sie.'), ('5" screen', '5"-Bildschirm')]
    with pytest.raises(DataError, match=r"q.tsv line 3: 3 tab-separated fields, but line 1 has 2: a tab inside"):
        next(pairs)


def test_cr_line_endings_are_line_breaks_with_a_warning(tmp_path, caplog):
    (tmp_path / "mac.txt").write_bytes("\ufeffone\rtwo\r\rthree".encode())
    with gzip.open(tmp_path / "mac.txt.gz", "wb") as handle:
        handle.write(b"one\rtwo\r\rthree\r")
    for name in ("mac.txt", "mac.txt.gz"):
        assert list(read_lines(tmp_path / name)) == ["one", "two", "", "three"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / name} uses CR line endings (classic Mac OS): each CR is read as a line break"
        for name in ("mac.txt", "mac.txt.gz")]


def test_a_stray_cr_inside_lf_lines_stays_text(tmp_path, caplog):
    (tmp_path / "lf.txt").write_bytes(b"one\r\ntwo \r three\r\nfour\n")
    assert list(read_lines(tmp_path / "lf.txt")) == ["one", "two \r three", "four"]
    assert not caplog.records


def test_a_lf_after_cr_line_endings_is_refused_naming_the_line(tmp_path):
    """The first 64 KiB decide that a file has CR line endings; a LF later cannot be split both ways."""
    (tmp_path / "mixed.txt").write_bytes(b"ab\r" * 30_000 + b"late\nlf\n")
    with pytest.raises(DataError, match=r"mixed.txt line 30001: a LF in a file with CR line endings"):
        list(read_lines(tmp_path / "mixed.txt"))


def test_hugging_face_reader_on_local_json_files(tmp_path):
    rows = [{"translation": {"en": f"sentence {i}", "de": f"Satz {i}"}} for i in range(5)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = HfSource(format="hf", name="json", data_files=str(tmp_path / "d.jsonl"), field="translation",
                      src_field="en", tgt_field="de")
    assert list(read_hf(source)) == [(f"sentence {i}", f"Satz {i}") for i in range(5)]
    flat = [{"en": "a", "de": "b"}]
    (tmp_path / "f.jsonl").write_text(json.dumps(flat[0]) + "\n")
    wrong = HfSource(format="hf", name="json", data_files=str(tmp_path / "f.jsonl"), src_field="en", tgt_field="fr")
    with pytest.raises(DataError, match="no field 'fr'"):
        list(read_hf(wrong))


def test_hf_source_is_accepted_by_the_config_schema(tmp_path):
    from toy import toy_config_dict

    raw = toy_config_dict(tmp_path)
    raw["data"]["train"] = {"format": "hf", "name": "bentrevett/multi30k", "split": "train", "src_field": "de",
                            "tgt_field": "en"}
    assert parse_config(raw).data.train.name == "bentrevett/multi30k"


def test_normalization():
    clean = CleanConfig(unicode_normalization="NFKC", lowercase=True)
    assert normalize("  Ｈｅｌｌｏ\t\x00 WORLD  ", clean) == "hello world"
    assert normalize("two\r\nlines\x85end\x7f", CleanConfig(collapse_whitespace=False)) == "two  lines end "
    assert normalize("ｶﾀｶﾅ", CleanConfig(unicode_normalization="none")) == "ｶﾀｶﾅ"


def test_cleaning_drops_and_counts_by_reason():
    clean = CleanConfig(max_chars=20, max_length_ratio=3.0)
    src = ["ok pair", "", "x" * 30, "short", "fine too"]
    tgt = ["okay pr", "empty src", "long", "much longer text", "bien ok"]
    dropped: Counter[str] = Counter()
    kept = list(clean_pairs(zip(src, tgt, strict=True), clean, True, dropped))
    assert kept == [("ok pair", "okay pr"), ("fine too", "bien ok")]
    assert dropped == {"empty": 1, "too_long": 1, "length_ratio": 1}
    assert len(list(clean_pairs(zip(src, tgt, strict=True), clean, False, Counter()))) == 5  # dev/test keep everything
