"""Text views of the catalog for ``damflow status``, ``damflow show`` and ``damflow search``.

Pure functions of the JSON-able data :meth:`Catalog.status`, :meth:`Catalog.asset` and :meth:`Catalog.search`
return, so ``--json``
and the text output always say the same thing, and the rendering is testable without a database.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

#: Order of asset states in the summary: the good news first, what needs a person last.
_STATE_ORDER = ("browsable", "indexed", "enriched", "superseded", "retrying", "failed", "dead_lettered",
                "failed_earlier", "pending")
#: States whose stored name does not read as prose
_WORDS = {"failed_earlier": "failed in an earlier tier",
          "superseded": "superseded (failed; its file is done since, with other content)"}


#: From this much memory held by the embedded broker on, ``damflow status`` says what to do about it.
BROKER_ADVICE_BYTES = 512 * 2**20
BROKER_ADVICE = ("; a restart of `damflow up` frees it (unfinished work is sent on again), and for a library that "
                 "grows for weeks Kafka or Redpanda (DAMFLOW_BROKER_URL) keep events on disk")


def render_status(status: dict[str, Any]) -> str:
    """A compact overview: asset counts per tier state, then one table row per batch and tier."""
    lines = [f"assets: {status['assets']:,} ({status['locations']:,} locations)"]
    for tier, states in status["asset_states"].items():
        shown = [(s, n) for s, n in sorted(states.items(), key=_state_key) if n and s != "pending"]
        if shown or tier == "tier1":
            parts = [f"{n:,} {_word(s)}" for s, n in shown] + [f"{states.get('pending', 0):,} pending"]
            lines.append(f"  tier {tier.removeprefix('tier')}: " + " · ".join(parts))
    rss = status.get("embedded_broker_rss_bytes")
    if rss is not None:  # (the catalog's own status has none: `damflow status` adds it)
        lines.append(f"  embedded broker: {rss / 2**20:,.0f} MB in memory (it keeps every event since `damflow up` "
                     "started)"
                     + (BROKER_ADVICE if rss >= BROKER_ADVICE_BYTES else ""))
    if status["held_events"]:
        lines.append(f"  {status['held_events']:,} events held back: the catalog could not take them (see the "
                     "sink's catalog_event_held and catalog_record_unreadable logs); tried again at every start "
                     "of the sink")
    batches = status["batches"]
    if not batches:
        lines.append("no batches yet")
        return "\n".join(lines)
    lines.append(f"batches ({len(batches)} of {status['batch_count']}, newest first):")
    header = ("BATCH", "LANE", "TIER", "DONE", "TOTAL", "FAILED", "DEAD", "LOST", "RETRY", "IN FLIGHT", "RATE/s",
              "ETA", "SCAN", "STARTED")
    rows = []
    for batch in batches:
        for tier, t in batch["tiers"].items():
            total = f"{t['known_total']:,}" + ("" if t["total_final"] else "+")
            rows.append((
                short_batch(batch["batch_id"]), batch["lane"], tier.removeprefix("tier"), f"{t['done']:,}", total,
                f"{t['failed']:,}", f"{t['dead_lettered']:,}", f"{t['lost']:,}", f"{t['retrying']:,}",
                f"{t['in_flight']:,}",
                f"{t['rate']:.1f}", _duration(t["eta_s"]), "complete" if batch["scan_complete"] else "scanning",
                _when(batch["started_at"]),
            ))
    lines.extend("  " + line for line in _table(header, rows))
    return "\n".join(lines)


def short_batch(batch_id: str) -> str:
    """A batch id short enough for a table: its first 8 characters, after the kind it names (``upload-``,
    ``reprocess-``), which every batch of that kind shares."""
    kind, _, rest = batch_id.rpartition("-")
    generated = len(rest) >= 16 and all(c in "0123456789abcdef" for c in rest)  # schemas.new_id() after a kind
    return f"{kind}-{rest[:8]}" if kind and generated else batch_id[:8]


def render_asset(asset: dict[str, Any]) -> str:
    """Everything the catalog knows about one asset, for a person."""
    lines = [f"asset       {asset['asset_id']}"]
    if asset["size"] is not None:
        lines.append(f"image       {asset['format']} {asset['width']}×{asset['height']}, {_bytes(asset['size'])}")
    tiers = sorted(k for k in asset if k.startswith("tier") and k.endswith("_state"))
    states, stopped = [], False
    for k in tiers:  # a tier after one that failed is not pending: nothing is on its way to it
        states.append(f"{k.removeprefix('tier').removesuffix('_state')} "
                      f"{_word(asset[k] or ('not reached' if stopped else 'pending'))}")
        stopped = stopped or asset[k] in ("failed", "dead_lettered", "superseded")
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
        lines.append(f"  {loc['path']}{name}  ({loc['source']}, batch {short_batch(loc['batch_id'])}, "
                     f"seen {_when(loc['last_seen_at'])})")
    if asset.get("metadata"):
        lines.extend(_metadata_lines(asset["metadata"]))
    if asset["failures"]:
        lines.append(f"failures ({len(asset['failures'])})")
        for f in asset["failures"]:
            lines.append(f"  tier {f['tier']} {_word(f['outcome'])} after {f['attempts']} attempt(s) "
                         f"at {_when(f['failed_at'])}: {f['error_class']} [{f['error_code']}] {f['reason']}")
            lines.append(f"    {f['path']}")
    return "\n".join(lines)


def _metadata_lines(meta: dict[str, Any]) -> list[str]:
    """Tier 2's summary: how it was made (generator, model, sampling, prompts), or the camera that took it."""
    made = meta["generator"] or "no generation parameters"
    lines = [f"metadata    {made} (parser v{meta['parser_version']}, indexed {_when(meta['indexed_at'])})"]
    others = [name for name in meta["models"] if name != meta["model"]]  # a refiner's, a hires fix's
    rows = [("model", meta["model"]), ("also", ", ".join(others)), ("loras", ", ".join(meta["loras"])),
            ("vae", meta["vae"])]
    sampling = [f"{name} {_number(meta[key])}" for name, key in
                (("seed", "seed"), ("steps", "steps"), ("cfg", "cfg"), ("denoise", "denoise"))
                if meta[key] is not None]
    sampler = " ".join(v for v in (meta["sampler"], meta["scheduler"] and f"({meta['scheduler']})") if v)
    rows += [("sampling", " · ".join(sampling + ([f"sampler {sampler}"] if sampler else [])))]
    rows += [("prompt", meta["positive"]), ("negative", meta["negative"])]
    camera = meta["camera"]
    rows.append(("camera", " · ".join(v for v in (camera.get("make"), camera.get("model"), camera.get("lens")) if v)))
    rows += [("taken", meta["datetime_original"]),
             ("gps", None if meta["gps_lat"] is None else f"{meta['gps_lat']:.5f}, {meta['gps_lon']:.5f}")]
    rows += [(name, camera.get(name)) for name in ("title", "description", "keywords", "artist", "copyright",
                                                   "comment") if camera.get(name)]
    lines.extend(f"  {name:<9} {_clip(value, 300)}" for name, value in rows if value)
    lines.append(f"  {'document':<9} {meta['metadata_path']}")
    return lines


def render_search(rows: Sequence[dict[str, Any]]) -> str:
    """Search results as :meth:`Catalog.search` returns them: one line per asset, best first, its snippet under it."""
    if not rows:
        return "no matches"
    header = ("ASSET", "IMAGE", "GENERATOR", "MODEL", "SEED", "SAMPLER", "PATH")
    table = []
    for r in rows:
        image = f"{r['format']} {r['width']}×{r['height']}" if r.get("format") else "-"
        table.append((r["asset_id"][:12], image, r["generator"] or "-", _clip(r["model"] or "-", 40),
                      "-" if r["seed"] is None else str(r["seed"]), r["sampler"] or "-", r["path"] or "-"))
    lines = [f"{len(rows)} match{'es' if len(rows) != 1 else ''}, best first:"]
    head, *body = _table(header, table)
    lines.append("  " + head)
    for line, r in zip(body, rows, strict=True):
        lines.append("  " + line)
        if r.get("snippet"):
            lines.append("      " + _clip(" ".join(r["snippet"].split()), 160))
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _number(value: float) -> str:
    """7.0 reads 7, 7.5 reads 7.5; integers (seeds) as they are."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def _word(state: str) -> str:
    """A stored state as prose: ``dead_lettered`` reads ``dead-lettered``."""
    return _WORDS.get(state) or state.replace("_", "-")


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
