"""Every setting is documented in the README's settings table, by its full environment variable name; and the
numbers they take are numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from streams.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_readme_and_nothing_else_is() -> None:
    table = README.read_text().split("## Settings", 1)[1].split("\n## ", 1)[0]
    fields = {f"DAMFLOW_{name.upper()}" for name in Settings.model_fields}
    missing = sorted(name for name in fields if f"`{name}`" not in table)
    assert not missing, f"settings not in the README's settings table: {missing}"
    stale = sorted(set(re.findall(r"`(DAMFLOW_[A-Z0-9_]+)`", table)) - fields)
    assert not stale, f"the README's settings table names settings that do not exist: {stale}"


def test_numbers_that_are_no_numbers_are_refused() -> None:
    for field, value in (("session_timeout_s", "inf"), ("retry_backoff_s", "1e400"), ("lane_idle_s", "nan"),
                         ("max_attempts", "1500")):
        with pytest.raises(ValidationError):
            Settings(**{field: value})  # inf passed gt=0: a session timeout of inf overflowed the Kafka client
