"""The benchmark's Markdown table, the ratios issue 7 sets as targets, and whether they are met.

Targets (all ratios come from one run on the same machine):

- cache pipeline >= 10x the baseline-style loader;
- original-file pipeline >= 3x the baseline-style loader;
- batched evaluation >= 5x SURFsara's per-image predict loop;
- on a GPU node at 512 px with mixed precision and XLA: >= 450 training
  images/s per GPU from the cache, with less than 10% of the step spent
  waiting on input. These two only apply to such a run; elsewhere they are
  shown as "n/a" with the reason, next to the value measured.

Row (7) has no target: it is the ratio Keras images/s / PyTorch images/s of
the same network's training step (:func:`keras_over_pytorch`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

GPU_TRAIN_TARGET = 450.0
GPU_INPUT_WAIT_TARGET = 0.10
GPU_TARGET_SIZE = 512

MET, NOT_MET, NOT_MEASURED = "met", "not met", "not measured"


def _rate(measurements: Mapping[str, Mapping[str, Any]], key: str) -> float | None:
    """images/s of ``id`` or ``id.part`` (``eval.loop``, ``fed.memory``); None if missing or failed."""
    unit, _, part = key.partition(".")
    result = measurements.get(unit, {}).get("result")
    if not result or "error" in result:
        return None
    if part:
        result = result.get(part) or {}
    value = result.get("images_per_second")
    return float(value) if value else None


def ratios(measurements: Mapping[str, Mapping[str, Any]], *, gpu: bool, fed_config: Mapping[str, Any]
           ) -> list[dict[str, Any]]:
    """The issue's targets with measured values and status.

    Status is ``met``, ``not met``, ``not measured`` or ``n/a ...``.

    ``fed_config`` holds the ``size``, ``policy`` and ``xla`` of measurement (6).
    """
    rows = []
    for name, num, den, target in (
        ("cache pipeline / baseline loader (2)/(3)", "cache", "baseline", 10.0),
        ("original-file pipeline / baseline loader (1)/(3)", "files", "baseline", 3.0),
        ("batched evaluation / per-image loop (5)", "eval.batched", "eval.loop", 5.0),
    ):
        a, b = _rate(measurements, num), _rate(measurements, den)
        value = a / b if a is not None and b is not None else None
        status = NOT_MEASURED if value is None else (MET if value >= target else NOT_MET)
        rows.append(
            {"name": name, "value": value, "unit": "x", "target": f">= {target:g}x", "status": status}
        )

    fed = measurements.get("fed", {}).get("result") or {}
    fed_rate = _rate(measurements, "fed")
    wait = fed.get("input_bound_fraction") if "error" not in fed else None
    reason = None
    if not gpu:
        reason = "n/a: no GPU"
    elif not (
        fed_config.get("size") == GPU_TARGET_SIZE
        and fed_config.get("xla")
        and str(fed_config.get("policy", "")).startswith("mixed")
    ):
        reason = f"n/a: needs {GPU_TARGET_SIZE} px with mixed precision and XLA"
    for name, value, unit, target, ok in (
        (
            "training images/s per GPU fed from the cache (6)",
            fed_rate,
            "img/s",
            f">= {GPU_TRAIN_TARGET:g} (GPU, {GPU_TARGET_SIZE} px, mixed + XLA)",
            lambda v: v >= GPU_TRAIN_TARGET,
        ),
        (
            "share of the step waiting on input (6)",
            wait,
            "%",
            f"< {GPU_INPUT_WAIT_TARGET:.0%} (GPU, {GPU_TARGET_SIZE} px, mixed + XLA)",
            lambda v: v < GPU_INPUT_WAIT_TARGET,
        ),
    ):
        if value is None:
            status = NOT_MEASURED
        else:
            status = reason or (MET if ok(value) else NOT_MET)
        rows.append({"name": name, "value": value, "unit": unit, "target": target, "status": status})
    return rows


def _fmt_rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def _fmt_mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_table(records: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table: one row per measured thing with images/s and peak memory."""
    lines = ["| # | measurement | configuration | images/s | peak RSS MiB |", "|---|---|---|---:|---:|"]
    for rec in records:
        result = rec.get("result") or {}
        mem = _fmt_mib(result.get("peak_rss_mib"))
        if "error" in result:
            lines.append(
                f"| {rec['number']} | {rec['label']} | {rec['config']} | failed: {result['error']} | - |"
            )
            continue
        parts = rec.get("parts")
        if not parts:
            lines.append(
                f"| {rec['number']} | {rec['label']} | {rec['config']} | "
                f"{_fmt_rate(result.get('images_per_second'))} | {mem} |"
            )
            continue
        for key, label in parts:
            rate = (result.get(key) or {}).get("images_per_second")
            lines.append(f"| {rec['number']} | {label} | {rec['config']} | {_fmt_rate(rate)} | {mem} |")
    return "\n".join(lines)


def format_ratios(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of the targets: measured value, target, status."""
    lines = ["| target | measured | goal | status |", "|---|---:|---|---|"]
    for row in rows:
        value = row["value"]
        if value is None:
            shown = "-"
        elif row["unit"] == "x":
            shown = f"{value:.1f}x"
        elif row["unit"] == "%":
            shown = f"{value:.0%}"
        else:
            shown = _fmt_rate(value)
        lines.append(f"| {row['name']} | {shown} | {row['target']} | {row['status']} |")
    return "\n".join(lines)


def keras_over_pytorch(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Keras images/s / PyTorch images/s of every successful Keras-against-PyTorch unit, by model."""
    ratios = {}
    for rec in records:
        result = rec.get("result") or {}
        if rec.get("kind") == "torch" and "error" not in result:
            ratios[rec["params"]["model"]] = float(result["keras_over_pytorch"])
    return ratios


def format_keras_over_pytorch(records: Sequence[Mapping[str, Any]]) -> str:
    """One line with the (7) ratios, or "" when none was measured."""
    shown = []
    for rec in records:
        result = rec.get("result") or {}
        if rec.get("kind") == "torch" and "error" not in result:
            params = rec["params"]
            shown.append(f"`{params['model']}` {params['size']} px, batch {params['batch_size']}: "
                         f"{result['keras_over_pytorch']:.2f}x")
    if not shown:
        return ""
    return ("(7) Keras images/s / PyTorch images/s, the same network, device, threads, batch and size "
            "(above 1: Keras is faster): " + "; ".join(shown))
