"""COVID-19 Image Data Collection (ieee8023/covid-chestxray-dataset), "cohen".

What: chest X-rays and CT scans of COVID-19 and other pneumonias collected from
publications and websites by Joseph Paul Cohen et al. (2020-2021); fewer than
1,000 images (the June 2020 snapshot has 751 metadata rows, 570 of them frontal
X-rays), a few hundred MB with the CT volumes.
Where: https://github.com/ieee8023/covid-chestxray-dataset (``metadata.csv``
and ``images/``; CT volumes under ``volumes/``).
Licence: per image, given in the metadata's ``license`` column (CC BY,
CC BY-NC-SA, Apache 2.0, ...); check it before redistributing images.

Rules (COVID-Net's ``create_COVIDx``; SURFsara's variant in brackets):

- keep the views ``PA``, ``AP``, ``AP Supine``, ``AP semi erect``, ``AP erect``
  [``PA`` only];
- the finding is the last element of the 2021+ hierarchy
  (``Pneumonia/Viral/COVID-19``) or, for the flat 2020 values, the first comma
  element (``COVID-19, ARDS`` -> ``COVID-19``) [the exact value];
- mapping to the three classes by :mod:`data.splits`; anything else (``todo``,
  ``No Finding``, ``Pneumocystis``...) is skipped as not mapped;
- COVID-19 rows whose URL contains ``eurorad.org``, ``ml-workgroup`` or
  ``sirm.org`` are skipped: those images are also in the SIRM source [no such
  rule];
- the patient id is the ``patientid`` value as text; the image is
  ``DIR/<folder>/<filename>`` when the metadata has a ``folder`` column (2020-04
  onwards) and ``DIR/images/<filename>`` otherwise.

Quirks handled: header spellings that vary across snapshots (``Patientid``,
`` url``: column names are compared stripped and lower-cased), empty cells,
rows whose image was not downloaded (skipped as "missing image"), file names
that would leave the folder (``../x.png``).
"""
from __future__ import annotations

from pathlib import Path

from data.lists import check_relative_filename
from data.sources.base import (
    ScanContext,
    ScanResult,
    SourceSpec,
    clean_id,
    read_table,
)
from data.splits import CohenRules, SplitRules

METADATA = "metadata.csv"
LAYOUT = "the covid-chestxray-dataset folder with metadata.csv and images/"
REQUIRED = ("patientid", "finding", "view", "filename")


def scan(root: Path, context: ScanContext) -> ScanResult:
    """Read ``metadata.csv`` and return the usable rows in file order."""
    SPEC.check(root)
    rules = context.cohen_rules()
    table = read_table(root / METADATA, flag=SPEC.flag, required=REQUIRED)
    has_folder = "folder" in table.columns
    result = ScanResult(source=SPEC.name, root=root, rows_read=len(table))
    result.info["metadata"] = str(root / METADATA)
    result.info["folder_column"] = has_folder
    if "url" not in table.columns:
        result.warnings.append(f"{root / METADATA} has no 'url' column: the URL rules cannot run")
    urls: set[str] = set()
    for row_no, row in enumerate(table.to_dict("records"), start=1):
        pid = clean_id(row["patientid"])
        view = str(row["view"]).strip()
        if view not in rules.views:
            kept = ", ".join(sorted(rules.views))
            result.skip(row_no, pid, "view not kept", f"view {view!r} (kept: {kept})")
            continue
        url = str(row.get("url", "")).strip()
        if url:
            urls.add(url)
        label = _label(result, row_no, pid, str(row["finding"]).strip(), url, context.rules, rules)
        if label is None:
            continue
        filename = str(row["filename"]).strip()
        folder = (str(row.get("folder", "")).strip() if has_folder else "") or "images"
        problem = check_relative_filename(folder)
        src = result.find_image(row_no, pid, root / folder, [filename], problem=problem)
        if src is not None:
            result.add(row_no, pid, label, src)
    result.urls = frozenset(urls)
    return result


def _label(
    result: ScanResult, row_no: int, pid: str, raw_finding: str, url: str, split_rules: SplitRules,
    rules: CohenRules,
) -> str | None:
    """The class of a row that passed the view filter, or None with the row skipped."""
    if not raw_finding:
        result.skip(row_no, pid, "empty finding")
        return None
    label = split_rules.label(rules.finding(raw_finding))
    if label is None:
        result.skip(row_no, pid, "finding not mapped", f"finding {raw_finding!r} not mapped")
        return None
    site = next((s for s in rules.url_skip if s in url), None) if label == "COVID-19" else None
    if site is not None:
        result.skip(row_no, pid, "COVID-19 image duplicated in SIRM", f"url contains {site!r}: {url}")
        return None
    if not pid:
        result.skip(row_no, pid, "empty patient id")
        return None
    return label


SPEC = SourceSpec(
    name="cohen",
    option="cohen",
    title="COVID-19 Image Data Collection (ieee8023/covid-chestxray-dataset)",
    url="https://github.com/ieee8023/covid-chestxray-dataset",
    layout=LAYOUT,
    help="ieee8023/covid-chestxray-dataset folder (metadata.csv, images/)",
    scan=scan,
    required=(METADATA,),
)
