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
adding a module with a ``SPEC`` (:class:`~data.sources.base.SourceSpec`) and
listing it here; the command line and the builder pick it up from this tuple.
"""
from __future__ import annotations

from collections.abc import Mapping

from data.sources import actualmed, cohen, figure1, radiography, ricord, rsna, sirm
from data.sources.base import Record, ScanContext, ScanResult, Skip, SourceSpec

SOURCES: tuple[SourceSpec, ...] = (
    cohen.SPEC, figure1.SPEC, actualmed.SPEC, sirm.SPEC, ricord.SPEC, rsna.SPEC, radiography.SPEC,
)
BY_OPTION: Mapping[str, SourceSpec] = {s.option: s for s in SOURCES}
BY_NAME: Mapping[str, SourceSpec] = {s.name: s for s in SOURCES}

__all__ = ["SOURCES", "BY_OPTION", "BY_NAME", "Record", "ScanContext", "ScanResult", "Skip", "SourceSpec"]
