"""Shared fixtures. The corpus lives beside the checkout in CI (``../shared/corpus``); tests that need it
skip with a clear reason on a bare clone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("DAMFLOW_CORPUS", REPO.parent / "shared" / "corpus"))


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The shared test corpus, or a skip when this checkout has none beside it."""
    if not (CORPUS / "manifest.json").is_file():
        pytest.skip(f"corpus not found at {CORPUS} (set DAMFLOW_CORPUS or place shared/corpus beside the repo)")
    return CORPUS
