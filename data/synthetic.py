"""Small synthetic copies of the six public sources, in their real formats.

:func:`make_synthetic_sources` writes, under one folder::

    cohen/       metadata.csv (2021+ columns: hierarchical findings, a folder column) + images/*.jpg|png
    figure1/     metadata.csv in ISO-8859-1 + images/<patientid>.jpg|png
    actualmed/   metadata.csv with an imagename column + images/*.png (16-bit)
    sirm/        COVID.metadata.xlsx + COVID/COVID <n>.png (3-channel)
    rsna/        stage_2_detailed_class_info.csv, stage_2_train_labels.csv (several rows per
                 pneumonia patient), stage_2_train_images/<patientId>.dcm (8-bit JPEG baseline)
    ricord/      MIDRC-RICORD-1C-<MRN>/<study ending in -uid5>/<series>/*.dcm (MONOCHROME1/2,
                 12-16 bits stored, JPEG 2000 lossless, RLE lossless or uncompressed, some windowed)

so that ``create_covidx.py`` and the tests exercise exactly the code paths the
real downloads do, with nothing downloaded. :func:`make_synthetic_radiography_db`
writes the whole COVID-19 Radiography Database in its 2021+ layout
(``<Class>/images/<Class>-<n>.png``) for ``--radiography-db``. The patient ids hit the fixed
test-patient rules of the COVID-Net split (cohen ``8``/``31`` and ``19``,
``20``...; Figure1 ``COVID-00025``...; Actualmed ``ANON24``...; SIRM
``COVID 119``...; RSNA ids from the shipped test lists; RICORD single-image
patients and ``419639-000025``), so a build has test images of every class.
A few rows exercise the skip rules (a lateral view, ``todo`` and ``No Finding``
findings, a eurorad COVID-19 row, a row whose image is missing, empty
findings, a SIRM duplicate of a cohen URL, "No Lung Opacity / Not Normal" RSNA
patients (their DICOMs are not written: no rule reads them), a lateral RICORD
image) and COVID-Net's ``'191COVID-00024'`` quirk (cohen ``191`` and Figure1
``COVID-00024`` end up in train).

The images (:func:`render_cxr`) are cartoon chest radiographs whose class is
visible at 32 px and survives the training augmentation: ``normal`` has clear
lung fields; ``pneumonia`` one dense, unilateral, lobar consolidation;
``COVID-19`` bilateral, peripheral, patchy ground-glass opacities in the lower
zones. Patient position, size, exposure and noise vary from image to image.

Everything is a function of ``seed``: the same seed writes the same bytes.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import logging
import os
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import openpyxl
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from common.fsutil import atomic_path, atomic_write_bytes, atomic_write_text
from data.labels import CLASSES
from data.sources.rsna import shipped_test_patients
from data.splits import COVIDNET_TEST_PATIENTS

log = logging.getLogger(__name__)

DEFAULT_SIZE = 400
DEFAULT_IMAGE_SIZE = 256
MIN_SIZE = 60
SOURCE_DIRS = {
    "cohen": "cohen",
    "figure1": "figure1",
    "actualmed": "actualmed",
    "sirm": "sirm",
    "rsna": "rsna",
    "ricord": "ricord",
}
TEST_FRACTION = 0.17
_CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
_UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root


# -- images ------------------------------------------------------------------------------------

def _ellipse(u: np.ndarray, v: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2


def render_cxr(label: str, rng: np.random.Generator, size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """A synthetic frontal chest radiograph of class ``label`` as ``uint8 [size, size]``.

    Air is dark, tissue and opacities bright (MONOCHROME2 convention).
    """
    if label not in CLASSES:
        raise ValueError(f"unknown label: allowed labels are {', '.join(CLASSES)}, received {label!r}")
    f = lambda *a: float(rng.uniform(*a))  # noqa: E731  (NumPy scalars would promote float32 arrays)
    work = min(size, 128)  # draw at <= 128 px, then resize: the class signal is coarse
    grid = np.linspace(-1.0, 1.0, work, dtype=np.float32)
    v, u = np.meshgrid(grid, grid, indexing="ij")
    scale, dx, dy = f(0.92, 1.05), f(-0.05, 0.05), f(-0.05, 0.05)
    u = (u - dx) / scale
    v = (v - dy) / scale

    def blur(a: np.ndarray, sigma: float) -> np.ndarray:
        return cv2.GaussianBlur(a, (0, 0), sigma * work / 256.0)

    img = np.full((work, work), 0.06, np.float32)
    body = (_ellipse(u, v, 0.0, 0.1, 0.86, 1.05) < 1).astype(np.float32)
    img += 0.42 * blur(body, 6)
    lungs = np.zeros_like(img)
    for side in (-1.0, 1.0):
        cx, cy, rx, ry = side * 0.36, -0.02, 0.27 * f(0.92, 1.08), 0.58 * f(0.92, 1.08)
        widen = 0.7 + 0.45 * np.clip((v - cy) / ry + 0.6, 0.0, 1.3)  # narrow apex, broad base
        inside = (((u - cx) / (rx * widen)) ** 2 + ((v - cy) / ry) ** 2) < 1
        lungs = np.maximum(lungs, inside.astype(np.float32))
    lungs = blur(lungs, 4)
    img -= 0.30 * lungs
    img += 0.26 * blur((_ellipse(u, v, 0.12, 0.3, 0.25, 0.24) < 1).astype(np.float32), 5)  # heart
    img += 0.18 * blur((np.abs(u) < 0.07).astype(np.float32) * body, 3)  # spine
    ribs = (np.sin((v + 0.25 * u * u) * 11.0 * np.pi + f(0, 2 * np.pi)) > 0.75).astype(np.float32)
    img += 0.05 * blur(ribs, 1.5) * lungs

    if label == "pneumonia":
        side = 1.0 if rng.random() < 0.5 else -1.0
        lobe = _ellipse(u, v, side * f(0.3, 0.42), f(0.05, 0.32), f(0.17, 0.23), f(0.2, 0.28)) < 1
        img += f(0.32, 0.42) * blur(lobe.astype(np.float32), 3) * lungs
    elif label == "COVID-19":
        texture = blur(rng.standard_normal((work, work)).astype(np.float32), 5)
        texture = (texture - texture.min()) / (float(np.ptp(texture)) + 1e-6)
        patches = np.zeros_like(img)
        for side in (-1.0, 1.0):
            for _ in range(int(rng.integers(3, 6))):
                r = f(0.08, 0.14)
                patches += _ellipse(u, v, side * f(0.46, 0.6), f(-0.05, 0.42), r, r * f(0.8, 1.4)) < 1
        img += f(0.16, 0.22) * blur(np.clip(patches, 0, 1), 7) * lungs * (0.6 + 0.8 * texture)

    if size != work:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0.0, 0.012, img.shape).astype(np.float32)
    img = np.clip(img, 0.0, 1.0) ** f(0.9, 1.1)
    img = img * f(0.92, 1.05) + f(-0.02, 0.02)
    return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


# -- file writers ------------------------------------------------------------------------------


def _write_image(path: Path, image: np.ndarray, params: list[int] | None = None) -> None:
    ok, buf = cv2.imencode(path.suffix, image, params or [])
    if not ok:
        raise ValueError(f"OpenCV cannot encode {path.suffix}")
    atomic_write_bytes(path, buf.tobytes())


def _write_csv(path: Path, header: list[str], rows: list[list[str]], encoding: str = "utf-8") -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode(encoding))


def write_xlsx(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """Write a one-sheet ``.xlsx`` whose bytes depend only on its content (fixed dates)."""
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Sheet1"
    sheet.append(header)
    for row in rows:
        sheet.append(row)
    fixed = datetime.datetime(2020, 3, 28)
    book.properties.created = fixed
    book.properties.modified = fixed
    raw = io.BytesIO()
    book.save(raw)
    # openpyxl stamps the zip entries with the current time: re-pack them with a fixed one.
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(raw.getvalue())) as src,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                data = _fix_core_dates(data)
            entry = zipfile.ZipInfo(info.filename, date_time=(2020, 3, 28, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(entry, data)
    atomic_write_bytes(path, out.getvalue())


def _fix_core_dates(xml: bytes) -> bytes:
    return re.sub(rb"(<dcterms:(?:created|modified)[^>]*>)[^<]*(<)", rb"\g<1>2020-03-28T00:00:00Z\2", xml)


def _uid(seed: int, *parts: object) -> str:
    return str(generate_uid(prefix=_UID_PREFIX, entropy_srcs=[str(seed), *map(str, parts)]))


def _dicom_dataset(
    *,
    rows: int,
    cols: int,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    instance_uid: str,
    view: str,
    bits_stored: int,
    photometric: str,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _CR_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = _CR_SOP_CLASS
    ds.SOPInstanceUID = instance_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.StudyDate = "20200328"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    return ds


def _save_dicom(path: Path, ds: Dataset) -> None:
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def write_rsna_dicom(path: Path, image: np.ndarray, *, patient_id: str, seed: int, view: str = "PA") -> None:
    """An RSNA-style DICOM: 8-bit MONOCHROME2, JPEG baseline (encoded by OpenCV, encapsulated by pydicom)."""
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise ValueError("OpenCV cannot encode JPEG")
    ds = _dicom_dataset(
        rows=image.shape[0],
        cols=image.shape[1],
        patient_id=patient_id,
        study_uid=_uid(seed, "rsna", patient_id, "st"),
        series_uid=_uid(seed, "rsna", patient_id, "se"),
        instance_uid=_uid(seed, "rsna", patient_id),
        view=view,
        bits_stored=8,
        photometric="MONOCHROME2",
    )
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([jpeg.tobytes()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    _save_dicom(path, ds)


def write_ricord_dicom(
    path: Path,
    image: np.ndarray,
    *,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    instance_uid: str,
    view: str,
    bits_stored: int,
    monochrome1: bool,
    windowed: bool,
    syntax: str,
) -> None:
    """A RICORD-style DICOM from an 8-bit image: 12-16 bits stored, optionally MONOCHROME1 and windowed.

    ``syntax`` is ``"j2k"`` (JPEG 2000 lossless), ``"rle"`` or ``"native"``.
    """
    top = 2**bits_stored - 1
    values = np.rint(image.astype(np.float64) / 255.0 * top)
    if monochrome1:
        values = top - values
    pixels = values.astype(np.uint16)
    ds = _dicom_dataset(
        rows=image.shape[0],
        cols=image.shape[1],
        patient_id=patient_id,
        study_uid=study_uid,
        series_uid=series_uid,
        instance_uid=instance_uid,
        view=view,
        bits_stored=bits_stored,
        photometric="MONOCHROME1" if monochrome1 else "MONOCHROME2",
    )
    if windowed:
        ds.WindowCenter = (top + 1) // 2
        ds.WindowWidth = top + 1
    ds.PixelData = pixels.tobytes()
    if syntax == "j2k":
        ds.compress(JPEG2000Lossless, pixels, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    elif syntax == "rle":
        ds.compress(RLELossless, pixels, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    elif syntax != "native":
        raise ValueError(f"DICOM syntax must be native, j2k or rle, received {syntax!r}")
    _save_dicom(path, ds)


# -- the plan: who is in which source, with how many images -------------------------------------


@dataclasses.dataclass(frozen=True)
class Patient:
    """One synthetic patient: id, class, number of images, whether the rules put it in test."""

    pid: str
    label: str
    images: int
    test: bool


def _plan_patients(
    n_images: int,
    label: str,
    test_ids: list[str],
    make_id: Callable[[int], str],
    rng: np.random.Generator,
    *,
    max_per_patient: int = 3,
    test_fraction: float = TEST_FRACTION,
) -> list[Patient]:
    """Patients for ``n_images`` images: about ``test_fraction`` of them from ``test_ids``."""
    patients: list[Patient] = []
    per_test = min(2, max_per_patient)
    n_test = min(len(test_ids) * per_test, max(1, round(test_fraction * n_images))) if test_ids else 0
    left = n_test
    for pid in test_ids:
        if left <= 0:
            break
        k = min(left, 1 + int(rng.integers(0, per_test)))
        patients.append(Patient(pid, label, k, True))
        left -= k
    remaining = n_images - (n_test - max(left, 0))
    i = 0
    while remaining > 0:
        k = min(remaining, 1 + int(rng.integers(0, max_per_patient)))
        patients.append(Patient(make_id(i), label, k, False))
        remaining -= k
        i += 1
    return patients


@dataclasses.dataclass(frozen=True)
class SyntheticPlan:
    """How many images each source gets."""

    rsna_normal: int
    rsna_pneumonia: int
    cohen_pneumonia: int
    cohen_covid: int
    fig1: int
    actmed: int
    sirm: int
    ricord: int


def plan_sizes(size: int) -> SyntheticPlan:
    """Split ``size`` images into sources so that the classes are about equal."""
    if size < MIN_SIZE:
        raise ValueError(f"--synthetic-size must be at least {MIN_SIZE}, received {size}")
    normal = round(size / 3)
    pneumonia = round(size / 3)
    covid = size - normal - pneumonia
    cohen_pneumonia = max(8, round(pneumonia * 0.3))
    ricord = max(8, round(covid * 0.3))
    cohen_covid = max(6, round(covid * 0.25))
    fig1 = max(4, round(covid * 0.15))
    actmed = max(4, round(covid * 0.15))
    sirm = max(4, covid - ricord - cohen_covid - fig1 - actmed)
    return SyntheticPlan(
        normal, pneumonia - cohen_pneumonia, cohen_pneumonia, cohen_covid, fig1, actmed, sirm, ricord
    )


# -- the sources -------------------------------------------------------------------------------

_COHEN_FINDINGS = {
    "pneumonia": [
        "Pneumonia/Viral/SARS",
        "Pneumonia/Bacterial/Streptococcus",
        "Pneumonia/Bacterial/Klebsiella",
        "Pneumonia/Bacterial/Legionella",
        "Pneumonia/Viral/MERS-CoV/MERS",
    ],
    "COVID-19": ["Pneumonia/Viral/COVID-19"],
}
_COHEN_HEADER = [
    "patientid",
    "offset",
    "sex",
    "age",
    "finding",
    "RT_PCR_positive",
    "survival",
    "intubated",
    "view",
    "modality",
    "date",
    "location",
    "folder",
    "filename",
    "doi",
    "url",
    "license",
    "clinical_notes",
    "other_notes",
]


class _CohenRows:
    """The rows of a synthetic cohen ``metadata.csv``, numbered in the order they are added."""

    def __init__(self, root: Path, seed: int, image_size: int) -> None:
        self.root, self.seed, self.image_size = root, seed, image_size
        self.rows: list[list[str]] = []
        self.urls: list[str] = []

    def add(
        self, p: Patient, finding: str, view: str, *, url: str | None = None, write: bool = True,
        label: str = "",
    ) -> None:
        """One row of patient ``p`` (and its image unless ``write`` is False: a missing image)."""
        n = len(self.rows)
        ext = ".jpg" if n % 3 else ".png"
        name = f"synthetic-{p.pid}-{n}{ext}"
        url = url or f"https://radiopaedia.org/cases/synthetic-{p.pid}"
        if write:
            image = render_cxr(label or p.label, _rng(self.seed, 11, n), self.image_size)
            params = [cv2.IMWRITE_JPEG_QUALITY, 92] if ext == ".jpg" else None
            _write_image(self.root / "images" / name, image, params)
        sex, age = "M" if n % 2 else "F", str(30 + n % 50)
        self.rows.append([
            p.pid, str(n % 7), sex, age, finding, "Y", "", "", view, "X-ray", "2020", "synthetic", "images",
            name, "", url, "CC BY", "synthetic image", "",
        ])
        self.urls.append(url)


def _cohen(root: Path, plan: SyntheticPlan, seed: int, image_size: int) -> list[str]:
    rng = _rng(seed, 1)
    pneu = _plan_patients(
        plan.cohen_pneumonia,
        "pneumonia",
        list(COVIDNET_TEST_PATIENTS["pneumonia"]),
        lambda i: str(1000 + i),
        rng,
        max_per_patient=4,
    )
    covid_tests = [p for p in COVIDNET_TEST_PATIENTS["COVID-19"] if p.isdigit()]
    covid = _plan_patients(plan.cohen_covid - 1, "COVID-19", covid_tests, lambda i: str(2000 + i), rng)
    # COVID-Net's '191COVID-00024' quirk: 191 stays in train
    covid.append(Patient("191", "COVID-19", 1, False))
    table = _CohenRows(root, seed, image_size)
    views = ["PA", "AP", "AP Supine", "AP semi erect", "AP erect"]
    for p in pneu + covid:
        for k in range(p.images):
            n = len(table.rows)
            findings = _COHEN_FINDINGS[p.label]
            table.add(p, findings[(n + k) % len(findings)], views[(n + k) % len(views)])
    table.add(Patient("3000", "COVID-19", 1, False), "Pneumonia/Viral/COVID-19", "L")  # lateral: not kept
    table.add(Patient("3001", "normal", 1, False), "todo", "PA")  # not mapped
    table.add(Patient("3002", "normal", 1, False), "No Finding", "PA")  # not mapped
    table.add(
        Patient("3003", "COVID-19", 1, False),
        "Pneumonia/Viral/COVID-19",
        "PA",
        url="https://www.eurorad.org/case/99999",
    )  # duplicates SIRM: skipped
    table.add(Patient("3004", "COVID-19", 1, False), "Pneumonia/Viral/COVID-19", "AP", write=False)  # missing
    _write_csv(root / "metadata.csv", _COHEN_HEADER, table.rows)
    return table.urls


def _figure1(root: Path, plan: SyntheticPlan, seed: int, image_size: int) -> None:
    rng = _rng(seed, 2)
    tests = [p for p in COVIDNET_TEST_PATIENTS["COVID-19"] if p.startswith("COVID-000")]
    patients = _plan_patients(
        plan.fig1 - 1, "COVID-19", tests, lambda i: f"COVID-{100 + i:05d}", rng, max_per_patient=1
    )
    patients.append(Patient("COVID-00024", "COVID-19", 1, False))  # the other half of '191COVID-00024'
    rows = []
    for i, p in enumerate(patients):
        for _k in range(p.images):  # Figure1 has one image per patient id
            ext = ".png" if i % 5 == 4 else ".jpg"
            image = render_cxr(p.label, _rng(seed, 21, i), image_size)
            _write_image(
                root / "images" / f"{p.pid}{ext}",
                image,
                [cv2.IMWRITE_JPEG_QUALITY, 92] if ext == ".jpg" else None,
            )
        rows.append(
            [
                p.pid,
                "",
                "M",
                "50",
                "COVID-19",
                "",
                "38.5",
                "92",
                "AP erect",
                "X-ray",
                "",
                "Température 38,5 °C, saturation 92 %",
            ]
        )
    image = render_cxr("normal", _rng(seed, 22, 0), image_size)
    _write_image(root / "images" / "COVID-00900.jpg", image)
    rows.append(
        ["COVID-00900", "", "F", "40", "", "", "", "", "PA", "X-ray", "", "finding pending"]
    )  # empty finding
    header = [
        "patientid",
        "offset",
        "sex",
        "age",
        "finding",
        "survival",
        "temperature",
        "pO2 saturation",
        "view",
        "modality",
        "artifacts/distortion",
        "notes",
    ]
    _write_csv(root / "metadata.csv", header, rows, encoding="ISO-8859-1")


def _actualmed(root: Path, plan: SyntheticPlan, seed: int, image_size: int) -> None:
    rng = _rng(seed, 3)
    tests = [p for p in COVIDNET_TEST_PATIENTS["COVID-19"] if p.startswith("ANON")]
    patients = _plan_patients(
        plan.actmed, "COVID-19", tests, lambda i: f"ANON{500 + i}", rng, max_per_patient=2
    )
    rows = []
    n = 0
    for p in patients:
        for _ in range(p.images):
            name = f"CR.1.2.840.113564.{seed}.{n:06d}.png"
            image = render_cxr(p.label, _rng(seed, 31, n), image_size)
            _write_image(root / "images" / name, image.astype(np.uint16) * 257)  # 16-bit PNG, as Actualmed's
            rows.append([p.pid, "", "", "", "COVID-19", "", "", "", "PA", "X-ray", name, "", ""])
            n += 1
    for finding, pid in (("No finding", "ANON900"), ("", "ANON901")):
        name = f"CR.1.2.840.113564.{seed}.{n:06d}.png"
        _write_image(
            root / "images" / name,
            render_cxr("normal", _rng(seed, 31, n), image_size).astype(np.uint16) * 257,
        )
        rows.append([pid, "", "", "", finding, "", "", "", "PA", "X-ray", name, "", ""])
        n += 1
    header = [
        "patientid",
        "offset",
        "sex",
        "age",
        "finding",
        "survival",
        "temperature",
        "pO2 saturation",
        "view",
        "modality",
        "imagename",
        "artifacts/distortion",
        "notes",
    ]
    _write_csv(root / "metadata.csv", header, rows)


def _sirm(root: Path, plan: SyntheticPlan, seed: int, image_size: int, cohen_urls: list[str]) -> None:
    rng = _rng(seed, 4)
    tests = [p for p in COVIDNET_TEST_PATIENTS["COVID-19"] if p.startswith("COVID ")]
    patients = _plan_patients(
        plan.sirm, "COVID-19", tests, lambda i: f"COVID {300 + i}", rng, max_per_patient=1
    )
    rows = []
    for i, p in enumerate(patients):
        gray = render_cxr(p.label, _rng(seed, 41, i), image_size)
        color = cv2.merge(
            [gray, gray, np.clip(gray.astype(np.int16) + 3, 0, 255).astype(np.uint8)]
        )  # BGR, faint tint
        _write_image(root / "COVID" / f"{p.pid}.png", color)
        rows.append(
            [
                p.pid,
                "PNG",
                f"{image_size}*{image_size}",
                f"https://www.sirm.org/synthetic/{p.pid.split()[-1]}",
            ]
        )
    # A SIRM row whose URL is a cohen URL: COVID-Net drops it as a duplicate.
    _write_image(root / "COVID" / "COVID 999.png", render_cxr("COVID-19", _rng(seed, 42, 0), image_size))
    rows.append(["COVID 999", "PNG", f"{image_size}*{image_size}", cohen_urls[-3]])
    write_xlsx(root / "COVID.metadata.xlsx", ["FILE NAME", "FORMAT", "SIZE", "URL"], rows)


def _fake_uuid(rng: np.random.Generator) -> str:
    h = "".join(f"{int(x):02x}" for x in rng.integers(0, 256, 16))
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:32]}"


def _rsna(root: Path, plan: SyntheticPlan, seed: int, image_size: int) -> None:
    rng = _rng(seed, 5)
    shipped = shipped_test_patients()
    info_rows: list[list[str]] = []
    label_rows: list[list[str]] = []
    patients: list[tuple[str, str]] = []
    for label, n in (("normal", plan.rsna_normal), ("pneumonia", plan.rsna_pneumonia)):
        n_test = min(len(shipped[label]), max(1, round(TEST_FRACTION * n)))
        ids = list(shipped[label][:n_test]) + [_fake_uuid(rng) for _ in range(n - n_test)]
        order = rng.permutation(len(ids))
        patients.extend((ids[i], label) for i in order)
    n_other = max(2, round(0.05 * len(patients)))
    patients.extend((_fake_uuid(rng), "other") for _ in range(n_other))
    patients = [patients[i] for i in rng.permutation(len(patients))]
    for i, (pid, label) in enumerate(patients):
        if label == "pneumonia":
            for _ in range(1 + int(rng.integers(0, 3))):
                box = [str(int(v)) for v in rng.integers(100, 600, 4)]
                info_rows.append([pid, "Lung Opacity"])
                label_rows.append([pid, *box, "1"])
        else:
            info_rows.append([pid, "Normal" if label == "normal" else "No Lung Opacity / Not Normal"])
            label_rows.append([pid, "", "", "", "", "0"])
        if label != "other":
            image = render_cxr(label, _rng(seed, 51, i), image_size)
            write_rsna_dicom(
                root / "stage_2_train_images" / f"{pid}.dcm",
                image,
                patient_id=pid,
                seed=seed,
                view="PA" if i % 2 else "AP",
            )
    _write_csv(root / "stage_2_detailed_class_info.csv", ["patientId", "class"], info_rows)
    _write_csv(
        root / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], label_rows
    )


def _ricord(root: Path, plan: SyntheticPlan, seed: int, image_size: int) -> None:
    rng = _rng(seed, 6)
    n_single = max(2, round(TEST_FRACTION * plan.ricord) - 2)
    patients = [Patient(f"419639-{100 + i:06d}", "COVID-19", 1, True) for i in range(n_single)]
    patients.append(Patient("419639-000025", "COVID-19", 2, True))  # COVID-Net's extra RICORD test patient
    left = plan.ricord - n_single - 2
    i = 0
    while left > 0:
        k = min(left, 2 + int(rng.integers(0, 3)))
        if k == 1:  # a single image would make a test patient; add it to the previous patient instead
            last = patients[-1]
            patients[-1] = dataclasses.replace(last, images=last.images + 1)
            break
        patients.append(Patient(f"419639-{500 + i:06d}", "COVID-19", k, False))
        left -= k
        i += 1
    syntaxes = ("j2k", "rle", "native")
    n = 0
    for p_index, p in enumerate(patients):
        study_uid = _uid(seed, "ricord", p.pid, "study")
        study = (
            root
            / f"MIDRC-RICORD-1C-{p.pid}"
            / f"01-{1 + p_index % 28:02d}-2020-NA-XR CHEST AP PORTABLE-{study_uid[-5:]}"
        )
        views = ["AP" if k % 2 == 0 else "PA" for k in range(p.images)]
        if not p.test and p_index % 4 == 1:
            views.append("LL")  # a lateral image: counted by COVID-Net's index, not kept
        for k, view in enumerate(views):
            series = study / f"{1000 + k}.000000-NA-{12345 + k}"
            bits = (12, 14, 15, 16)[n % 4]
            write_ricord_dicom(
                series / "1-1.dcm",
                render_cxr(p.label, _rng(seed, 61, n), image_size),
                patient_id=f"MIDRC-RICORD-1C-{p.pid}",
                study_uid=study_uid,
                series_uid=_uid(seed, "ricord", p.pid, k, "series"),
                instance_uid=_uid(seed, "ricord", p.pid, k),
                view=view,
                bits_stored=bits,
                monochrome1=n % 5 != 4,
                windowed=n % 3 == 0,
                syntax=syntaxes[n % 3],
            )
            n += 1


# Folder of the 2021+ release -> label rendered (None: Lung_Opacity, a class the ResNet-18 study did not
# have).
RADIOGRAPHY_CLASSES = {
    "COVID": "COVID-19",
    "Normal": "normal",
    "Viral Pneumonia": "pneumonia",
    "Lung_Opacity": None,
}


def make_synthetic_radiography_db(
    out_dir: str | os.PathLike[str], *, size: int = 300, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0
) -> Path:
    """A synthetic COVID-19 Radiography Database in its 2021+ layout, for ``--radiography-db``.

    ``<Class>/images/<Class>-<n>.png`` (3-channel, as the release stores them)
    and ``<Class>/masks/`` for COVID, Normal and Viral Pneumonia in about the
    real proportions (about a quarter COVID-19), ``<Class>.metadata.xlsx``
    files, and a few ``Lung_Opacity`` images that the ResNet-18 study's three
    classes do not include (they must be skipped). ``size`` counts the images
    of the three classes.
    """
    if size < 30:
        raise ValueError(f"the synthetic radiography database needs at least 30 images, received {size}")
    root = Path(out_dir)
    counts = {"COVID": size // 4, "Normal": (size - size // 4) // 2, "Lung_Opacity": 4}
    counts["Viral Pneumonia"] = size - counts["COVID"] - counts["Normal"]
    for k, (folder, label) in enumerate(RADIOGRAPHY_CLASSES.items()):
        rows = []
        for i in range(1, counts[folder] + 1):
            name = f"{folder}-{i}"
            # Lung opacity is drawn as pneumonia-like: a reader that kept it would mislabel it.
            gray = render_cxr(label or "pneumonia", _rng(seed, 70 + k, i), image_size)
            _write_image(root / folder / "images" / f"{name}.png", cv2.merge([gray, gray, gray]))
            if i <= 2:  # the real release ships a lung mask per image; they are not images to classify
                _write_image(root / folder / "masks" / f"{name}.png", (gray > 128).astype(np.uint8) * 255)
            rows.append([name, "PNG", f"{image_size}*{image_size}", f"https://example.org/synthetic/{name}"])
        write_xlsx(root / f"{folder}.metadata.xlsx", ["FILE NAME", "FORMAT", "SIZE", "URL"], rows)
    atomic_write_text(
        root / "README.md.txt",
        "Synthetic COVID-19 Radiography Database (2021+ layout) written by "
        f"create_covidx.py --synthetic (size {size}, seed {seed}). Not medical data.\n",
    )
    return root


def make_synthetic_sources(
    out_dir: str | os.PathLike[str],
    *,
    size: int = DEFAULT_SIZE,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
) -> dict[str, Path]:
    """Write the six synthetic sources under ``out_dir``; return option name -> folder.

    ``size`` is the number of images the COVID-Net split rule lists (about a
    third per class); a few extra rows exercise the skip rules. ``image_size``
    is the side of the square images in pixels.
    """
    if image_size < 16:
        raise ValueError(f"--synthetic-image-size must be at least 16, received {image_size}")
    plan = plan_sizes(size)
    root = Path(out_dir)
    dirs = {option: root / name for option, name in SOURCE_DIRS.items()}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    log.info("writing synthetic sources (%d images of %d px, seed %d) into %s", size, image_size, seed, root)
    cohen_urls = _cohen(dirs["cohen"], plan, seed, image_size)
    _figure1(dirs["figure1"], plan, seed, image_size)
    _actualmed(dirs["actualmed"], plan, seed, image_size)
    _sirm(dirs["sirm"], plan, seed, image_size, cohen_urls)
    _rsna(dirs["rsna"], plan, seed, image_size)
    _ricord(dirs["ricord"], plan, seed, image_size)
    atomic_write_text(
        root / "README.txt",
        "Synthetic COVIDx sources written by create_covidx.py --synthetic "
        f"(size {size}, image size {image_size}, seed {seed}). Not medical data.\n",
    )
    return dirs
