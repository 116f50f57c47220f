"""Catalogs for the consumer tests: fresh ones under the test's tmp_path, closed afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from consumers.catalog import Catalog


@pytest.fixture
def make_catalog(tmp_path: Path) -> Iterator[Callable[..., Catalog]]:
    """Fresh catalogs under ``tmp_path``, closed after the test."""
    opened: list[Catalog] = []

    def make(name: str = "catalog.sqlite", **kw) -> Catalog:
        opened.append(Catalog(tmp_path / "data" / name, **kw))
        return opened[-1]

    yield make
    for cat in opened:
        cat.close()


@pytest.fixture
def catalog(make_catalog) -> Catalog:
    return make_catalog()
