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
        (
            "COVID 119 COVID(119).png COVID-19 sirm",
            ListEntry("COVID 119", "COVID(119).png", "COVID-19", "sirm"),
        ),
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


@pytest.mark.parametrize(
    "encoded",
    [
        pytest.param(b"1 a.png normal cohen\n2 b.png COVID-19 cohen\n", id="plain"),
        pytest.param(b"1 a.png normal cohen\r\n2 b.png COVID-19 cohen\r\n", id="crlf"),
        pytest.param("\ufeff1 a.png normal cohen\n2 b.png COVID-19 cohen\n".encode(), id="utf8-bom"),
        pytest.param(b"1\ta.png\tnormal\tcohen\n2\tb.png\tCOVID-19\tcohen\n", id="tabs"),
        pytest.param(
            b"\n\n1 a.png normal cohen\n   \n\t\n2 b.png COVID-19 cohen\n\n", id="blank-lines"
        ),
        pytest.param("\ufeff1\ta.png normal cohen\r\n\r\n2 b.png\tCOVID-19 cohen".encode(), id="all-at-once"),
    ],
)
def test_line_ends_bom_tabs_and_blank_lines_read_the_same(tmp_path: Path, encoded: bytes) -> None:
    """A Windows-edited list must give the very same entries: a BOM must not become part of patient '1'."""
    path = tmp_path / "list.txt"
    path.write_bytes(encoded)
    result = read_list(path)
    assert result.entries == [
        ListEntry("1", "a.png", "normal", "cohen"),
        ListEntry("2", "b.png", "COVID-19", "cohen"),
    ]
    assert result.bad_lines == [] and result.duplicates == 0
    assert [e.patient_key for e in result.entries] == ["cohen:1", "cohen:2"]


def test_two_fields_and_unknown_labels_are_reported_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_bytes(b"\xef\xbb\xbf1 a.png normal\r\n2 b.png\r\n3 c.png Pneumonia\r\n4 d.png COVID-19\r\n")
    result = read_list(path)
    assert [e.patient_id for e in result.entries] == ["1", "4"]
    assert [b.line_no for b in result.bad_lines] == [2, 3]
    assert (
        "expected at least 3 fields" in result.bad_lines[0].reason and "found 2" in result.bad_lines[0].reason
    )
    # Labels are case-sensitive, as in every published list.
    assert "no known label" in result.bad_lines[1].reason and "'Pneumonia'" in result.bad_lines[1].reason


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
def test_published_lists_parse(
    realdata_dir: Path, name: str, total: int, per_class: tuple, duplicates: int
) -> None:
    result = read_list(realdata_dir / "lists" / name)
    assert result.bad_lines == []
    assert len(result.entries) == total
    counts = tuple(sum(e.label == c for e in result.entries) for c in ("normal", "pneumonia", "COVID-19"))
    assert counts == per_class
    # SURFsara's notebook appended one line per RSNA bounding box, hence the duplicates.
    assert result.duplicates == duplicates


def _surfsara_reader(line: str) -> tuple[str, str]:
    """SURFsara's data.py: ``l.split()``, the file is field 2 and the label the last field."""
    fields = line.split()
    return fields[1], fields[-1]


def test_surfsara_format_is_what_surfsaras_reader_reads(tmp_path: Path) -> None:
    entries = [
        ListEntry("19", "SARS-fig8a.jpeg", "pneumonia", "cohen"),
        ListEntry("COVID 119", "COVID(119).png", "COVID-19", "sirm"),
        ListEntry("0a8d-4c", "0a8d-4c.png", "normal", "rsna"),
    ]
    path = write_list(tmp_path / "train_COVIDx.txt", entries, list_format="surfsara")
    lines = path.read_text().splitlines()
    assert lines == [
        "19 SARS-fig8a.jpeg pneumonia",
        "COVID_119 COVID(119).png COVID-19",
        "0a8d-4c 0a8d-4c.png normal",
    ]
    # SURFsara's generator maps the last field through {'normal': 0, 'pneumonia': 1, 'COVID-19': 2}:
    # with COVID-Net's 4 fields it meets 'cohen' and stops with KeyError.
    mapping = {"normal": 0, "pneumonia": 1, "COVID-19": 2}
    assert [(name, mapping[label]) for name, label in map(_surfsara_reader, lines)] == [
        ("SARS-fig8a.jpeg", 1),
        ("COVID(119).png", 2),
        ("0a8d-4c.png", 0),
    ]
    covidnet = write_list(tmp_path / "covidnet.txt", entries).read_text().splitlines()
    with pytest.raises(KeyError, match="cohen"):
        mapping[_surfsara_reader(covidnet[0])[1]]
    # Our reader reads both forms.
    assert [(e.patient_id, e.filename, e.label, e.source) for e in read_list(path).entries] == [
        ("19", "SARS-fig8a.jpeg", "pneumonia", ""),
        ("COVID_119", "COVID(119).png", "COVID-19", ""),
        ("0a8d-4c", "0a8d-4c.png", "normal", ""),
    ]
    assert read_list(tmp_path / "covidnet.txt").entries == entries


def test_unknown_list_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="received 'csv'"):
        write_list(tmp_path / "x.txt", [ListEntry("1", "a.png", "normal")], list_format="csv")
    assert not (tmp_path / "x.txt").exists()
