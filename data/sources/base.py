"""What every COVIDx source reader returns, and the helpers they share.

A source reader (one module per public dataset) only *reads*: it parses the
dataset's metadata, applies the row-level rules (view, finding mapping, URL
filters) and checks that each image file exists. It returns a
:class:`ScanResult`: the usable rows as :class:`Record` objects, in the order
the reference notebooks visited them, and every other row as a :class:`Skip`
with its reason. Deciding train/test, de-duplicating across sources and writing
images is the job of :mod:`data.splits` and :mod:`data.build`.

Every row a reader examines ends up either as a record or as a skip, so
``rows_read == len(records) + len(skipped)`` for each source.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data.lists import check_relative_filename
from data.records import Record, Skip
from data.splits import CohenRules, SplitRules, first_comma

if TYPE_CHECKING:
    import pandas as pd

@dataclasses.dataclass
class ScanResult:
    """What a source reader found."""

    source: str
    root: Path
    rows_read: int = 0
    records: list[Record] = dataclasses.field(default_factory=list)
    skipped: list[Skip] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    # URLs of the rows this source offers (cohen: every row that passed the view filter), so that a
    # source read later can drop its images that duplicate them (SIRM).
    urls: frozenset[str] = frozenset()
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def skip(self, row: int | str, id_: str, reason: str, detail: str = "") -> None:
        """Record one skipped row."""
        self.skipped.append(Skip(row, id_, reason, detail))

    def find_image(
        self,
        row: int | str,
        patient_id: str,
        folders: Path | Sequence[Path],
        names: Sequence[str],
        *,
        problem: str | None = None,
    ) -> Path | None:
        """The first of ``folders`` x ``names`` that is a file, or None with the row skipped.

        The row is skipped as "bad file name" when ``problem`` says why its
        file name cannot be used or when a name is not a plain file name (see
        :func:`out_name_problem`), and as "missing image" when no candidate
        exists.
        """
        folders = [folders] if isinstance(folders, Path) else list(folders)
        problem = problem or next(filter(None, map(out_name_problem, names)), None)
        if problem:
            self.skip(row, patient_id, "bad file name", problem)
            return None
        src = next((folder / n for folder in folders for n in names if (folder / n).is_file()), None)
        if src is None:
            where = [_relative(folders[0] / n, self.root) for n in names]
            detail = f"{where[0]} not found" if len(where) == 1 else f"none of {', '.join(where)} exists"
            self.skip(row, patient_id, "missing image", detail)
        return src

    def add(self, row: int | str, patient_id: str, label: str, src: Path, **fields: Any) -> Record:
        """Keep one usable row as a :class:`Record` of this source.

        ``fields`` are the other :class:`Record` fields; ``image`` defaults to
        the file's name and ``out_name`` to that name without whitespace
        (:func:`strip_whitespace`).
        """
        fields.setdefault("image", src.name)
        fields.setdefault("out_name", strip_whitespace(src.name))
        record = Record(source=self.source, row=row, patient_id=patient_id, label=label, src=src, **fields)
        self.records.append(record)
        return record


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


@dataclasses.dataclass(frozen=True)
class ScanContext:
    """Everything a reader may need beyond its own folder.

    New options (say the seed of a source that draws its own split) are added
    here as fields with defaults, so no reader signature changes.
    """

    rules: SplitRules
    # What the sources read before this one found, by source name (data.sources.SOURCES order):
    # SIRM drops the images whose URL cohen has.
    earlier: Mapping[str, ScanResult] = dataclasses.field(default_factory=dict)
    # COVID-Net's ricord_data_set.txt when given explicitly (else DIR/ricord_data_set.txt if present).
    ricord_list: Path | None = None
    # Sources that draw their own split (the COVID-19 Radiography Database): seed and train/val/test
    # fractions.
    split_seed: int = 0
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)

    def cohen_rules(self) -> CohenRules:
        """The split rule's cohen rules; ``ValueError`` when the rule does not read cohen."""
        if self.rules.cohen is None:
            raise ValueError(
                f"--cohen cannot be used with --split {self.rules.name}: {self.rules.why_sources}"
            )
        return self.rules.cohen


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """A public source: its names, where it comes from, what its folder holds, and its reader.

    ``option`` is the command-line flag without dashes and the key of
    :func:`data.build.build_covidx`'s ``sources``; ``name`` is what COVIDx
    lists write in their 4th column. Stage-0 sources are visited per class in
    :data:`data.sources.SOURCES` order, stage-1 sources (RSNA) afterwards, which
    is COVID-Net's order. ``required`` names the files (and, ending in ``/``,
    the folders) the source folder must hold; :meth:`check` tests them, then
    runs ``validate`` for anything else. ``split_rule`` is the split rule the
    source calls for when ``--split`` is not given (None: the default,
    :data:`data.splits.DEFAULT_RULES`).
    """

    name: str
    option: str
    title: str
    url: str
    layout: str
    help: str
    scan: Callable[[Path, ScanContext], ScanResult]
    required: tuple[str, ...] = ()
    validate: Callable[[Path], None] | None = None
    stage: int = 0
    split_rule: str | None = None

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. ``--cohen`` or ``--radiography-db`` (option ``radiography_db``)."""
        return f"--{self.option.replace('_', '-')}"

    def check(self, root: Path) -> None:
        """Fail early, naming the flag, when the folder or one of its required parts is missing."""
        require_dir(root, self.flag, self.layout)
        for part in self.required:
            if part.endswith("/"):
                require_dir(root / part.rstrip("/"), self.flag, f"part of {self.layout}")
            else:
                require_file(root / part, self.flag, f"part of {self.layout}")
        if self.validate is not None:
            self.validate(root)


# -- helpers shared by the readers -------------------------------------------------------------


def describe_os_error(exc: BaseException) -> str:
    """An ``OSError`` in words, with its errno name: ``No space left on device (ENOSPC)``."""
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{exc.strerror or os.strerror(exc.errno)} ({name})"
    return f"{type(exc).__name__}: {exc}"


def _link_problem(path: Path) -> str | None:
    """Why ``path`` cannot be reached through its symbolic links (a loop, a dangling link), or None."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        if os.path.islink(path):
            return f"a symbolic link to {os.readlink(path)!r}, which does not exist"
    return None


def resolve_path(path: Path, flag: str, what: str) -> Path:
    """``path`` made absolute, symbolic links resolved; ``ValueError`` naming ``flag`` for a link loop."""
    problem = _link_problem(path)
    if problem == "a symbolic link loop":
        raise ValueError(f"{flag}: expected {what}, received {path}, {problem}")
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # Python < 3.13 raises RuntimeError for a loop further up the path
        raise ValueError(
            f"{flag}: expected {what}, received {path}, which cannot be resolved ({describe_os_error(exc)})"
        ) from None


def require_dir(path: Path, flag: str, what: str) -> None:
    """``FileNotFoundError``/``NotADirectoryError`` naming the flag unless ``path`` is a folder."""
    if not path.exists():
        problem = _link_problem(path)
        if problem:
            raise FileNotFoundError(f"{flag}: {path} is {problem} (expected {what})")
        raise FileNotFoundError(f"{flag}: folder {path} does not exist (expected {what})")
    if not path.is_dir():
        raise NotADirectoryError(f"{flag}: {path} is not a folder (expected {what})")


def require_file(path: Path, flag: str, what: str) -> None:
    """``FileNotFoundError`` naming the flag unless ``path`` is a file."""
    if not path.is_file():
        raise FileNotFoundError(f"{flag}: {path} not found ({what})")


def normalize_column(name: object) -> str:
    """Column key used by the readers: stripped, lower case, inner spaces kept.

    The cohen metadata had headers such as ``Patientid`` and `` url`` in some
    snapshots.
    """
    return re.sub(r"\s+", " ", str(name)).strip().lower()


def read_table(
    path: Path,
    *,
    flag: str,
    required: Sequence[str],
    encodings: Sequence[str] = ("utf-8", "ISO-8859-1"),
    excel: bool = False,
) -> pd.DataFrame:
    """Read a metadata table as strings with normalized column names.

    Every cell is a string (``""`` when empty), so patient ids like ``19`` stay
    ``"19"`` and never become ``19.0``. CSV files are tried in ``encodings``
    order. Raises ``ValueError`` naming the flag and file when a required
    column is missing or the file cannot be parsed.
    """
    import pandas as pd

    try:
        if excel:
            frame = pd.read_excel(path, dtype=str, keep_default_na=False)
        else:
            frame = None
            for i, encoding in enumerate(encodings):
                try:
                    frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding=encoding)
                    break
                except UnicodeDecodeError:
                    if i == len(encodings) - 1:
                        raise
            assert frame is not None
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{flag}: cannot read {path}: {type(exc).__name__}: {exc}") from None
    frame = frame.rename(columns=normalize_column)
    frame = frame.loc[:, ~frame.columns.duplicated()]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{flag}: {path} has no column {', '.join(repr(c) for c in missing)} "
            f"(found: {', '.join(map(repr, frame.columns))})"
        )
    return frame.fillna("")


def agchung_label(
    result: ScanResult, row_no: int, pid: str, finding: object, rules: SplitRules
) -> str | None:
    """The class of a Figure1/Actualmed row (COVID-Net: first comma element of ``finding``), or None.

    Records the skip (empty finding, unmapped finding, empty patient id) in
    ``result`` when the row cannot be used.
    """
    raw = str(finding).strip()
    if not raw:
        result.skip(row_no, pid, "empty finding")
        return None
    label = rules.label(first_comma(raw))
    if label is None:
        result.skip(row_no, pid, "finding not mapped", f"finding {raw!r} not mapped")
        return None
    if not pid:
        result.skip(row_no, pid, "empty patient id")
        return None
    return label


def clean_id(value: object) -> str:
    """A patient id as COVIDx lists write it: whitespace runs become one space, ends stripped."""
    return re.sub(r"\s+", " ", str(value)).strip()


def out_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an output file name directly under ``OUT/<split>/``, or None."""
    problem = check_relative_filename(name)
    if problem:
        return problem
    if "/" in name or "\\" in name:
        return f"file name {name!r} has a folder part"
    if name.startswith("."):
        return f"file name {name!r} is hidden (starts with '.')"
    return None


def strip_whitespace(name: str) -> str:
    """Output file names carry no whitespace: COVIDx lists are whitespace-separated.

    COVID-Net removed the spaces of the SIRM names (``COVID 119.png`` ->
    ``COVID119.png``); the same rule applies to every source.
    """
    return re.sub(r"\s+", "", name)
