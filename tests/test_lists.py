"""COVIDx list reading: every published variant parses, bad lines are reported."""
from __future__ import annotations

from pathlib import Path

import pytest

from data.lists import ListEntry, format_entry, parse_line, read_list, write_list


@pytest.mark.parametrize(
    "line, expected",
    [
        ("3 SARS-fig8a.jpeg pneumonia", ListEntry("3", "SARS-fig8a.jpeg", "pneumonia", "")),
        ("1\tk00001.png\tCOVID-19", ListEntry("1", "k00001.png", "COVID-19", "")),
        ("abc abc.png normal rsna", ListEntry("abc", "abc.png", "normal", "rsna")),
        ("COVID 119 COVID(119).png COVID-19 sirm", ListEntry("COVID 119", "COVID(119).png", "COVID-19", "sirm")),
        ("p1 p1.png normal rsna extra fields", ListEntry("p1", "p1.png", "normal", "rsna")),
        ("  p2   p2.png   pneumonia  ", ListEntry("p2", "p2.png", "pneumonia", "")),
    ],
)
def test_parse_line_variants(line: str, expected: ListEntry) -> None:
    assert parse_line(line) == expected


@pytest.mark.parametrize(
    "line, reason",
    [
        ("p1 p1.png", "at least 3 fields"),
        ("p1 p1.png positive", "no known label"),
        ("p1 ../etc/passwd normal", "escapes its folder"),
        ("p1 /abs/x.png normal", "absolute path"),
    ],
)
def test_parse_line_rejects(line: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_line(line)


def test_read_list_reports_bad_lines_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text(
        "# comment\n"
        "a a.png normal rsna\n"
        "\n"
        "a a.png normal rsna\n"  # duplicate
        "b b.png unknownlabel\n"  # bad
        "COVID 7 COVID(7).png COVID-19 sirm\n"
    )
    result = read_list(path)
    assert [e.filename for e in result.entries] == ["a.png", "COVID(7).png"]
    assert result.duplicates == 1
    assert [(b.line_no, "no known label" in b.reason) for b in result.bad_lines] == [(5, True)]
    assert "2 images (normal=1, pneumonia=0, COVID-19=1)" in result.summary()


def test_read_list_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_list(tmp_path / "missing.txt")


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    entries = [
        ListEntry("COVID 1", "COVID(1).png", "COVID-19", "sirm"),
        ListEntry("x", "x.png", "normal", "rsna"),
        ListEntry("3", "y.jpg", "pneumonia", ""),
    ]
    path = write_list(tmp_path / "out.txt", entries)
    assert path.read_text().splitlines()[0] == "COVID 1 COVID(1).png COVID-19 sirm"
    assert read_list(path).entries == entries
    assert format_entry(entries[2]) == "3 y.jpg pneumonia"
    assert not list(tmp_path.glob(".*partial*")), "temporary file left behind"


@pytest.mark.realdata
@pytest.mark.parametrize(
    "name, total, per_class, duplicates",
    [
        ("surfsara_train_COVIDx.txt", 13635, (7966, 5435, 234), 3079),
        ("surfsara_test_COVIDx.txt", 246, (100, 100, 46), 0),
        ("covidnet_train_COVIDx9A.txt", 30130, (8085, 5555, 16490), 0),
        ("covidnet_test_COVIDx9A.txt", 400, (100, 100, 200), 0),
    ],
)
def test_published_lists_parse(realdata_dir: Path, name: str, total: int, per_class: tuple, duplicates: int) -> None:
    result = read_list(realdata_dir / "lists" / name)
    assert result.bad_lines == []
    assert len(result.entries) == total
    counts = tuple(sum(e.label == c for e in result.entries) for c in ("normal", "pneumonia", "COVID-19"))
    assert counts == per_class
    # SURFsara's notebook appended one line per RSNA bounding box, hence the duplicates.
    assert result.duplicates == duplicates
