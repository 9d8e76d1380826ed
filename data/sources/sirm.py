"""COVID-19 Radiography Database, COVID-19 images ("sirm").

What: the COVID-19 chest X-rays of the COVID-19 Radiography Database by
M.E.H. Chowdhury, T. Rahman et al. (Qatar University, University of Dhaka),
collected from the Italian Society of Medical and Interventional Radiology
(SIRM), publications and other public sources. COVID-Net used the 2020 release:
``COVID.metadata.xlsx`` plus a ``COVID/`` folder of a few hundred to about
1,200 PNGs depending on the release (a few hundred MB).
Where: https://www.kaggle.com/tawsifurrahman/covid19-radiography-database
Terms: see the Kaggle page; each image's origin is in the ``URL`` column.

Rules (COVID-Net's ``create_COVIDx``):

- rows whose ``URL`` is also a URL of a cohen row that passed cohen's view
  filter, or is the cohen repository's own URL, are skipped: cohen has those
  images already (this needs ``--cohen``; without it the check cannot run and
  the report says so);
- rows whose ``FILE NAME`` has one of the numbers 100-105, 110-113, 122-126 or
  217 in parentheses are skipped (COVID-Net's discard list; with the
  ``COVID N`` names of the release COVID-Net used, there are no parentheses, so
  its slice never matched and nothing was discarded; the same happens here);
- the image is ``COVID/<FILE NAME>.<format in lower case>``, falling back to
  ``COVID/COVID (N).png`` (later releases' naming) and to ``COVID/images/``
  (the 2021+ folder layout);
- the patient id is ``FILE NAME`` (it contains a space, e.g. ``COVID 119``);
- the image is decoded, converted to one channel and written under its name
  with the spaces removed (``COVID 119.png`` -> ``COVID119.png``).
"""
from __future__ import annotations

import re
from pathlib import Path

from data.records import GRAY
from data.sources.base import ScanContext, ScanResult, SourceSpec, clean_id, read_table

METADATA = "COVID.metadata.xlsx"
IMAGES = "COVID"
COHEN_REPOSITORY_URL = "https://github.com/ieee8023/covid-chestxray-dataset"
DISCARD = frozenset(
    {"100", "101", "102", "103", "104", "105", "110", "111", "112", "113", "122", "123", "124", "125", "126",
     "217"}
)
_PARENS = re.compile(r"\(([^)]*)\)")
_COVID_N = re.compile(r"COVID (\d+)")


def _candidates(pid: str, fmt: str) -> list[str]:
    names = [f"{pid}.{fmt.lower()}"]
    match = _COVID_N.fullmatch(pid)
    if match:
        names.append(f"COVID ({match.group(1)}).png")
    return names


def _excluded_urls(context: ScanContext, result: ScanResult) -> frozenset[str]:
    """The URLs whose SIRM rows duplicate cohen's; a warning in ``result`` when cohen was not read."""
    cohen = context.earlier.get("cohen")
    if cohen is None:
        result.warnings.append(
            "--sirm without --cohen: the SIRM images that duplicate cohen's cannot be dropped "
            "(COVID-Net dropped every row whose URL is also in cohen's metadata)"
        )
        return frozenset({COHEN_REPOSITORY_URL})
    return cohen.urls | {COHEN_REPOSITORY_URL}


def _row_problem(result: ScanResult, row_no: int, pid: str, url: str, exclude: frozenset[str]) -> bool:
    """Skip the row when cohen has its image, COVID-Net discarded it or it has no id; True if skipped."""
    if url and url in exclude:
        result.skip(row_no, pid, "duplicate of a cohen image", f"URL {url} is in cohen's metadata")
        return True
    parens = _PARENS.search(pid)
    if parens and parens.group(1).strip() in DISCARD:
        number = parens.group(1).strip()
        result.skip(row_no, pid, "discarded by COVID-Net", f"number {number} is on COVID-Net's discard list")
        return True
    if not pid:
        result.skip(row_no, pid, "empty patient id")
        return True
    return False


def scan(root: Path, context: ScanContext) -> ScanResult:
    """Read ``COVID.metadata.xlsx`` and return the usable rows in sheet order."""
    SPEC.check(root)
    table = read_table(root / METADATA, flag=SPEC.flag, required=("file name", "format", "url"), excel=True)
    result = ScanResult(source=SPEC.name, root=root, rows_read=len(table))
    exclude = _excluded_urls(context, result)
    folders = [root / IMAGES, root / IMAGES / "images"]
    for row_no, row in enumerate(table.to_dict("records"), start=1):
        pid = clean_id(row["file name"])
        if _row_problem(result, row_no, pid, str(row["url"]).strip(), exclude):
            continue
        names = _candidates(pid, str(row["format"]).strip() or "png")
        src = result.find_image(row_no, pid, folders, names)
        if src is not None:
            result.add(row_no, pid, "COVID-19", src, convert=GRAY)
    return result


SPEC = SourceSpec(
    name="sirm",
    option="sirm",
    title="COVID-19 Radiography Database, COVID-19 images (SIRM and others)",
    url="https://www.kaggle.com/tawsifurrahman/covid19-radiography-database",
    layout="the COVID-19 Radiography Database folder with COVID.metadata.xlsx and COVID/",
    help="COVID-19 Radiography Database folder (COVID.metadata.xlsx, COVID/)",
    scan=scan,
    required=(METADATA, IMAGES + "/"),
)
