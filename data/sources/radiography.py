"""COVID-19 Radiography Database, whole ("radiography"): the ResNet-18 study's dataset.

What: chest X-rays of COVID-19, normal and viral-pneumonia cases (and, from the
2021 releases on, "Lung Opacity": non-COVID lung infections) collected by
M.E.H. Chowdhury, T. Rahman et al. (Qatar University, University of Dhaka)
from SIRM, PadChest, RSNA, the Kaggle "Chest X-Ray Images (Pneumonia)"
dataset, publications and other public sources.
Size: first release 219 COVID-19, 1,341 normal, 1,345 viral pneumonia PNGs
(about 1.2 GB); 2021 releases 3,616 COVID-19, 10,192 normal, 6,012 lung
opacity, 1,345 viral pneumonia (299 x 299 PNG, with lung masks; about 800 MB).
Where: https://www.kaggle.com/tawsifurrahman/covid19-radiography-database
Terms: see the Kaggle page; cite Chowdhury et al., IEEE Access 8 (2020)
132665-132676, and Rahman et al., Comput. Biol. Med. 132 (2021) 104319.

Layouts read (one folder per class, found case-insensitively):

- first release: ``COVID-19/``, ``NORMAL/``, ``Viral Pneumonia/`` holding
  ``COVID-19 (1).png``... directly (plus ``<class>.metadata.xlsx`` files);
- 2021+: ``COVID/images/``, ``Normal/images/``, ``Viral Pneumonia/images/``,
  ``Lung_Opacity/images/`` (the ``masks/`` folders are not images to classify).

The ResNet-18 study (``torchvision.datasets.ImageFolder`` on the first
release) had three classes: COVID-19 -> ``COVID-19``, normal -> ``normal``,
viral pneumonia -> ``pneumonia``. Images of other class folders (``Lung_Opacity``)
are skipped and reported, not guessed into a class.

The database has no patient ids, so the study split by image, and so does
this reader: each image is its own "patient" (its output file name), and a
patient with several images may end up on both sides; that limitation is the
dataset's, and the report says so. The study drew a 70/10/20 train/validation/test
split at random over all images (``SubsetRandomSampler``); this reader draws it
per class (stratified), seeded, so the class proportions are the same in the
three lists and the split does not depend on file-system order. The
validation images are written to ``OUT/train/`` and listed in
``val_COVIDx.txt`` (``train_keras.py --valfile``).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from data.labels import CLASSES
from data.sources.base import ScanContext, ScanResult, SourceSpec, out_name_problem, strip_whitespace

LAYOUT = (
    "the COVID-19 Radiography Database folder with one folder per class "
    "(COVID-19/ or COVID/, NORMAL/ or Normal/, Viral Pneumonia/, optionally with images/ inside)"
)
# Lower-cased class folder name -> COVIDx label (None: a class the study did not have).
CLASS_FOLDERS: dict[str, str | None] = {
    "covid-19": "COVID-19",
    "covid": "COVID-19",
    "normal": "normal",
    "viral pneumonia": "pneumonia",
    "lung_opacity": None,
    "lung opacity": None,
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# The ResNet-18 study: 20 % test, 10 % validation, the rest train.
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
SPLIT_NAMES = ("train", "val", "test")


def _natural_key(path: Path) -> list:
    # "COVID (2).png" before "COVID (10).png", as a person numbering them would expect.
    return [int(part) if part.isdigit() else part.casefold() for part in re.split(r"(\d+)", path.name)]


def class_folders(root: Path) -> dict[str, Path]:
    """The class folders under ``root``, keyed by their lower-cased name."""
    return {
        p.name.casefold(): p
        for p in sorted(root.iterdir())
        if p.is_dir() and p.name.casefold() in CLASS_FOLDERS
    }


def _check_class_folders(root: Path) -> None:
    """``FileNotFoundError`` naming ``--radiography-db`` when the folder has no class folder of the study."""
    if not any(CLASS_FOLDERS[name] for name in class_folders(root)):
        present = ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir())) or "no folders"
        raise FileNotFoundError(
            f"{SPEC.flag}: {root} has none of the class folders COVID-19/COVID, NORMAL/Normal, "
            f"Viral Pneumonia (found: {present}); expected {LAYOUT}"
        )


def _images(folder: Path) -> list[Path]:
    inner = folder / "images"
    where = inner if inner.is_dir() else folder
    return sorted(
        (p for p in where.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key
    )


def split_counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Images of a class of ``n`` going to train, validation and test (test and validation rounded half up).
    """
    n_test = math.floor(n * fractions[2] + 0.5)
    n_val = min(n - n_test, math.floor(n * fractions[1] + 0.5))
    return n - n_test - n_val, n_val, n_test


def check_fractions(fractions: tuple[float, ...]) -> tuple[float, float, float]:
    """``ValueError`` naming ``--radiography-split`` unless three fractions >= 0 sum to 1, train's > 0."""
    if (
        len(fractions) != 3
        or any(f < 0 for f in fractions)
        or abs(sum(fractions) - 1) > 1e-6
        or fractions[0] <= 0
    ):
        raise ValueError(
            f"--radiography-split must be three fractions train,val,test >= 0 that sum to 1 with "
            f"train > 0 (e.g. 0.7,0.1,0.2), received {','.join(f'{f:g}' for f in fractions)}"
        )
    return fractions  # type: ignore[return-value]


def scan(root: Path, context: ScanContext) -> ScanResult:
    """List every image of the class folders with its class and its seeded split."""
    SPEC.check(root)
    fractions = check_fractions(context.split_fractions)
    result = ScanResult(source=SPEC.name, root=root)
    result.warnings.append("no patient ids in this database: split by image, as the ResNet-18 study did")
    counts: dict[str, dict[str, int]] = {}
    for name, folder in class_folders(root).items():
        label = CLASS_FOLDERS[name]
        images = _images(folder)
        result.rows_read += len(images)
        if label is None:
            for path in images:
                result.skip(
                    str(path.relative_to(root)),
                    path.stem,
                    "class not used",
                    f"{folder.name} is not one of the study's three classes",
                )
            continue
        # The class index in the seed keeps each class's draw independent of which other folders exist.
        rng = np.random.default_rng([context.split_seed, CLASSES.index(label)])
        splits = _draw_splits(len(images), fractions, rng)
        for path, split in zip(images, splits):
            relative = str(path.relative_to(root))
            out_name = strip_whitespace(path.name)
            problem = out_name_problem(out_name)
            if problem:
                result.skip(relative, path.stem, "bad file name", problem)
                continue
            patient = Path(out_name).stem  # no patient ids: each image is its own patient
            result.add(relative, patient, label, path, image=relative, out_name=out_name, split=split)
        counts[folder.name] = {s: splits.count(s) for s in SPLIT_NAMES}
    result.info = {"split_seed": context.split_seed, "split_fractions": list(fractions), "per_folder": counts}
    return result


def _draw_splits(n: int, fractions: tuple[float, float, float], rng: np.random.Generator) -> list[str]:
    """The split of each of ``n`` images: a random permutation, cut at the :func:`split_counts`."""
    order = rng.permutation(n)
    n_train, n_val, _ = split_counts(n, fractions)
    by_rank = [SPLIT_NAMES[0]] * n_train + [SPLIT_NAMES[1]] * n_val + [SPLIT_NAMES[2]] * (n - n_train - n_val)
    splits = [""] * n
    for rank, i in enumerate(order):
        splits[int(i)] = by_rank[rank]
    return splits


SPEC = SourceSpec(
    name="radiography",
    option="radiography_db",
    title="COVID-19 Radiography Database, all classes (the ResNet-18 study's dataset)",
    url="https://www.kaggle.com/tawsifurrahman/covid19-radiography-database",
    layout=LAYOUT,
    help="the whole COVID-19 Radiography Database (class folders COVID-19/COVID, NORMAL/Normal, "
    "Viral Pneumonia): the ResNet-18 study's dataset, not COVIDx; implies --split radiography and writes "
    "train/val/test lists",
    scan=scan,
    validate=_check_class_folders,
    split_rule="radiography",
)
