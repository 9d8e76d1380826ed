"""MIDRC-RICORD-1c: RSNA International COVID-19 Open Radiology Database, chest radiographs ("ricord").

What: 998 chest radiographs of 361 COVID-19-positive patients from four
international sites, published by the RSNA and the Medical Imaging and Data
Resource Center (2021); DICOM, mostly CR/DX, MONOCHROME1 or MONOCHROME2, 12 to
16 bits, often JPEG 2000 compressed (about 1,000 files).
Where: The Cancer Imaging Archive,
https://wiki.cancerimagingarchive.net/pages/viewpage.action?pageId=70230281
(download with the NBIA Data Retriever).
Licence: CC BY-NC 4.0 (as listed by TCIA).

Layout (TCIA)::

    DIR/MIDRC-RICORD-1C-<MRN>/<study folder ending in -<last 5 chars of the Study UID>>/<series>/*.dcm

The NBIA Data Retriever may put the patient folders one or two levels down
(``manifest-*/MIDRC-RICORD-1C/``); they are looked for there too.

Rules (COVID-Net's ``create_ricord_dataset`` and ``create_COVIDx``):

- each study's ``.dcm`` files are sorted by path (across its series folders)
  and image ``i`` is named ``MIDRC-RICORD-1C-<MRN>-<uid5>-<i>.png``;
- only ``ViewPosition`` AP or PA is kept (the index still counts the others);
- with COVID-Net's ``ricord_data_set.txt`` (lines ``name.png [xmin ymin xmax
  ymax]``, in ``DIR`` or given with ``--ricord-list``), only the listed images
  are used, in the file's order, cropped to their box; without it every
  frontal image is used, uncropped, and the report says so;
- patient id = MRN (``419639-000025``), label COVID-19;
- COVID-Net's test patients (see :mod:`data.splits`): every RICORD patient with
  exactly one image, plus ``419639-000025`` and ``419639-001464``.

Conversion: :func:`data.dicom.dicom_to_uint8` (VOI LUT or window, MONOCHROME1
inverted). COVID-Net's notebook min-max scaled after the window; here the
window's output range is used, see docs/dataset.md.
"""
from __future__ import annotations

import os
from pathlib import Path

from data.records import DICOM
from data.sources.base import ScanContext, ScanResult, SourceSpec, out_name_problem

PATIENT_PREFIX = "MIDRC-RICORD-1C-"
LIST_NAME = "ricord_data_set.txt"
FRONTAL = ("AP", "PA")

Crop = tuple[int, int, int, int]


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(
            (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name
        )
    except OSError:
        return []


def find_patient_dirs(root: Path) -> tuple[Path, list[Path]]:
    """The folder that holds the ``MIDRC-RICORD-1C-<MRN>`` folders (``root`` or up to two levels down)."""
    candidates = [root]
    for child in _subdirs(root):
        if not child.name.startswith(PATIENT_PREFIX):
            candidates.append(child)
            candidates.extend(c for c in _subdirs(child) if not c.name.startswith(PATIENT_PREFIX))
    for base in candidates:
        patients = [p for p in _subdirs(base) if p.name.startswith(PATIENT_PREFIX)]
        if patients:
            return base, patients
    return root, []


def read_ricord_list(
    path: Path,
) -> tuple[list[tuple[int, str, Crop | None]], list[tuple[int, str, str]]]:
    """Parse COVID-Net's ``ricord_data_set.txt``: ``(line, name, crop box or None)`` and bad lines."""
    entries: list[tuple[int, str, Crop | None]] = []
    bad: list[tuple[int, str, str]] = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        name = fields[0]
        if len(fields) == 1:
            entries.append((line_no, name, None))
            continue
        if len(fields) != 5:
            bad.append(
                (
                    line_no,
                    line.strip(),
                    f"expected 'name.png' or 'name.png xmin ymin xmax ymax', found {len(fields)} fields",
                )
            )
            continue
        try:
            xmin, ymin, xmax, ymax = (int(v) for v in fields[1:])
        except ValueError:
            bad.append((line_no, line.strip(), "crop box values are not integers"))
            continue
        if xmin < 0 or ymin < 0 or xmax <= xmin or ymax <= ymin:
            bad.append((line_no, line.strip(), f"empty or negative crop box {fields[1:]}"))
            continue
        entries.append((line_no, name, (xmin, ymin, xmax, ymax)))
    return entries, bad


def _study_files(study: Path) -> list[str]:
    # COVID-Net: sorted(glob(study/*/*.dcm)); glob skips hidden names and sorts as strings.
    files = []
    for series in _subdirs(study):
        try:
            names = os.listdir(series)
        except OSError:
            continue
        files.extend(
            os.path.join(str(series), n)
            for n in names
            if n.endswith(".dcm") and not n.startswith(".") and os.path.isfile(os.path.join(str(series), n))
        )
    return sorted(files)


def scan(root: Path, context: ScanContext) -> ScanResult:
    """Walk the TCIA folders and return the frontal (and, with the list, usable) images."""
    SPEC.check(root)
    result = ScanResult(source=SPEC.name, root=root)
    list_path = _list_path(root, context)
    found = _find_images(result)
    if list_path is None:
        result.warnings.append(
            f"no {LIST_NAME}: every AP/PA image is used, without COVID-Net's selection of usable images "
            "and crops"
        )
        result.info["list"] = None
        for name, (ref, mrn, path) in found.items():
            _add_image(result, ref, mrn, name, path, None)
    else:
        result.info["list"] = str(list_path)
        _use_listed_images(result, found, list_path)
    return result


def _list_path(root: Path, context: ScanContext) -> Path | None:
    """``--ricord-list``, else ``DIR/ricord_data_set.txt`` when present, else None."""
    if context.ricord_list is not None:
        if not Path(context.ricord_list).is_file():
            raise FileNotFoundError(
                f"--ricord-list: {context.ricord_list} not found (expected COVID-Net's {LIST_NAME})"
            )
        return Path(context.ricord_list)
    return root / LIST_NAME if (root / LIST_NAME).is_file() else None


def _find_images(result: ScanResult) -> dict[str, tuple[str, str, Path]]:
    """Every study's DICOM files under their COVID-Net names: ``{name: (row reference, MRN, path)}``.

    In folder order; files of a study folder without the Study UID suffix are
    skipped, and so is a second file that would get a name already taken.
    """
    root = result.root
    base, patients = find_patient_dirs(root)
    if base != root:
        result.warnings.append(f"patient folders found under {base}")
    if not patients:
        result.warnings.append(f"no {PATIENT_PREFIX}<MRN> folders found in {root}")
    found: dict[str, tuple[str, str, Path]] = {}
    for patient in patients:
        mrn = patient.name[len(PATIENT_PREFIX) :]
        for study in _subdirs(patient):
            files = _study_files(study)
            result.rows_read += len(files)
            if len(study.name) < 6 or study.name[-6] != "-":
                for f in files:
                    result.skip(
                        os.path.relpath(f, root),
                        mrn,
                        "bad study folder name",
                        f"{study.name!r} does not end with '-<last 5 characters of the Study UID>'",
                    )
                continue
            for i, f in enumerate(files):
                name = f"{PATIENT_PREFIX}{mrn}-{study.name[-5:]}-{i}.png"
                ref = os.path.relpath(f, root)
                if name in found:
                    result.skip(ref, mrn, "name collision", f"{name} is also the name of {found[name][0]}")
                    continue
                found[name] = (ref, mrn, Path(f))
    return found


def _add_image(result: ScanResult, ref: str, mrn: str, name: str, path: Path, crop: Crop | None) -> None:
    """Keep a frontal image with a usable name as a record, or skip it with the reason."""
    from data.dicom import DicomError, read_dicom

    problem = out_name_problem(name) or (None if mrn.strip() else "empty MRN")
    if problem:
        result.skip(ref, mrn, "bad file name", problem)
        return
    try:
        header = read_dicom(path, header_only=True)
    except (DicomError, OSError) as exc:
        result.skip(ref, mrn, "unreadable DICOM", str(exc))
        return
    view = str(header.get("ViewPosition", "")).strip()
    if view not in FRONTAL:
        detail = f"ViewPosition {view!r} is not AP or PA" if view else "no ViewPosition"
        result.skip(ref, mrn, "view not kept", detail)
        return
    result.add(ref, mrn, "COVID-19", path, image=name, out_name=name, convert=DICOM, crop=crop)


def _use_listed_images(result: ScanResult, found: dict[str, tuple[str, str, Path]], list_path: Path) -> None:
    """COVID-Net's selection: the images of ``ricord_data_set.txt``, in its order, with their crops."""
    entries, bad = read_ricord_list(list_path)
    for line_no, text, reason in bad:
        result.rows_read += 1
        result.skip(f"{list_path.name}:{line_no}", text.split()[0] if text else "", "bad list line", reason)
    listed: set[str] = set()
    for line_no, name, crop in entries:
        ref = f"{list_path.name}:{line_no}"
        if name in listed:
            result.rows_read += 1
            result.skip(ref, name, "duplicate list line", f"{name} is listed twice")
            continue
        listed.add(name)
        if name not in found:
            result.rows_read += 1
            result.skip(ref, name, "missing image", f"{name} is listed but no such DICOM was found")
            continue
        ref_dcm, mrn, path = found[name]
        _add_image(result, ref_dcm, mrn, name, path, crop)
    for name, (ref, mrn, _) in found.items():
        if name not in listed:
            result.skip(ref, mrn, "not in list", f"{name} is not in {LIST_NAME} (unusable per COVID-Net)")


SPEC = SourceSpec(
    name="ricord",
    option="ricord",
    title="MIDRC-RICORD-1c chest radiographs (TCIA)",
    url="https://wiki.cancerimagingarchive.net/pages/viewpage.action?pageId=70230281",
    layout="the MIDRC-RICORD-1c download with MIDRC-RICORD-1C-<MRN>/<study>/<series>/*.dcm folders",
    help="MIDRC-RICORD-1c folder (MIDRC-RICORD-1C-<MRN>/<study>/<series>/*.dcm)",
    scan=scan,
)
