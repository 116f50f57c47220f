"""Text views of the catalog for ``damflow status`` and ``damflow show``.

Pure functions of the JSON-able dicts :meth:`Catalog.status` and :meth:`Catalog.asset` return, so ``--json``
and the text output always say the same thing, and the rendering is testable without a database.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

#: Order of asset states in the summary: the good news first, what needs a person last.
_STATE_ORDER = ("browsable", "indexed", "enriched", "retrying", "failed", "dead_lettered", "pending")


def render_status(status: dict[str, Any]) -> str:
    """A compact overview: asset counts per tier state, then one table row per batch and tier."""
    lines = [f"assets: {status['assets']:,} ({status['locations']:,} locations)"]
    for tier, states in status["asset_states"].items():
        shown = [(s, n) for s, n in sorted(states.items(), key=_state_key) if n and s != "pending"]
        if shown or tier == "tier1":
            parts = [f"{n:,} {_word(s)}" for s, n in shown] + [f"{states.get('pending', 0):,} pending"]
            lines.append(f"  tier {tier.removeprefix('tier')}: " + " · ".join(parts))
    batches = status["batches"]
    if not batches:
        lines.append("no batches yet")
        return "\n".join(lines)
    lines.append(f"batches ({len(batches)} of {status['batch_count']}, newest first):")
    header = ("BATCH", "LANE", "TIER", "DONE", "TOTAL", "FAILED", "DEAD", "RETRY", "IN FLIGHT", "RATE/s",
              "ETA", "SCAN", "STARTED")
    rows = []
    for batch in batches:
        for tier, t in batch["tiers"].items():
            total = f"{t['known_total']:,}" + ("" if t["total_final"] else "+")
            rows.append((
                batch["batch_id"][:8], batch["lane"], tier.removeprefix("tier"), f"{t['done']:,}", total,
                f"{t['failed']:,}", f"{t['dead_lettered']:,}", f"{t['retrying']:,}", f"{t['in_flight']:,}",
                f"{t['rate']:.1f}", _duration(t["eta_s"]), "complete" if batch["scan_complete"] else "scanning",
                _when(batch["started_at"]),
            ))
    lines.extend("  " + line for line in _table(header, rows))
    return "\n".join(lines)


def render_asset(asset: dict[str, Any]) -> str:
    """Everything the catalog knows about one asset, for a person."""
    lines = [f"asset       {asset['asset_id']}"]
    if asset["size"] is not None:
        lines.append(f"image       {asset['format']} {asset['width']}×{asset['height']}, {_bytes(asset['size'])}")
    tiers = sorted(k for k in asset if k.startswith("tier") and k.endswith("_state"))
    states = [f"{k.removeprefix('tier').removesuffix('_state')} {_word(asset[k] or 'pending')}" for k in tiers]
    lines.append("tiers       " + " · ".join(states))
    seen = f"first seen {_when(asset['first_seen_at'])}"
    if asset["browsable_at"] is not None:
        seen += f", browsable {_when(asset['browsable_at'])}"
    lines.append(f"seen        {seen}")
    if asset["thumbnails"]:
        lines.append("thumbnails")
        lines.extend(f"  {name:>5}  {rel}" for name, rel in sorted(asset["thumbnails"].items(), key=_size_key))
    lines.append(f"locations ({len(asset['locations'])})")
    for loc in asset["locations"]:
        name = f" as {loc['display_name']!r}" if loc["display_name"] else ""
        lines.append(f"  {loc['path']}{name}  ({loc['source']}, batch {loc['batch_id'][:8]}, "
                     f"seen {_when(loc['last_seen_at'])})")
    if asset["failures"]:
        lines.append(f"failures ({len(asset['failures'])})")
        for f in asset["failures"]:
            lines.append(f"  tier {f['tier']} {_word(f['outcome'])} after {f['attempts']} attempt(s) "
                         f"at {_when(f['failed_at'])}: {f['error_class']} [{f['error_code']}] {f['reason']}")
            lines.append(f"    {f['path']}")
    return "\n".join(lines)


def _word(state: str) -> str:
    """A stored state as prose: ``dead_lettered`` reads ``dead-lettered``."""
    return state.replace("_", "-")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in col) for col in zip(header, *rows)]
    return ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in (header, *rows)]


def _state_key(item: tuple[str, int]) -> int:
    return _STATE_ORDER.index(item[0]) if item[0] in _STATE_ORDER else len(_STATE_ORDER)


def _size_key(item: tuple[str, str]) -> tuple[int, str]:
    return (int(item[0]), item[0]) if item[0].isdigit() else (1 << 30, item[0])


def _when(epoch: float | None) -> str:
    """Local time, to the second: what a person at this terminal expects."""
    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _bytes(size: int) -> str:
    units = ("B", "KB", "MB", "GB", "TB")
    exp = 0
    while exp < len(units) - 1 and size >= 1000 ** (exp + 1):
        exp += 1
    return f"{size} B" if exp == 0 else f"{size / 1000 ** exp:.1f} {units[exp]}"
