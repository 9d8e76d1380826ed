"""Repository-root conftest: puts the project on sys.path and shares fixtures.

``realdata_dir`` points at the public samples in ``../shared/realdata`` (or
``$COVIDX_REALDATA``); tests that use it skip with a message when it is absent,
so the suite also passes on a fresh machine.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent


def _realdata_root() -> Path:
    override = os.environ.get("COVIDX_REALDATA")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata_dir() -> Path:
    """The real public samples folder; skips the test when it is not there."""
    root = _realdata_root()
    if not (root / "README.md").is_file():
        pytest.skip(f"real public samples not found at {root} (set COVIDX_REALDATA to use them)")
    return root
