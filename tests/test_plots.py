"""Plots: what the figures show, the PNG files, and no pyplot/global matplotlib state."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from matplotlib.image import imread
from sklearn.metrics import roc_curve

from evaluation.plots import confusion_matrix_figure, roc_figure, save_figure, write_confusion_matrix_png
from evaluation.predictions import make_predictions, read_predictions
from evaluation.report import evaluate_predictions, write_evaluation_files

REPO_ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
PROBS = np.array(
    [
        [0.80, 0.10, 0.10], [0.60, 0.30, 0.10], [0.30, 0.60, 0.10],
        [0.20, 0.70, 0.10], [0.50, 0.40, 0.10], [0.10, 0.50, 0.40],
        [0.10, 0.20, 0.70], [0.30, 0.20, 0.50], [0.15, 0.55, 0.30],
    ]
)


def test_confusion_matrix_figure_shows_counts_and_row_shares(tmp_path: Path) -> None:
    cm = np.array([[96, 4, 0], [7, 92, 1], [0, 3, 43]])
    fig = confusion_matrix_figure(cm)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert texts[0] == "96\n96.0%" and texts[4] == "92\n92.0%" and texts[8] == "43\n93.5%"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["normal", "pneumonia", "COVID-19"]
    np.testing.assert_allclose(ax.images[0].get_array()[2], [0, 3 / 46, 43 / 46])

    path = write_confusion_matrix_png(tmp_path / "plots" / "cm.png", confusion=cm, dpi=100)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert imread(path).shape[:2] == (440, 500)  # figsize 5 x 4.4 inches at 100 dpi
    assert [p.name for p in path.parent.iterdir()] == ["cm.png"]  # written atomically, nothing left over


def test_roc_figure_draws_sklearn_curves_with_hand_computed_aucs(tmp_path: Path) -> None:
    fig = roc_figure(labels=LABELS, probabilities=PROBS)
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    # 16.5/18, 14/18, 17/18 (see tests/test_metrics.py).
    assert legend == ["chance", "normal (AUC 0.917)", "pneumonia (AUC 0.778)", "COVID-19 (AUC 0.944)"]
    fpr, tpr, _ = roc_curve(LABELS == 2, PROBS[:, 2])
    np.testing.assert_allclose(ax.lines[3].get_xdata(), fpr)
    np.testing.assert_allclose(ax.lines[3].get_ydata(), tpr)
    path = save_figure(fig, tmp_path / "roc.png", dpi=50)
    assert imread(path).shape[:2] == (250, 250)


def test_roc_figure_with_a_missing_class() -> None:
    fig = roc_figure(labels=np.array([0, 1, 0, 1]), probabilities=PROBS[[0, 3, 1, 4]])
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[-1] == "COVID-19 (AUC not defined)"


def test_write_evaluation_files(tmp_path: Path) -> None:
    preds = make_predictions(patient_ids=list("aabccdeef"), filenames=[f"{i}.png" for i in range(9)],
                             labels=LABELS, probabilities=PROBS)
    metrics = evaluate_predictions(labels=preds.labels, probabilities=preds.probabilities,
                                   patient_ids=preds.patient_ids, n_bootstrap=50, seed=1)
    written = write_evaluation_files(tmp_path / "eval", predictions=preds, metrics=metrics)
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == [
        "confusion_matrix.png", "metrics.json", "pr_curves.png", "predictions.csv",
        "reliability_diagram.png", "roc_curves.png",
    ]
    saved = json.loads(written["metrics.json"].read_text())
    assert saved["confusion_matrix"] == [[2, 1, 0], [1, 2, 0], [0, 1, 2]]
    np.testing.assert_allclose(read_predictions(written["predictions.csv"]).probabilities, PROBS)
    assert written["roc_curves.png"].read_bytes()[:8] == PNG_SIGNATURE


def test_plots_never_touch_pyplot_or_the_backend(tmp_path: Path) -> None:
    code = (
        "import sys, matplotlib\n"
        "import numpy as np\n"
        "from evaluation.plots import write_confusion_matrix_png, write_roc_png\n"
        f"write_confusion_matrix_png({str(tmp_path / 'a.png')!r}, confusion=np.eye(3, dtype=int))\n"
        f"write_roc_png({str(tmp_path / 'b.png')!r}, labels=np.array([0, 1, 2, 0]),"
        " probabilities=np.eye(3)[[0, 1, 2, 1]])\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert (tmp_path / "a.png").read_bytes()[:8] == PNG_SIGNATURE
    for source in (REPO_ROOT / "evaluation").glob("*.py"):
        code_lines = re.findall(r"^\s*(?:import|from|matplotlib\.use)\b.*$", source.read_text(), flags=re.M)
        assert not [line for line in code_lines if "pyplot" in line or "matplotlib.use" in line], source
