"""Shared fixtures: the reference data directory and small models made on the spot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("WORKBENCH_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only reference data sets (BLiMP, ARC-Easy, WikiText-2, corpus)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_family(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """A checkpoint family trained once per session with the ``tiny`` preset (a few seconds to a minute).

    Set ``WORKBENCH_TEST_CACHE`` to a directory to keep the family between sessions: it is stored
    there under a name keyed by the family's identity (recipe, corpus contents, trainer version).
    Returns a :class:`workbench.factory.Family`.
    """
    from workbench.factory import family_id, train_family

    cache = os.environ.get("WORKBENCH_TEST_CACHE")
    if cache:
        out = Path(cache) / f"tiny-family-{family_id('tiny', data_dir=shared_data)[:16]}"
    else:
        out = tmp_path_factory.mktemp("tiny_family") / "family"
    return train_family("tiny", out, data_dir=shared_data, progress=False)
