"""The split rules: label mapping, view filter and fixed test patients.

``covidnet`` reproduces lindawangg/COVID-Net's ``create_COVIDx.ipynb`` (with
RICORD, ``create_ricord_dataset.ipynb``); ``surfsara`` reproduces
sara-nl/Covid19-HPML's ``create_COVIDx_v2.ipynb``. Both split by patient with
fixed lists of test patients, never at random. ``radiography`` is not COVIDx:
it is the ResNet-18 study's COVID-19 Radiography Database, whose reader draws
a seeded train/val/test split itself (``Record.split``), written as three lists.

COVID-Net's COVID-19 test list has a missing comma::

    ..., '190', '191'
    'COVID-00024', ...

Python joins the two adjacent literals into ``'191COVID-00024'``, so neither
cohen patient ``191`` nor Figure1 patient ``COVID-00024`` is a test patient in
COVID-Net's COVIDx (the published COVIDx9A lists have both in train). The list
below keeps the joined string on purpose, so the split stays COVID-Net's.

:func:`assign_splits` visits the records in COVID-Net's order and

- drops a (patient, image) pair already taken, and for RSNA a patient already
  present (COVID-Net's ``patient_imgpath`` dictionary);
- puts a record in test when its patient is in the test list of its class
  (RSNA records come with their split already fixed by the shipped lists);
- then moves to test any image of a patient that has images in test, so no
  patient is ever on both sides (COVID-Net's lists are per class, so a test
  patient's image of another class would have gone to train). Each move is
  reported.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

from data.labels import CLASSES
from data.records import Record

TRAIN = "train"
TEST = "test"
SPLITS = (TRAIN, TEST)
# A validation list, for sources that draw their own train/val/test split; its images live in train/.
VAL = "val"
LISTS = (TRAIN, VAL, TEST)

# The sources COVIDx is made of (the option names of data.sources).
COVIDX_SOURCES = frozenset({"cohen", "figure1", "actualmed", "sirm", "ricord", "rsna"})


def image_folder(list_name: str) -> str:
    """The folder under OUT/ holding a list's images: validation images are training data, in train/."""
    return TRAIN if list_name == VAL else list_name


COVIDNET_MAPPING: Mapping[str, str] = {
    "COVID-19": "COVID-19",
    "SARS": "pneumonia",
    "MERS": "pneumonia",
    "Streptococcus": "pneumonia",
    "Klebsiella": "pneumonia",
    "Chlamydophila": "pneumonia",
    "Legionella": "pneumonia",
    "E.Coli": "pneumonia",
    "Normal": "normal",
    "Lung Opacity": "pneumonia",
    "1": "pneumonia",
}
SURFSARA_MAPPING: Mapping[str, str] = {
    "COVID-19": "COVID-19",
    "SARS": "pneumonia",
    "MERS": "pneumonia",
    "Streptococcus": "pneumonia",
    "Normal": "normal",
    "Lung Opacity": "pneumonia",
    "1": "pneumonia",
}

COVIDNET_VIEWS = frozenset({"PA", "AP", "AP Supine", "AP semi erect", "AP erect"})
SURFSARA_VIEWS = frozenset({"PA"})

# COVID-Net drops cohen's COVID-19 images from these sites: they duplicate SIRM's.
COVIDNET_COHEN_URL_SKIP = ("eurorad.org", "ml-workgroup", "sirm.org")

COVIDNET_TEST_PATIENTS: Mapping[str, tuple[str, ...]] = {
    "normal": (),
    "pneumonia": ("8", "31"),
    "COVID-19": (
        "19", "20", "36", "42", "86", "94", "97", "117", "132", "138", "144", "150", "163", "169",
        "174", "175", "179", "190",
        # COVID-Net's missing comma: '191' 'COVID-00024' -> one string (see the module docstring).
        "191COVID-00024",
        "COVID-00025", "COVID-00026", "COVID-00027", "COVID-00029", "COVID-00030", "COVID-00032",
        "COVID-00033", "COVID-00035", "COVID-00036", "COVID-00037", "COVID-00038",
        "ANON24", "ANON45", "ANON126", "ANON106", "ANON67", "ANON153", "ANON135", "ANON44", "ANON29",
        "ANON201", "ANON191", "ANON234", "ANON110", "ANON112", "ANON73", "ANON220", "ANON189",
        "ANON30", "ANON53", "ANON46", "ANON218", "ANON240", "ANON100", "ANON237", "ANON158",
        "ANON174", "ANON19", "ANON195",
        "COVID 119", "COVID 87", "COVID 70", "COVID 94", "COVID 215", "COVID 77", "COVID 213",
        "COVID 81", "COVID 216", "COVID 72", "COVID 106", "COVID 131", "COVID 107", "COVID 116",
        "COVID 95", "COVID 214", "COVID 129",
    ),
}
# Added to COVID-Net's COVID-19 test patients with every RICORD patient that has exactly one image.
RICORD_EXTRA_TEST_PATIENTS = ("419639-000025", "419639-001464")

SURFSARA_TEST_PATIENTS: Mapping[str, tuple[str, ...]] = {
    "normal": (),
    "pneumonia": ("8", "31"),
    "COVID-19": ("19", "20", "36", "42", "86"),
}


def hierarchical_or_first(finding: str) -> str:
    """COVID-Net's cohen finding: last element of a ``/`` hierarchy, else the first comma element.

    ``Pneumonia/Viral/COVID-19`` (2021+ metadata) -> ``COVID-19``;
    ``COVID-19, ARDS`` (2020 metadata) -> ``COVID-19``.
    """
    finding = finding.strip()
    if "/" in finding:
        return finding.split("/")[-1].strip()
    return finding.split(",")[0].strip()


def hierarchical_or_exact(finding: str) -> str:
    """SURFsara's cohen finding: the exact value (``COVID-19, ARDS`` stays unmapped).

    SURFsara's notebook predates the ``/`` hierarchy; its last element is used
    here so that 2021+ metadata still work (an extension).
    """
    finding = finding.strip()
    if "/" in finding:
        return finding.split("/")[-1].strip()
    return finding


def first_comma(finding: str) -> str:
    """COVID-Net's Figure1/Actualmed finding: the first comma-separated element."""
    return finding.split(",")[0].strip()


@dataclasses.dataclass(frozen=True)
class CohenRules:
    """Which rows of the cohen metadata a split rule keeps, and how it reads their finding."""

    views: frozenset[str]
    finding: Callable[[str], str]
    # COVID-19 rows whose URL contains one of these are skipped (their images are SIRM's).
    url_skip: tuple[str, ...] = ()


def covidnet_ricord_test_patients(records: Sequence[Record]) -> dict[str, set[str]]:
    """COVID-Net's RICORD rule: every RICORD patient with exactly one image is a COVID-19 test patient,
    and so are :data:`RICORD_EXTRA_TEST_PATIENTS`."""
    per_patient = Counter(r.patient_id for r in records if r.source == "ricord")
    single = {p for p, n in per_patient.items() if n == 1}
    return {"COVID-19": single | set(RICORD_EXTRA_TEST_PATIENTS)}


@dataclasses.dataclass(frozen=True)
class SplitRules:
    """One split rule: which sources it takes, how findings map, who is a test patient.

    A field that concerns a single source is set only by the rules that use it
    (``cohen`` is None for a rule that does not read cohen).
    """

    name: str
    # What it reproduces, for --help.
    description: str
    # Source options this rule takes (None: all), and why, for the error that refuses another one.
    allowed_sources: frozenset[str] | None
    why_sources: str = ""
    mapping: Mapping[str, str] = dataclasses.field(default_factory=dict)
    test_patients: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    # Test patients that depend on the records read (per class); None: only the fixed ones.
    more_test_patients: Callable[[Sequence[Record]], Mapping[str, Iterable[str]]] | None = None
    cohen: CohenRules | None = None
    # Whether the rule writes a validation list (val_COVIDx.txt) besides train and test.
    val_list: bool = False

    def label(self, finding: str) -> str | None:
        """The class of an already-parsed finding, or None when it is not mapped."""
        return self.mapping.get(finding)


COVIDNET = SplitRules(
    name="covidnet",
    description="COVID-Net's create_COVIDx",
    allowed_sources=COVIDX_SOURCES,
    why_sources="COVID-Net's create_COVIDx builds COVIDx from the cohen, Figure1, Actualmed, SIRM, "
    "RICORD and RSNA datasets",
    mapping=COVIDNET_MAPPING,
    test_patients=COVIDNET_TEST_PATIENTS,
    more_test_patients=covidnet_ricord_test_patients,
    cohen=CohenRules(views=COVIDNET_VIEWS, finding=hierarchical_or_first, url_skip=COVIDNET_COHEN_URL_SKIP),
)
SURFSARA = SplitRules(
    name="surfsara",
    description="SURFsara's create_COVIDx_v2 (cohen PA views and RSNA only)",
    allowed_sources=frozenset({"cohen", "rsna"}),
    why_sources="SURFsara's create_COVIDx_v2 only used the cohen and RSNA datasets",
    mapping=SURFSARA_MAPPING,
    test_patients=SURFSARA_TEST_PATIENTS,
    cohen=CohenRules(views=SURFSARA_VIEWS, finding=hierarchical_or_exact),
)
# The ResNet-18 study's dataset: the reader draws the split itself (data.sources.radiography).
RADIOGRAPHY = SplitRules(
    name="radiography",
    description="the ResNet-18 study's seeded split of the COVID-19 Radiography Database",
    allowed_sources=frozenset({"radiography_db"}),
    why_sources="the ResNet-18 study used the COVID-19 Radiography Database alone, with a seeded "
    "70/10/20 split",
    val_list=True,
)
RULES: Mapping[str, SplitRules] = {r.name: r for r in (COVIDNET, SURFSARA, RADIOGRAPHY)}
# The rule used when --split is not given and no source calls for another (SourceSpec.split_rule).
DEFAULT_RULES = COVIDNET.name


def get_rules(name: str) -> SplitRules:
    """The split rule called ``name``; ``ValueError`` naming ``--split`` otherwise."""
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(
            f"--split: unknown split rule; allowed: {', '.join(RULES)}; received {name!r}"
        ) from None


@dataclasses.dataclass(frozen=True)
class Adjustment:
    """A record moved from train to test so its patient is on one side only."""

    record: Record
    reason: str


@dataclasses.dataclass
class SplitAssignment:
    """Records with their split, in list order, plus the records dropped as duplicates."""

    assigned: list[tuple[Record, str]]
    duplicates: list[tuple[Record, str]]
    adjustments: list[Adjustment]
    test_patients: dict[str, frozenset[str]]


def fixed_test_patients(records: Sequence[Record], rules: SplitRules) -> dict[str, frozenset[str]]:
    """Per class, the patient ids the split rule puts in test (RSNA's are fixed by the RSNA reader)."""
    sets = {label: set(rules.test_patients.get(label, ())) for label in CLASSES}
    if rules.more_test_patients is not None:
        for label, ids in rules.more_test_patients(records).items():
            sets[label].update(ids)
    return {label: frozenset(ids) for label, ids in sets.items()}


def assign_splits(records: Sequence[Record], rules: SplitRules) -> SplitAssignment:
    """Give every record a split, in order (see the module docstring)."""
    test_ids = fixed_test_patients(records, rules)
    taken: dict[str, set[str]] = {}
    assigned: list[tuple[Record, str]] = []
    duplicates: list[tuple[Record, str]] = []
    for rec in records:
        images = taken.get(rec.patient_id)
        if rec.dedup_by_patient:
            if images is not None:
                duplicates.append((rec, f"patient {rec.patient_id} is already in the dataset"))
                continue
            taken[rec.patient_id] = {rec.image}
        else:
            if images is not None and rec.image in images:
                duplicates.append(
                    (rec, f"image {rec.image} of patient {rec.patient_id} is already in the dataset")
                )
                continue
            taken.setdefault(rec.patient_id, set()).add(rec.image)
        if rec.split is not None:
            split = rec.split
        else:
            split = TEST if rec.patient_id in test_ids.get(rec.label, frozenset()) else TRAIN
        assigned.append((rec, split))

    in_test = {rec.patient_id for rec, split in assigned if split == TEST}
    adjustments: list[Adjustment] = []
    for i, (rec, split) in enumerate(assigned):
        if split == TRAIN and rec.patient_id in in_test:
            assigned[i] = (rec, TEST)
            adjustments.append(
                Adjustment(
                    rec,
                    f"patient {rec.patient_id} has test images, so this {rec.label} image goes to test too",
                )
            )
    return SplitAssignment(
        assigned=assigned, duplicates=duplicates, adjustments=adjustments, test_patients=test_ids
    )
