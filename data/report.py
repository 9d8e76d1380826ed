"""``report.json`` of a COVIDx build, and its one-screen summary.

The report is deterministic for a given input and output state: no
timestamps, no timings, sources and reasons in a fixed order. Its layout
(``report_version`` 1)::

    {
      "report_version": 1,
      "split": "covidnet",
      "out_dir": "/abs/path",
      "lists": {"train": "train_COVIDx.txt", "test": "test_COVIDx.txt"},
      "totals": {"train": {"normal": n, "pneumonia": n, "COVID-19": n, "total": n}, "test": {...}},
      "images": {"written": n, "already_present": n, "failed": n},
      "warnings": ["cohen: ...", ...],
      "split_adjustments": [{"source", "row", "patient", "image", "reason"}],
      "sources": {
        "<list name>": {
          "title", "flag", "root", "rows_read", "usable_rows",
          "classes": {"<class>": {"rows": n, "train": n, "test": n}},
          "images_written", "images_already_present",
          "skipped_count", "skip_summary": {"<reason>": n},
          "skipped": [{"row", "id", "reason", "detail"}],
          "warnings": [...], "info": {...}
        }
      }
    }

``rows`` counts the usable rows of a class; ``train``/``test`` the images of
that class in each list. For every source ``rows_read = usable_rows +
(skipped rows found while reading)``; the rows dropped later (duplicates, name
collisions, images that fail to decode) are also in ``skipped``.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data.labels import CLASSES
from data.records import FAILED, WRITTEN, Record, Skip, TaskResult
from data.sources import BY_NAME

if TYPE_CHECKING:
    from data.sources import ScanResult
    from data.splits import Adjustment

REPORT_VERSION = 1


def build_report(
    *,
    split: str,
    out_dir: Path,
    scans: Sequence[ScanResult],
    extra_skips: Mapping[str, Sequence[Skip]],
    outcomes: Sequence[tuple[Record, str, TaskResult]],
    adjustments: Sequence[Adjustment],
    lists: Mapping[str, str],
) -> dict[str, Any]:
    """Assemble the report from what each build step found (see the module docstring)."""
    splits = tuple(lists)
    per_source = {s.source: _source_entry(s, extra_skips.get(s.source, ()), splits) for s in scans}
    totals, images = _count_outcomes(outcomes, per_source, splits)
    return {
        "report_version": REPORT_VERSION,
        "split": split,
        "out_dir": str(out_dir),
        "lists": dict(lists),
        "totals": {s: {**totals[s], "total": sum(totals[s].values())} for s in splits},
        "images": images,
        "warnings": [f"{scan.source}: {w}" for scan in scans for w in scan.warnings],
        "split_adjustments": [
            {
                "source": a.record.source,
                "row": a.record.row,
                "patient": a.record.patient_id,
                "image": a.record.out_name,
                "reason": a.reason,
            }
            for a in adjustments
        ],
        "sources": per_source,
    }


def _source_entry(scan: ScanResult, later_skips: Sequence[Skip], splits: Sequence[str]) -> dict[str, Any]:
    """A source's part of the report, with the image counts still at zero (see :func:`_count_outcomes`)."""
    spec = BY_NAME[scan.source]
    classes = {c: {"rows": 0, **{s: 0 for s in splits}} for c in CLASSES}
    for rec in scan.records:
        classes[rec.label]["rows"] += 1
    skipped = list(scan.skipped) + list(later_skips)
    return {
        "title": spec.title,
        "flag": spec.flag,
        "root": str(scan.root),
        "rows_read": scan.rows_read,
        "usable_rows": len(scan.records),
        "classes": classes,
        "images_written": 0,
        "images_already_present": 0,
        "skipped_count": len(skipped),
        "skip_summary": dict(sorted(Counter(s.reason for s in skipped).items())),
        "skipped": [s.as_dict() for s in skipped],
        "warnings": list(scan.warnings),
        "info": dict(scan.info),
    }


def _count_outcomes(
    outcomes: Sequence[tuple[Record, str, TaskResult]],
    per_source: dict[str, dict[str, Any]],
    splits: Sequence[str],
) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Count each image outcome into ``per_source`` (in place); return per-split totals and image counts."""
    totals = {s: {c: 0 for c in CLASSES} for s in splits}
    images = {"written": 0, "already_present": 0, "failed": 0}
    for rec, split_name, result in outcomes:
        entry = per_source[rec.source]
        if result.status == FAILED:
            images["failed"] += 1
            continue
        entry["classes"][rec.label][split_name] += 1
        totals[split_name][rec.label] += 1
        key = "written" if result.status == WRITTEN else "already_present"
        images[key] += 1
        entry[f"images_{key}"] += 1
    return totals, images


def format_summary(report: Mapping[str, Any], *, max_reasons: int = 4) -> str:
    """A short human summary of a report: per source, totals, warnings."""
    dataset = "COVID-19 Radiography Database" if report["split"] == "radiography" else "COVIDx"
    lines = [f"{dataset} ({report['split']} split) in {report['out_dir']}"]
    splits = list(report["lists"])
    for name, src in report["sources"].items():
        per_split = ", ".join(
            f"{s} " + "/".join(str(src["classes"][c][s]) for c in CLASSES) for s in splits
        )
        lines.append(
            f"  {name:<7} {src['rows_read']:>6} rows, "
            f"{sum(src['classes'][c][s] for c in CLASSES for s in splits):>6} "
            f"images ({per_split}), {src['skipped_count']} skipped"
        )
        reasons = sorted(src["skip_summary"].items(), key=lambda kv: (-kv[1], kv[0]))
        if reasons:
            shown = ", ".join(f"{r}: {n}" for r, n in reasons[:max_reasons])
            more = f", +{len(reasons) - max_reasons} more reasons" if len(reasons) > max_reasons else ""
            lines.append(f"          skipped: {shown}{more}")
    for s in splits:
        t = report["totals"][s]
        lines.append(
            f"  {s:<5} {t['total']:>6} images: "
            + ", ".join(f"{c} {t[c]}" for c in CLASSES)
            + f"  -> {report['lists'][s]}"
        )
    img = report["images"]
    lines.append(
        f"  images: {img['written']} written, {img['already_present']} already present, {img['failed']} "
        "failed"
    )
    if report["split_adjustments"]:
        lines.append(
            f"  {len(report['split_adjustments'])} image(s) moved to test to keep patients on one side"
        )
    for w in report["warnings"]:
        lines.append(f"  warning: {w}")
    lines.append("  (class counts are normal/pneumonia/COVID-19; details in report.json)")
    return "\n".join(lines)


def format_fingerprints(report: dict[str, Any]) -> str:
    """The lists' fingerprints as printed after a build (short form; the full ones are in report.json)."""
    from data.fingerprint import short

    lines = [
        f"fingerprints ({report.get('list_format', 'covidnet')} lists; full SHA-256 in report.json, "
        f"image hashes in {report.get('sha256sums', 'SHA256SUMS')}):"
    ]
    for name, fingerprint in report.get("fingerprints", {}).items():
        lines.append(f"  {name:<17} {short(fingerprint)}")
    return "\n".join(lines)
