"""Each source reader on tiny files in its real format, and on the real public samples."""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.sources import (
    BY_OPTION,
    SOURCES,
    ScanContext,
    ScanResult,
    actualmed,
    cohen,
    figure1,
    ricord,
    rsna,
    sirm,
)
from data.splits import COVIDNET, RADIOGRAPHY, SURFSARA
from data.synthetic import render_cxr, write_ricord_dicom, write_rsna_dicom, write_xlsx

CTX = ScanContext(rules=COVIDNET)


def png(path: Path, value: int = 128, size: int = 32, channels: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((size, size) if channels == 1 else (size, size, channels), value, np.uint8)
    cv2.imwrite(str(path), image)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]], encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding=encoding) as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def reasons(result) -> dict[int | str, str]:
    return {s.row: s.reason for s in result.skipped}


def accounted(result) -> bool:
    return result.rows_read == len(result.records) + len(result.skipped)


# -- cohen -------------------------------------------------------------------------------------

def test_cohen_2020_flat_findings_odd_headers_no_folder_column(tmp_path: Path) -> None:
    root = tmp_path / "cohen"
    for name in ("a.jpg", "b.png", "c.jpg", "d.jpg", "e.jpg", "f.jpg", "h.jpg"):
        png(root / "images" / name)
    header = ["Patientid", "offset", "finding", " view", "modality", "filename", " url"]
    rows = [
        ["19", "0", "COVID-19", "PA", "X-ray", "a.jpg", "https://radiopaedia.org/x"],
        ["19", "3", "COVID-19, ARDS", "AP Supine", "X-ray", "b.png", "https://radiopaedia.org/x"],
        ["8", "", "SARS", "PA", "X-ray", "c.jpg", "https://pubs.rsna.org/y"],
        ["40", "", "todo", "PA", "X-ray", "d.jpg", ""],
        ["41", "", "COVID-19", "L", "X-ray", "e.jpg", "https://radiopaedia.org/lat"],
        ["42", "", "COVID-19", "PA", "X-ray", "f.jpg", "https://www.sirm.org/2020/03/10/covid-19-caso-22/"],
        ["43", "", "COVID-19", "PA", "X-ray", "missing.jpg", ""],
        ["44", "", "COVID-19", "PA", "X-ray", "../escape.jpg", ""],
        ["45", "", "Pneumocystis", "AP", "X-ray", "h.jpg", ""],
        ["46", "", "", "AP", "X-ray", "h.jpg", ""],
    ]
    write_csv(root / "metadata.csv", header, rows)
    result = cohen.scan(root, CTX)
    assert result.rows_read == 10 and accounted(result)
    assert [(r.patient_id, r.label, r.out_name, r.row) for r in result.records] == [
        ("19", "COVID-19", "a.jpg", 1), ("19", "COVID-19", "b.png", 2), ("8", "pneumonia", "c.jpg", 3)]
    assert result.records[1].src == root / "images" / "b.png"
    assert reasons(result) == {
        4: "finding not mapped",
        5: "view not kept",
        6: "COVID-19 image duplicated in SIRM",
        7: "missing image",
        8: "bad file name",
        9: "finding not mapped",
        10: "empty finding",
    }
    assert "escapes its folder" in next(s.detail for s in result.skipped if s.row == 8)
    # URLs of every row that passed the view filter (COVID-Net's SIRM duplicate check)
    assert result.urls == {
        "https://radiopaedia.org/x",
        "https://pubs.rsna.org/y",
        "https://www.sirm.org/2020/03/10/covid-19-caso-22/",
    }


def test_cohen_2021_hierarchical_findings_and_folder_column(tmp_path: Path) -> None:
    root = tmp_path / "cohen"
    png(root / "images" / "a.png")
    png(root / "other" / "b.png")
    png(root / "images" / "c.png")
    png(root / "volumes" / "ct.png")
    header = ["patientid", "finding", "RT_PCR_positive", "view", "modality", "folder", "filename", "url"]
    rows = [
        ["100", "Pneumonia/Viral/COVID-19", "Y", "PA", "X-ray", "images", "a.png", "u1"],
        ["101", "Pneumonia/Bacterial/Streptococcus", "", "AP erect", "X-ray", "other", "b.png", "u2"],
        ["102", "No Finding", "", "PA", "X-ray", "images", "c.png", "u3"],
        ["103", "Pneumonia/Viral/COVID-19", "Y", "Axial", "CT", "volumes", "ct.png", "u4"],
        ["104", "Pneumonia/Viral/COVID-19", "Y", "PA", "X-ray", "../..", "x.png", "u5"],
    ]
    write_csv(root / "metadata.csv", header, rows)
    result = cohen.scan(root, CTX)
    assert [(r.patient_id, r.label, r.src) for r in result.records] == [
        ("100", "COVID-19", root / "images" / "a.png"),
        ("101", "pneumonia", root / "other" / "b.png"),
    ]
    assert reasons(result) == {3: "finding not mapped", 4: "view not kept", 5: "bad file name"}
    assert result.info["folder_column"] is True and accounted(result)


def test_cohen_surfsara_rules(tmp_path: Path) -> None:
    root = tmp_path / "cohen"
    for n in "abcde":
        png(root / "images" / f"{n}.png")
    rows = [
        ["19", "COVID-19", "PA", "a.png", "https://www.eurorad.org/case/1"],  # no URL rule in SURFsara's
        ["19", "COVID-19, ARDS", "PA", "b.png", ""],  # exact finding: not mapped
        ["20", "COVID-19", "AP", "c.png", ""],  # PA only
        ["21", "Klebsiella", "PA", "d.png", ""],  # not in SURFsara's mapping
        ["22", "Pneumonia/Viral/SARS", "PA", "e.png", ""],  # hierarchy: last element (extension)
    ]
    write_csv(root / "metadata.csv", ["patientid", "finding", "view", "filename", "url"], rows)
    result = cohen.scan(root, ScanContext(rules=SURFSARA))
    assert [(r.patient_id, r.label) for r in result.records] == [("19", "COVID-19"), ("22", "pneumonia")]
    assert reasons(result) == {2: "finding not mapped", 3: "view not kept", 4: "finding not mapped"}


def test_cohen_missing_column_and_missing_files_name_the_flag(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"--cohen: folder .*nowhere does not exist"):
        cohen.scan(tmp_path / "nowhere", CTX)
    (tmp_path / "c").mkdir()
    with pytest.raises(FileNotFoundError, match=r"--cohen: .*metadata.csv not found"):
        cohen.SPEC.check(tmp_path / "c")
    write_csv(
        tmp_path / "c" / "metadata.csv", ["patientid", "finding", "filename"], [["1", "COVID-19", "a.png"]]
    )
    with pytest.raises(ValueError, match=r"--cohen: .*metadata.csv has no column 'view'"):
        cohen.scan(tmp_path / "c", CTX)
    # A split rule without cohen rules (the Radiography Database's) cannot read cohen.
    with pytest.raises(ValueError, match="--cohen cannot be used with --split radiography: the ResNet-18"):
        cohen.scan(tmp_path / "c", ScanContext(rules=RADIOGRAPHY))


# -- Figure1 and Actualmed ---------------------------------------------------------------------


def test_figure1_iso_8859_1_jpg_or_png_and_missing_image(tmp_path: Path) -> None:
    root = tmp_path / "fig1"
    png(root / "images" / "COVID-00001.jpg")
    png(root / "images" / "COVID-00002.png")
    png(root / "images" / "COVID-00004.jpg")
    rows = [
        ["COVID-00001", "COVID-19", "Température 39 °C"],
        ["COVID-00002", "COVID-19, ARDS", "SpO2 88 %"],
        ["COVID-00003", "COVID-19", "no image in the folder"],
        ["COVID-00004", "", "finding pending"],
        ["COVID-00005", "Pneumonia", ""],
    ]
    write_csv(root / "metadata.csv", ["patientid", "finding", "notes"], rows, encoding="ISO-8859-1")
    with pytest.raises(UnicodeDecodeError):
        (root / "metadata.csv").read_text(encoding="utf-8")
    result = figure1.scan(root, CTX)
    assert [(r.patient_id, r.out_name, r.label) for r in result.records] == [
        ("COVID-00001", "COVID-00001.jpg", "COVID-19"),
        ("COVID-00002", "COVID-00002.png", "COVID-19"),
    ]
    # COVID-Net re-used the previous row's entry here; this is reported instead
    assert reasons(result) == {3: "missing image", 4: "empty finding", 5: "finding not mapped"}
    assert accounted(result)


def test_actualmed_imagename_and_bad_names(tmp_path: Path) -> None:
    root = tmp_path / "act"
    png(root / "images" / "CR.1.png")
    png(root / "images" / "CR.2.png")
    rows = [
        ["ANON24", "COVID-19", "CR.1.png"],
        ["ANON25", "No finding", "CR.2.png"],
        ["ANON26", "", "CR.2.png"],
        ["ANON27", "COVID-19", "../../etc/passwd"],
        ["ANON28", "COVID-19", "CR.404.png"],
    ]
    write_csv(root / "metadata.csv", ["patientid", "finding", "imagename"], rows)
    result = actualmed.scan(root, CTX)
    assert [(r.patient_id, r.out_name, r.source) for r in result.records] == [
        ("ANON24", "CR.1.png", "actmed")
    ]
    assert reasons(result) == {
        2: "finding not mapped",
        3: "empty finding",
        4: "bad file name",
        5: "missing image",
    }


# -- SIRM --------------------------------------------------------------------------------------


def test_sirm_duplicates_discards_fallback_names_and_gray(tmp_path: Path) -> None:
    root = tmp_path / "sirm"
    png(root / "COVID" / "COVID 1.png", channels=3)
    png(root / "COVID" / "COVID 2.png")
    png(root / "COVID" / "COVID (3).png")
    png(root / "COVID" / "COVID (100).png")
    png(root / "COVID" / "COVID 119.jpeg")
    rows = [
        ["COVID 1", "PNG", "32*32", "https://www.sirm.org/a"],
        ["COVID 2", "PNG", "32*32", "https://radiopaedia.org/in-cohen"],
        ["COVID 3", "PNG", "32*32", "https://www.sirm.org/c"],
        ["COVID (100)", "PNG", "32*32", "https://www.sirm.org/d"],
        ["COVID 119", "JPEG", "32*32", "https://github.com/ieee8023/covid-chestxray-dataset"],
        ["COVID 5", "PNG", "32*32", "https://www.sirm.org/e"],
    ]
    write_xlsx(root / "COVID.metadata.xlsx", ["FILE NAME", "FORMAT", "SIZE", "URL"], rows)
    cohen_scan = ScanResult(source="cohen", root=tmp_path, urls=frozenset({"https://radiopaedia.org/in-cohen"}))
    result = sirm.scan(root, ScanContext(rules=COVIDNET, earlier={"cohen": cohen_scan}))
    assert [(r.patient_id, r.image, r.out_name, r.convert) for r in result.records] == [
        ("COVID 1", "COVID 1.png", "COVID1.png", "gray"),
        ("COVID 3", "COVID (3).png", "COVID(3).png", "gray"),
    ]
    assert reasons(result) == {
        2: "duplicate of a cohen image",
        4: "discarded by COVID-Net",
        5: "duplicate of a cohen image",
        6: "missing image",
    }
    assert result.warnings == [] and accounted(result)
    alone = sirm.scan(root, CTX)  # no --cohen: the check cannot run, and the report says so
    assert len(alone.records) == 3 and "without --cohen" in alone.warnings[0]


# -- RSNA --------------------------------------------------------------------------------------


def _rsna_folder(
    root: Path, normal: list[str], pneumonia: dict[str, int], other: list[str], *, missing: str = ""
) -> None:
    info, labels = [], []
    for pid in normal:
        info.append([pid, "Normal"])
        labels.append([pid, "", "", "", "", "0"])
    for pid, boxes in pneumonia.items():
        for _ in range(boxes):
            info.append([pid, "Lung Opacity"])
            labels.append([pid, "1", "2", "3", "4", "1"])
    for pid in other:
        info.append([pid, "No Lung Opacity / Not Normal"])
        labels.append([pid, "", "", "", "", "0"])
    write_csv(root / "stage_2_detailed_class_info.csv", ["patientId", "class"], info)
    write_csv(root / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], labels)
    (root / "stage_2_train_images").mkdir(parents=True, exist_ok=True)
    for i, pid in enumerate(normal + list(pneumonia)):
        if pid != missing:
            write_rsna_dicom(
                root / "stage_2_train_images" / f"{pid}.dcm",
                render_cxr("normal", np.random.default_rng(i), 32),
                patient_id=pid,
                seed=0,
            )


def test_rsna_one_record_per_patient_and_shipped_test_patients(tmp_path: Path) -> None:
    shipped = rsna.shipped_test_patients()
    assert [len(shipped["normal"]), len(shipped["pneumonia"])] == [100, 100]
    test_normal, test_pneu = shipped["normal"][0], shipped["pneumonia"][0]
    root = tmp_path / "rsna"
    _rsna_folder(
        root, ["n1", test_normal, "n3"], {"p1": 3, test_pneu: 2, "p3": 1}, ["o1", "o2"], missing="n3"
    )
    result = rsna.scan(root, CTX)
    assert [(r.patient_id, r.label, r.split, r.out_name) for r in result.records] == [
        ("n1", "normal", "train", "n1.png"),
        (test_normal, "normal", "test", f"{test_normal}.png"),
        ("p1", "pneumonia", "train", "p1.png"),
        (test_pneu, "pneumonia", "test", f"{test_pneu}.png"),
        ("p3", "pneumonia", "train", "p3.png"),
    ]
    assert all(r.dedup_by_patient and r.convert == "dicom" for r in result.records)
    assert Counter(s.reason for s in result.skipped) == {
        "extra box row": 3,
        "class not used": 2,
        "missing image": 1,
    }
    assert result.rows_read == 3 + 6 + 2 and accounted(result)
    assert result.info["test_patients_from"].startswith("shipped")


def test_rsna_npy_lists_in_the_folder_win(tmp_path: Path) -> None:
    root = tmp_path / "rsna"
    _rsna_folder(root, ["n1", "n2"], {"p1": 1}, [])
    np.save(root / "rsna_test_patients_normal.npy", np.array(["n2"]))
    np.save(root / "rsna_test_patients_pneumonia.npy", np.array(["p1"]))
    result = rsna.scan(root, CTX)
    assert [(r.patient_id, r.split) for r in result.records] == [
        ("n1", "train"),
        ("n2", "test"),
        ("p1", "test"),
    ]
    assert result.info["test_patients_from"].endswith(".npy")
    assert len(result.warnings) == 2 and "differs from the shipped" in result.warnings[0]


def test_rsna_missing_csv_names_flag_and_path(tmp_path: Path) -> None:
    (tmp_path / "r" / "stage_2_train_images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"--rsna: .*stage_2_detailed_class_info.csv not found"):
        rsna.scan(tmp_path / "r", CTX)


# -- RICORD ------------------------------------------------------------------------------------


def _ricord_image(path: Path, view: str, seed: int, **kw) -> None:
    write_ricord_dicom(
        path,
        render_cxr("COVID-19", np.random.default_rng(seed), 32),
        patient_id="p",
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        instance_uid=f"1.2.3.4.{seed}",
        view=view,
        bits_stored=kw.get("bits", 12),
        monochrome1=True,
        windowed=False,
        syntax=kw.get("syntax", "native"),
    )


@pytest.fixture
def ricord_root(tmp_path: Path) -> Path:
    root = tmp_path / "ricord"
    a = root / "MIDRC-RICORD-1C-419639-000001" / "01-01-2020-NA-XR CHEST AP PORTABLE-12345"
    _ricord_image(a / "1.000000-NA-11111" / "1-1.dcm", "AP", 1, syntax="j2k")
    _ricord_image(a / "2.000000-NA-22222" / "1-1.dcm", "LL", 2)
    _ricord_image(a / "2.000000-NA-22222" / "1-2.dcm", "PA", 3, syntax="rle")
    (a / "2.000000-NA-22222" / ".hidden.dcm").write_bytes(b"ignored like glob does")
    b = root / "MIDRC-RICORD-1C-419639-000002" / "02-02-2020-NA-XR CHEST-67890"
    _ricord_image(b / "1.000000-NA-33333" / "1-1.dcm", "AP", 4, bits=16)
    c = root / "MIDRC-RICORD-1C-419639-000003" / "badname"
    _ricord_image(c / "s" / "1-1.dcm", "AP", 5)
    return root


def test_ricord_without_list_uses_every_frontal_image(ricord_root: Path) -> None:
    result = ricord.scan(ricord_root, CTX)
    assert [(r.patient_id, r.out_name, r.crop) for r in result.records] == [
        ("419639-000001", "MIDRC-RICORD-1C-419639-000001-12345-0.png", None),
        ("419639-000001", "MIDRC-RICORD-1C-419639-000001-12345-2.png", None),  # index 1 was the lateral
        ("419639-000002", "MIDRC-RICORD-1C-419639-000002-67890-0.png", None),
    ]
    assert Counter(s.reason for s in result.skipped) == {"view not kept": 1, "bad study folder name": 1}
    assert "no ricord_data_set.txt" in result.warnings[0] and accounted(result)


def test_ricord_with_covidnet_list_and_crops(ricord_root: Path, tmp_path: Path) -> None:
    listing = tmp_path / "ricord_data_set.txt"
    listing.write_text(
        "MIDRC-RICORD-1C-419639-000002-67890-0.png 2 3 30 31\n"
        "MIDRC-RICORD-1C-419639-000001-12345-1.png\n"  # listed but lateral
        "MIDRC-RICORD-1C-419639-000009-00000-0.png\n"  # listed, not downloaded
        "MIDRC-RICORD-1C-419639-000001-12345-2.png 1 2\n"  # bad line
    )
    result = ricord.scan(ricord_root, ScanContext(rules=COVIDNET, ricord_list=listing))
    assert [(r.out_name, r.crop) for r in result.records] == [
        ("MIDRC-RICORD-1C-419639-000002-67890-0.png", (2, 3, 30, 31))
    ]
    assert Counter(s.reason for s in result.skipped) == {
        "bad list line": 1,
        "view not kept": 1,
        "missing image": 1,
        "not in list": 2,
        "bad study folder name": 1,
    }
    assert result.info["list"] == str(listing) and accounted(result)
    with pytest.raises(FileNotFoundError, match="--ricord-list"):
        ricord.scan(ricord_root, ScanContext(rules=COVIDNET, ricord_list=tmp_path / "nope.txt"))


def test_ricord_nbia_layout_one_level_down(ricord_root: Path, tmp_path: Path) -> None:
    nested = tmp_path / "download"
    (nested / "manifest-1612365584013").mkdir(parents=True)
    ricord_root.rename(nested / "manifest-1612365584013" / "MIDRC-RICORD-1C")
    result = ricord.scan(nested, CTX)
    assert len(result.records) == 3 and "patient folders found under" in result.warnings[0]


def test_registry_flags_and_order() -> None:
    assert [s.name for s in SOURCES] == ["cohen", "fig1", "actmed", "sirm", "ricord", "rsna", "radiography"]
    assert [
        BY_OPTION[o].flag
        for o in ("cohen", "figure1", "actualmed", "sirm", "rsna", "ricord", "radiography_db")
    ] == ["--cohen", "--figure1", "--actualmed", "--sirm", "--rsna", "--ricord", "--radiography-db"]
    assert [s.stage for s in SOURCES] == [0, 0, 0, 0, 0, 1, 0]
    for spec in SOURCES:  # torchxrayvision-style module docstrings
        doc = __import__(spec.scan.__module__, fromlist=["x"]).__doc__
        assert "What:" in doc and "Where:" in doc and ("Licence:" in doc or "Terms:" in doc)


# -- the real public samples -------------------------------------------------------------------


@pytest.mark.realdata
def test_real_cohen_2020_06(realdata_dir: Path) -> None:
    result = cohen.scan(realdata_dir / "cohen-2020-06", CTX)
    assert result.rows_read == 751 and accounted(result)
    assert Counter(s.reason for s in result.skipped) == {
        "view not kept": 181,
        "finding not mapped": 91,
        "COVID-19 image duplicated in SIRM": 173,
        "missing image": 238,
    }
    assert Counter(r.label for r in result.records) == {"COVID-19": 55, "pneumonia": 13}
    # 'COVID-19, ARDS' (2020 flat finding) is COVID-19 under COVID-Net's rule
    assert sum(r.patient_id == "97" for r in result.records) >= 1
    surf = cohen.scan(realdata_dir / "cohen-2020-06", ScanContext(rules=SURFSARA))
    assert Counter(r.label for r in surf.records) == {"COVID-19": 39, "pneumonia": 8}


@pytest.mark.realdata
def test_real_figure1_and_actualmed(realdata_dir: Path) -> None:
    fig = figure1.scan(realdata_dir / "figure1", CTX)
    assert (fig.rows_read, len(fig.records)) == (55, 35)
    assert Counter(s.reason for s in fig.skipped) == {"empty finding": 15, "finding not mapped": 5}
    assert sum(r.out_name.endswith(".png") for r in fig.records) >= 1
    act = actualmed.scan(realdata_dir / "actualmed", CTX)
    assert (act.rows_read, len(act.records)) == (238, 8)
    assert Counter(s.reason for s in act.skipped) == {
        "finding not mapped": 127,
        "empty finding": 53,
        "missing image": 50,
    }


@pytest.mark.realdata
def test_shipped_rsna_lists_equal_covidnet_npy(realdata_dir: Path) -> None:
    shipped = rsna.shipped_test_patients()
    for label in ("normal", "pneumonia"):
        array = np.load(realdata_dir / "lists" / f"rsna_test_patients_{label}.npy", allow_pickle=False)
        assert list(shipped[label]) == [str(x) for x in array.tolist()]
        assert len(set(shipped[label])) == 100
