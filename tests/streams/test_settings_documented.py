"""Every setting is documented in the README's settings table, by its full environment variable name."""

from __future__ import annotations

from pathlib import Path

from streams.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_readme() -> None:
    table = README.read_text().split("## Settings", 1)[1].split("\n## ", 1)[0]
    missing = [f"DAMFLOW_{name.upper()}" for name in Settings.model_fields
               if f"`DAMFLOW_{name.upper()}`" not in table]
    assert not missing, f"settings not in the README's settings table: {missing}"
