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


@pytest.mark.parametrize("sizes", ["[0]", "[]", "[512]", "[256, 256]", "[256, -1]"])
def test_thumbnail_sizes_that_would_dead_letter_every_file_are_refused(monkeypatch, sizes: str) -> None:
    # taken before, and then every file of an import was dead-lettered (a size of 0), or tier 3 found no 256-px
    # thumbnail to score
    monkeypatch.setenv("DAMFLOW_THUMBNAIL_SIZES", sizes)
    with pytest.raises(ValidationError, match="thumbnail_sizes"):
        Settings()


def test_thumbnail_sizes_may_add_previews_after_the_256_px_one(monkeypatch) -> None:
    monkeypatch.setenv("DAMFLOW_THUMBNAIL_SIZES", "[256, 800, 2048]")
    assert Settings().thumbnail_sizes == (256, 800, 2048)


def test_tier_two_batch_files_in_flight_fill_the_batch_pools_chunks_and_its_interactive_lane_stays_small() -> None:
    # enough tier-2 batch files in flight for a full chunk per pool process and one waiting, as tier 1's: with
    # 4, chunks of one or two formed and nearly every result was a record batch of its own on the broker
    settings = Settings(pool_size=2, batch_chunk=8)
    assert settings.tier2_batch_concurrency == settings.batch_concurrency == 24
    assert Settings(pool_size=2).batch_concurrency == 48  # chunks of 16 by default
    assert settings.tier2_interactive_concurrency == 4  # shares the interactive pool with urgent files' tier 1
    assert Settings(tier2_concurrency=6).tier2_batch_concurrency == 6


@pytest.mark.parametrize("pair", [dict(scan_high_water=100), dict(scan_high_water=5, scan_low_water=5),
                                  dict(heartbeat_interval_s=4.0), dict(session_timeout_s=1.0)])
def test_settings_that_undo_each_other_are_refused(pair: dict) -> None:
    # accepted before: a low-water mark of 500 under a high one of 100 never held the scan back (every check sent
    # a paused and a resumed event), a heartbeat as long as the session had workers counted as gone
    with pytest.raises(ValidationError, match="must be below"):
        Settings(**pair)
    Settings(scan_high_water=100, scan_low_water=50, heartbeat_interval_s=0.5, session_timeout_s=1.0)
