"""Side-by-side comparison of models from their prediction files.

:func:`compare_predictions` checks that the files describe the same images,
adds the ensembles (mean of probabilities; weighted mean with weights fitted on
separate validation predictions), computes the metrics of
:func:`evaluation.metrics.metric_table` ``(comparison=True)`` with
patient-bootstrap intervals for every column, runs McNemar's test between every
pair of columns, and measures how far apart every pair of models' probabilities
are, image by image (:mod:`evaluation.agreement`).

- The intervals are **paired**: every column uses the same patient resamples
  (same seed, same patients), as described in :mod:`evaluation.bootstrap`.
- McNemar's test is the **exact** two-sided binomial test on the discordant
  images (``scipy.stats.binomtest(b, b + c, 0.5)``): ``b`` counts images only
  the first model classifies correctly, ``c`` images only the second does;
  ``p = 1`` when there are none. It treats images as independent (it ignores
  the patient clustering the intervals respect) and no correction for multiple
  pairs is applied; read small p-values accordingly.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from common.disclaimer import DISCLAIMER
from common.fsutil import atomic_write_text
from data.labels import CLASSES
from evaluation import ensemble
from evaluation.agreement import (
    TOP_IMAGES,
    Agreement,
    agreement_frame,
    disagreements_frame,
    pair_agreement,
)
from evaluation.bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_N_BOOTSTRAP,
    DEFAULT_SEED,
    check_bootstrap_settings,
    metrics_with_ci,
)
from evaluation.metrics import Metric, metric_table
from evaluation.predictions import FLOAT_FORMAT, Predictions, abbreviate

MEAN_ENSEMBLE = "mean ensemble"
WEIGHTED_ENSEMBLE = "weighted ensemble"
TABLE_MD = "comparison.md"
TABLE_CSV = "comparison.csv"
MCNEMAR_CSV = "mcnemar.csv"
WEIGHTS_CSV = "ensemble_weights.csv"
AGREEMENT_CSV = "agreement.csv"
DISAGREEMENTS_CSV = "disagreements.csv"


@dataclasses.dataclass(frozen=True)
class EnsembleWeights:
    """Weights fitted on validation predictions, by model name, and where they came from."""

    weights: dict[str, float]
    step: float
    validation_sources: dict[str, str]
    validation_macro_f1: float


@dataclasses.dataclass
class Comparison:
    """Result of :func:`compare_predictions`; columns are models, then ensembles.

    ``table`` is the metrics shown (rows of the table), ``agreement`` one entry per
    pair of models (not ensembles), ``images`` the test images in row order,
    ``probabilities`` every column's ``(n, 3)`` array in that order, and
    ``ensemble_weights`` the weighted ensemble's weights (None without validation files).
    """

    columns: list[str]
    sources: dict[str, str]
    table: tuple[Metric, ...]
    metrics: dict[str, dict[str, dict[str, Any]]]
    mcnemar: list[dict[str, Any]]
    agreement: list[Agreement]
    images: Predictions
    probabilities: dict[str, np.ndarray]
    n_images: int
    n_patients: int
    n_bootstrap: int
    seed: int
    confidence: float
    ensemble_weights: EnsembleWeights | None = None


def default_names(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Column names for prediction files: the file stem, or the whole path where stems repeat."""
    stems = [Path(p).stem for p in paths]
    return [stem if stems.count(stem) == 1 else str(p) for stem, p in zip(stems, paths)]


def check_names(names: Sequence[str], *, n_files: int, reserved: Sequence[str] = ()) -> None:
    """``ValueError`` unless there is one unique, non-empty name per file and none is reserved."""
    if len(names) != n_files:
        raise ValueError(
            f"--names: expected {n_files} names (one per predictions file), received {len(names)}"
        )
    dups = sorted({n for n in names if list(names).count(n) > 1})
    if dups:
        raise ValueError(f"--names: names must be unique, received repeated names {abbreviate(dups)}")
    bad = [n for n in names if not n.strip() or n in reserved]
    if bad:
        raise ValueError(
            f"--names: names must be non-empty and not one of {', '.join(reserved)}, "
            f"received {abbreviate(map(repr, bad))}"
        )


def align_predictions(predictions: Sequence[Predictions]) -> list[Predictions]:
    """Check that all files cover the same images with the same labels and patients.

    Returns the predictions reordered to the first file's image order.

    Raises:
        ValueError: naming the two files and the differing file names (abbreviated).
    """
    first = predictions[0]
    aligned = [first]
    for other in predictions[1:]:
        pair = f"predictions files {first.source} and {other.source}"
        a, b = set(first.filenames), set(other.filenames)
        if a != b:
            only_a = [f for f in first.filenames if f not in b]  # file order reads better than sorted
            only_b = [f for f in other.filenames if f not in a]
            raise ValueError(
                f"{pair} cover different images: {len(only_a)} only in {first.source}"
                f"{f' ({abbreviate(only_a)})' if only_a else ''}, {len(only_b)} only in {other.source}"
                f"{f' ({abbreviate(only_b)})' if only_b else ''}"
            )
        other = other.reorder(list(first.filenames))
        differ = np.flatnonzero(first.labels != other.labels)
        if differ.size:
            described = (
                f"{first.filenames[i]} ({CLASSES[first.labels[i]]} vs {CLASSES[other.labels[i]]})"
                for i in differ
            )
            raise ValueError(
                f"{pair} disagree on the true label of {differ.size} images: {abbreviate(described)}"
            )
        differ = np.flatnonzero(first.patient_ids != other.patient_ids)
        if differ.size:
            described = (
                f"{first.filenames[i]} ({first.patient_ids[i]!r} vs {other.patient_ids[i]!r})" for i in differ
            )
            raise ValueError(
                f"{pair} disagree on the patient id of {differ.size} images: {abbreviate(described)}"
            )
        aligned.append(other)
    return aligned


def check_disjoint(test: Predictions, validation: Predictions) -> None:
    """``ValueError`` if validation and test predictions share an image (weights must not see test images)."""
    shared = sorted(set(test.filenames) & set(validation.filenames))
    if shared:
        raise ValueError(
            f"validation predictions {validation.source} share {len(shared)} images with test predictions "
            f"{test.source} ({abbreviate(shared)}); ensemble weights must be chosen on validation images only"
        )


def mcnemar_test(*, correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, Any]:
    """Exact McNemar test: two-sided binomial test of ``b`` in ``b + c`` discordant images at p = 0.5.

    Returns ``{"b", "c", "p_value"}``; ``b`` = only A correct, ``c`` = only B correct.
    """
    correct_a = np.asarray(correct_a, dtype=bool)
    correct_b = np.asarray(correct_b, dtype=bool)
    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)
    return {"b": b, "c": c, "p_value": p}


def fit_weights(
    validation: Sequence[Predictions], *, names: Sequence[str], test: Predictions, step: float
) -> EnsembleWeights:
    """Fit the weighted ensemble on ``validation`` (one file per model, in ``names`` order) only.

    Raises ``ValueError`` for a wrong number of files, fewer than two models, or validation
    images that are also in ``test``.
    """
    if len(validation) != len(names):
        raise ValueError(
            f"--weights-from: expected {len(names)} validation files (one per model, same order), "
            f"received {len(validation)}"
        )
    if len(names) < 2:
        raise ValueError(
            f"--weights-from: a weighted ensemble needs at least 2 models, received {len(names)}"
        )
    val = align_predictions(validation)
    check_disjoint(test, val[0])
    val_probs = [v.probabilities for v in val]
    # Only validation arrays reach the weight search; the test predictions are used later, with the result.
    fitted = ensemble.fit_ensemble_weights(labels=val[0].labels, probabilities=val_probs, step=step)
    return EnsembleWeights(
        weights={name: float(w) for name, w in zip(names, fitted)},
        step=step,
        validation_sources={name: v.source for name, v in zip(names, val)},
        validation_macro_f1=float(
            ensemble.macro_f1_of(val[0].labels, ensemble.weighted_ensemble(val_probs, fitted))
        ),
    )


def with_ensembles(
    probabilities: dict[str, np.ndarray], sources: dict[str, str], weights: EnsembleWeights | None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The models' columns followed by the mean ensemble (2+ models) and the weighted one (with weights)."""
    probabilities, sources = dict(probabilities), dict(sources)
    models = list(probabilities)
    if len(models) >= 2:
        probabilities[MEAN_ENSEMBLE] = ensemble.mean_ensemble([probabilities[n] for n in models])
        sources[MEAN_ENSEMBLE] = "mean of the models' probabilities"
    if weights is not None:
        probabilities[WEIGHTED_ENSEMBLE] = ensemble.weighted_ensemble(
            [probabilities[n] for n in models], [weights.weights[n] for n in models]
        )
        sources[WEIGHTED_ENSEMBLE] = "weighted mean, weights fitted on validation predictions"
    return probabilities, sources


def mcnemar_pairs(labels: np.ndarray, probabilities: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """:func:`mcnemar_test` for every pair of columns, in column order."""
    correct = {name: np.argmax(p, axis=1) == labels for name, p in probabilities.items()}
    return [
        {"model_a": a, "model_b": b, **mcnemar_test(correct_a=correct[a], correct_b=correct[b])}
        for a, b in itertools.combinations(probabilities, 2)
    ]


def compare_predictions(
    *,
    predictions: Sequence[Predictions],
    names: Sequence[str],
    validation: Sequence[Predictions] | None = None,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    seed: int = DEFAULT_SEED,
    confidence: float = DEFAULT_CONFIDENCE,
    weight_step: float = ensemble.DEFAULT_WEIGHT_STEP,
) -> Comparison:
    """Compare models (and their ensembles) on the same test images.

    Args:
        predictions: test predictions, one per model.
        names: one column name per model.
        validation: optional validation predictions, one per model in the same
            order; the weighted ensemble's weights are fitted on these only.
        n_bootstrap, seed, confidence: the patient bootstrap (paired across columns).
        weight_step: spacing of the weight grid (must divide 1).

    Returns:
        A :class:`Comparison`. With 2+ models it has a mean-ensemble column, and
        with ``validation`` also a weighted-ensemble column.
    """
    check_bootstrap_settings(n_bootstrap=n_bootstrap, confidence=confidence)
    if not predictions:
        raise ValueError("predictions: a comparison needs at least one predictions file, received none")
    check_names(names, n_files=len(predictions), reserved=(MEAN_ENSEMBLE, WEIGHTED_ENSEMBLE))
    test = align_predictions(predictions)
    ref = test[0]
    weights = None
    if validation is not None:
        weights = fit_weights(validation, names=names, test=ref, step=weight_step)
    probabilities, sources = with_ensembles(
        {name: p.probabilities for name, p in zip(names, test)},
        {name: p.source for name, p in zip(names, test)},
        weights,
    )
    table = metric_table(comparison=True)
    bootstrap = dict(patient_ids=ref.patient_ids, n_bootstrap=n_bootstrap, seed=seed, confidence=confidence)
    return Comparison(
        columns=list(probabilities),
        sources=sources,
        table=table,
        metrics={
            name: metrics_with_ci(labels=ref.labels, probabilities=probs, metrics=table, **bootstrap)
            for name, probs in probabilities.items()
        },
        mcnemar=mcnemar_pairs(ref.labels, probabilities),
        agreement=[
            pair_agreement(probabilities[a], probabilities[b], model_a=a, model_b=b)
            for a, b in itertools.combinations(names, 2)
        ],
        images=ref,
        probabilities=probabilities,
        n_images=len(ref),
        n_patients=int(len(np.unique(ref.patient_ids))),
        n_bootstrap=n_bootstrap,
        seed=seed,
        confidence=confidence,
        ensemble_weights=weights,
    )


def _cell(estimate: dict[str, Any]) -> str:
    if estimate["value"] is None:
        return "n/a"
    if estimate["ci_low"] is None:
        return f"{estimate['value']:.3f}"
    return f"{estimate['value']:.3f} [{estimate['ci_low']:.3f}, {estimate['ci_high']:.3f}]"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(text: str) -> str:
        return str(text).replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return "\n".join(lines)


def format_comparison(comparison: Comparison, *, disclaimer: bool = True) -> str:
    """The comparison as Markdown (what ``compare.py`` prints and writes to ``comparison.md``)."""
    parts = [*_metrics_section(comparison), *_weights_section(comparison), *_mcnemar_section(comparison),
             *_agreement_section(comparison)]
    if disclaimer:
        parts += ["", DISCLAIMER]
    return "\n".join(parts) + "\n"


def _metrics_section(c: Comparison) -> list[str]:
    pct = f"{c.confidence:.0%}"
    return [
        "# Model comparison",
        "",
        f"{c.n_images} test images of {c.n_patients} patients. Values with {pct} confidence intervals from a "
        f"patient-level bootstrap ({c.n_bootstrap} resamples, percentile interval, seed {c.seed}; "
        "the same resamples for every column).",
        "",
        _markdown_table(
            ["metric", *c.columns],
            [[m.short_label, *(_cell(c.metrics[col][m.name]) for col in c.columns)] for m in c.table],
        ),
        "",
        "Columns: " + "; ".join(f"{col} = {c.sources[col]}" for col in c.columns) + ".",
    ]


def _weights_section(c: Comparison) -> list[str]:
    fitted = c.ensemble_weights
    if fitted is None:
        return []
    weights = ", ".join(f"{name} {w:g}" for name, w in fitted.weights.items())
    return [
        "",
        f"Weighted ensemble weights: {weights} (grid step {fitted.step:g}, maximising macro F1 "
        f"{fitted.validation_macro_f1:.3f} on the validation predictions "
        f"{', '.join(fitted.validation_sources.values())}; never on the test predictions above).",
    ]


def _mcnemar_section(c: Comparison) -> list[str]:
    if not c.mcnemar:
        return []
    return [
        "",
        "## McNemar's test (exact two-sided binomial test on the discordant images)",
        "",
        "b: images only model A classifies correctly; c: images only model B does. "
        "Images are treated as independent; no correction for multiple comparisons.",
        "",
        _markdown_table(
            ["model A", "model B", "b", "c", "p"],
            [
                [p["model_a"], p["model_b"], str(p["b"]), str(p["c"]), f"{p['p_value']:.3g}"]
                for p in c.mcnemar
            ],
        ),
    ]


def _agreement_section(c: Comparison) -> list[str]:
    if not c.agreement:
        return []
    rows = []
    for a in c.agreement:
        top = a.most_different[0] if a.most_different else None
        rows.append([
            a.model_a,
            a.model_b,
            f"{a.max_abs_diff:.3g}",
            f"{a.mean_abs_diff:.3g}",
            f"{a.argmax_disagreements} of {a.n_images}",
            "none" if top is None else f"{c.images.filenames[top]} ({a.image_diff[top]:.3g})",
        ])
    return [
        "",
        "## Agreement between the models (per image)",
        "",
        "For every pair of models: the largest and the mean |dp|, the absolute difference of one class "
        "probability on one image, over all images and the three classes; the images whose predicted class "
        f"differs; and the image that differs most (the {TOP_IMAGES} that differ most are in "
        f"{DISAGREEMENTS_CSV}).",
        "",
        _markdown_table(
            ["model A", "model B", "max |dp|", "mean |dp|", "argmax disagreements", "largest difference"],
            rows,
        ),
    ]


def comparison_frame(comparison: Comparison) -> pd.DataFrame:
    """Tidy table: one row per (model, metric) with value, ci_low, ci_high, n_resamples."""
    rows = [
        {"model": col, "metric": m.name, **comparison.metrics[col][m.name]}
        for col in comparison.columns
        for m in comparison.table
    ]
    return pd.DataFrame(rows, columns=["model", "metric", "value", "ci_low", "ci_high", "n_resamples"])


def write_comparison(out_dir: str | os.PathLike[str], comparison: Comparison) -> dict[str, Path]:
    """Write ``comparison.md``, ``comparison.csv``, ``mcnemar.csv``, ``agreement.csv``,
    ``disagreements.csv`` and, with weights, ``ensemble_weights.csv`` into ``out_dir``, each
    atomically. Returns ``{file name: path}``."""
    out = Path(out_dir)
    c = comparison
    frames = {
        TABLE_CSV: comparison_frame(c),
        MCNEMAR_CSV: pd.DataFrame(c.mcnemar, columns=["model_a", "model_b", "b", "c", "p_value"]),
        AGREEMENT_CSV: agreement_frame(c.agreement),
        DISAGREEMENTS_CSV: disagreements_frame(c.agreement, c.images, c.probabilities),
    }
    fitted = c.ensemble_weights
    if fitted is not None:
        frames[WEIGHTS_CSV] = pd.DataFrame(
            {
                "model": list(fitted.weights),
                "weight": list(fitted.weights.values()),
                "validation_file": [fitted.validation_sources[n] for n in fitted.weights],
            }
        )
    written = {TABLE_MD: atomic_write_text(out / TABLE_MD, format_comparison(c))}
    for name, frame in frames.items():
        # The agreement files hold probabilities: the predictions file's precision, not repr's 17 digits.
        float_format = FLOAT_FORMAT if name in (AGREEMENT_CSV, DISAGREEMENTS_CSV) else None
        written[name] = atomic_write_text(out / name, frame.to_csv(index=False, float_format=float_format))
    return written
