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
    (tmp_path / "short.tsv").write_text("a\tb\nonly\n")
    with pytest.raises(DataError, match=r"short.tsv line 2: expected at least 2"):
        list(read_tsv(tmp_path / "short.tsv", 0, 1))


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
