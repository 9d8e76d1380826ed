"""The public datasets COVIDx is built from, one reader module per source.

============== ============ =====================================================
option         list name    dataset
============== ============ =====================================================
cohen          cohen        ieee8023/covid-chestxray-dataset
figure1        fig1         agchung/Figure1-COVID-chestxray-dataset
actualmed      actmed       agchung/Actualmed-COVID-chestxray-dataset
sirm           sirm         COVID-19 Radiography Database (COVID-19 images)
ricord         ricord       MIDRC-RICORD-1c (TCIA)
rsna           rsna         RSNA Pneumonia Detection Challenge
radiography_db radiography  COVID-19 Radiography Database, all classes: not part
                            of COVIDx but the ResNet-18 study's dataset, with
                            its own seeded train/val/test split
============== ============ =====================================================

:data:`SOURCES` is in COVID-Net's processing order. Adding a source means
adding a module with a ``scan`` function and a ``SPEC``
(:class:`~data.sources.base.SourceSpec`) and its name to :data:`MODULES`; the
command line (flags and their help), the builder and the report pick it up
from there.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping

from data.records import Record, Skip
from data.sources.base import ScanContext, ScanResult, SourceSpec
from data.splits import DEFAULT_RULES

# The reader modules, in COVID-Net's processing order.
MODULES = ("cohen", "figure1", "actualmed", "sirm", "ricord", "rsna", "radiography")

SOURCES: tuple[SourceSpec, ...] = tuple(importlib.import_module(f"{__name__}.{m}").SPEC for m in MODULES)
BY_OPTION: Mapping[str, SourceSpec] = {s.option: s for s in SOURCES}
BY_NAME: Mapping[str, SourceSpec] = {s.name: s for s in SOURCES}


def implied_split_rule(options: Iterable[str]) -> str:
    """The split rule for these source options when ``--split`` is not given.

    A source that calls for its own rule (``SourceSpec.split_rule``: the
    Radiography Database's seeded split) decides; otherwise the default.
    """
    return next((BY_OPTION[o].split_rule for o in options if BY_OPTION[o].split_rule), DEFAULT_RULES)


__all__ = [
    "BY_NAME", "BY_OPTION", "MODULES", "SOURCES", "Record", "ScanContext", "ScanResult", "Skip", "SourceSpec",
    "implied_split_rule",
]
