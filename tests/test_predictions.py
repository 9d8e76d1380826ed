"""The predictions CSV: round trip, tolerant column order, strict content, one-line errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation.predictions import (
    make_predictions,
    read_predictions,
    write_predictions,
)

HEADER = "patient_id,filename,label,p_normal,p_pneumonia,p_COVID-19"


def _probs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet([1, 1, 1], n).astype(np.float32)


def test_round_trip_is_exact_for_float32(tmp_path: Path) -> None:
    probs = _probs(50)
    # Spaces, and an id pandas would read as missing.
    patient_ids = [f"COVID {i // 2}" for i in range(49)] + ["NA"]
    filenames = [f"img,{i}.png" for i in range(50)]  # a comma needs quoting
    labels = np.arange(50) % 3
    path = write_predictions(
        tmp_path / "sub" / "predictions.csv",
        patient_ids=patient_ids,
        filenames=filenames,
        labels=labels,
        probabilities=probs,
    )
    assert path.read_text().splitlines()[0] == HEADER
    assert [p.name for p in path.parent.iterdir()] == ["predictions.csv"]  # no partial file left
    back = read_predictions(path)
    assert back.source == str(path)
    assert list(back.patient_ids) == patient_ids
    assert list(back.filenames) == filenames
    np.testing.assert_array_equal(back.labels, labels)
    np.testing.assert_array_equal(back.probabilities.astype(np.float32), probs)  # "%.9g" keeps float32 exact
    np.testing.assert_array_equal(back.predicted, probs.argmax(axis=1))


def test_labels_as_names_or_indices(tmp_path: Path) -> None:
    probs = _probs(3)
    a = make_predictions(patient_ids=["1", "2", "3"], filenames=["a", "b", "c"],
                         labels=["normal", "pneumonia", "COVID-19"], probabilities=probs)
    b = make_predictions(patient_ids=["1", "2", "3"], filenames=["a", "b", "c"],
                         labels=np.array([0, 1, 2]), probabilities=probs)
    np.testing.assert_array_equal(a.labels, [0, 1, 2])
    np.testing.assert_array_equal(a.labels, b.labels)


def test_column_order_and_source_column_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text(
        " p_COVID-19 ,source,label,filename,p_pneumonia,patient_id,p_normal\n"
        "0.7,sirm,COVID-19,x.png,0.2,7,0.1\n"
        "0.0,rsna,normal,y.png,0.25,8,0.75\n"
    )
    p = read_predictions(path)
    assert list(p.filenames) == ["x.png", "y.png"]
    assert list(p.patient_ids) == ["7", "8"]
    np.testing.assert_array_equal(p.labels, [2, 0])
    np.testing.assert_allclose(p.probabilities, [[0.1, 0.2, 0.7], [0.75, 0.25, 0.0]])


def test_reorder() -> None:
    p = make_predictions(patient_ids=["1", "2", "3"], filenames=["a", "b", "c"], labels=[0, 1, 2],
                         probabilities=np.eye(3))
    r = p.reorder(["c", "a", "b"])
    assert list(r.filenames) == ["c", "a", "b"]
    np.testing.assert_array_equal(r.labels, [2, 0, 1])
    np.testing.assert_array_equal(r.probabilities, np.eye(3)[[2, 0, 1]])


GOOD_ROWS = ["1,a.png,normal,0.8,0.1,0.1", "2,b.png,pneumonia,0.1,0.8,0.1", "3,c.png,COVID-19,0.1,0.1,0.8"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("patient_id,filename,label,p_normal,p_pneumonia\n1,a.png,normal,0.5,0.5\n",
         "missing column(s) p_COVID-19"),
        (HEADER + ",extra\n" + "\n".join(r + ",x" for r in GOOD_ROWS) + "\n", "unexpected column(s) extra"),
        (HEADER + "\n", "no rows"),
        ("", "cannot be read as CSV"),
        (HEADER + "\n" + "\n".join(GOOD_ROWS) + "\n4,d.png,covid,0.1,0.1,0.8\n",
         "unknown label on 1 rows: line 5 ('covid'); allowed labels are normal, pneumonia, COVID-19"),
        (HEADER + "\n" + "\n".join(GOOD_ROWS) + "\n4,d.png,normal,nan,0.1,0.8\n",
         "p_normal is NaN or infinite on 1 rows: line 5"),
        (HEADER + "\n" + "\n".join(GOOD_ROWS) + "\n4,d.png,normal,,0.1,0.8\n",
         "p_normal is not a number on 1 rows: line 5 ('')"),
        (HEADER + "\n" + "\n".join(GOOD_ROWS) + "\n4,d.png,normal,high,0.1,0.8\n",
         "p_normal is not a number on 1 rows: line 5 ('high')"),
        (HEADER + "\n" + "\n".join(GOOD_ROWS) + "\n4,d.png,normal,0.3,0.1,0.8\n",
         "probabilities do not sum to 1 (tolerance 0.001) on 1 rows: line 5 (sum 1.2)"),
        (HEADER + "\n" + "\n".join(GOOD_ROWS) + "\n4,d.png,normal,1.5,-0.5,0.0\n",
         "p_normal is outside [0, 1] on 1 rows: line 5 (1.5)"),
        (HEADER + "\n" + "\n".join(GOOD_ROWS) + "\n4,b.png,normal,0.8,0.1,0.1\n",
         "1 duplicate file names: b.png (line 3, line 5)"),
        (HEADER + "\n" + "\n".join(GOOD_ROWS) + "\n,d.png,normal,0.8,0.1,0.1\n",
         "empty patient_id on 1 rows: line 5"),
    ],
    ids=["missing-column", "unknown-column", "header-only", "empty-file", "unknown-label", "nan",
         "empty-cell", "not-a-number", "sum", "range", "duplicate", "empty-id"],
)
def test_bad_files_name_file_line_and_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        read_predictions(path)
    message = str(info.value)
    assert message.startswith(f"predictions file {path}: ")
    assert expected in message
    assert "\n" not in message


def test_sum_tolerance_is_1e3(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text(HEADER + "\n1,a.png,normal,0.8009,0.1,0.1\n")
    assert read_predictions(path).probabilities[0, 0] == pytest.approx(0.8009)
    path.write_text(HEADER + "\n1,a.png,normal,0.8011,0.1,0.1\n")
    with pytest.raises(ValueError, match="do not sum to 1"):
        read_predictions(path)


def test_many_bad_rows_are_abbreviated(tmp_path: Path) -> None:
    n = 40
    frame = pd.DataFrame(
        {"patient_id": range(n), "filename": [f"f{i}.png" for i in range(n)], "label": "normal",
         "p_normal": 0.5, "p_pneumonia": 0.1, "p_COVID-19": 0.1}
    )
    path = tmp_path / "p.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError) as info:
        read_predictions(path)
    message = str(info.value)
    assert "on 40 rows: line 2 (sum 0.7), line 3 (sum 0.7)" in message
    assert message.endswith("and 35 more")


def test_missing_file() -> None:
    with pytest.raises(FileNotFoundError, match="predictions file /no/such.csv does not exist"):
        read_predictions("/no/such.csv")


def test_make_predictions_rejects_bad_arrays() -> None:
    with pytest.raises(ValueError, match=r"probabilities must have shape \(n, 3\), received \(2, 2\)"):
        make_predictions(patient_ids=["1", "2"], filenames=["a", "b"], labels=[0, 1], probabilities=np.eye(2))
    with pytest.raises(ValueError, match="inputs differ in length"):
        make_predictions(patient_ids=["1"], filenames=["a", "b"], labels=[0, 1], probabilities=np.eye(3)[:2])
    with pytest.raises(ValueError, match="label indices must be 0..2"):
        make_predictions(patient_ids=["1", "2"], filenames=["a", "b"], labels=[0, 3],
                         probabilities=np.eye(3)[:2])
    with pytest.raises(ValueError, match="unknown label"):
        make_predictions(patient_ids=["1", "2"], filenames=["a", "b"], labels=["normal", "Covid"],
                         probabilities=np.eye(3)[:2])
    with pytest.raises(ValueError, match="duplicate file names: a \\(row 0, row 1\\)"):
        make_predictions(patient_ids=["1", "2"], filenames=["a", "a"], labels=[0, 1],
                         probabilities=np.eye(3)[:2])


def test_write_refuses_invalid_predictions(tmp_path: Path) -> None:
    target = tmp_path / "p.csv"
    with pytest.raises(ValueError, match=f"predictions for {target}: probabilities do not sum to 1"):
        write_predictions(target, patient_ids=["1"], filenames=["a"], labels=[0],
                          probabilities=[[0.5, 0.2, 0.2]])
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
