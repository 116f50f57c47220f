"""The ``damflow`` command line. Every command has ``--help``; reporting commands take ``--json``; a failure
exits non-zero with a one-line reason."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import select
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError
from pydantic import ValidationError
from pydantic_settings import SettingsError

from consumers.catalog import Catalog
from consumers.progress import ProgressBar
from consumers.views import render_asset, render_search, render_status
from schemas import Event, new_id, to_dict
from streams import logs
from streams.broker import embedded_broker_rss, resolve_bootstrap
from streams.errors import ConfigError, DamflowError, WaitTimedOut
from streams.kafka import ensure_pipeline_topics, producer
from streams.niceness import lower_priority
from streams.settings import Settings
from streams.topics import topics_for


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))


def _jsonable(data: dict) -> dict:
    """Events inside result dicts become plain data."""
    return {k: to_dict(v) if isinstance(v, Event) else v for k, v in data.items()}


# -- commands that run the pipeline ---------------------------------------------------------------


def _on_signal() -> Callable[[], Awaitable[None]]:
    """Take SIGINT and SIGTERM from now on (before saying "Ctrl-C to stop": one sent at once is not lost to
    Python's default handler); returns what waits for the first (a clean stop follows). A second one while
    stopping ends the process at once (its children die with it: see streams.parentage)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def wait() -> None:
        await stop.wait()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _stop_now)

    return wait


async def _until_signal() -> None:
    await _on_signal()()


async def _sigterm_cancels(coro: Awaitable[Any]) -> Any:
    """Await ``coro``; SIGTERM (``kill``, ``timeout``, systemd, a container's stop) cancels it as Ctrl-C does, so
    a scan closes its batch with what the broker took (see streams.scanner) instead of the process dying with the
    batch open for good. The caller exits 143 on the ``CancelledError``."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None
    # once: a second SIGTERM would cancel the closing of the batch the first one asked for
    loop.add_signal_handler(signal.SIGTERM, lambda: task.cancelling() or task.cancel())
    try:
        return await coro
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _stopped(command: str, batch_id: str, sig: signal.Signals) -> int:
    """What ``ingest`` and ``run`` say when a signal stopped their scan: the batch it closed, to follow or ingest
    again; the exit status of that signal."""
    print(f"damflow {command}: stopped (batch {batch_id})", file=sys.stderr)
    return 128 + sig


def _stop_now() -> None:
    print("damflow: stopping now, without waiting", file=sys.stderr, flush=True)
    os._exit(130)


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from streams.supervisor import Stack

    async def main() -> None:
        async with Stack(settings, workers=args.workers) as stack:
            lower_priority(settings.service_nice)  # HTTP and sink: below urgent work (see streams.niceness)
            stopped = _on_signal()
            print(f"damflow up: broker {stack.bootstrap}, {len(stack.workers)} worker(s), "
                  f"http {stack.http_url}, data {settings.data_path} — Ctrl-C to stop", file=sys.stderr)
            await stopped()

    asyncio.run(main())
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """Everything in one go: start the pipeline, ingest a folder (or the demo set), wait, report, stop."""
    from streams.demo import make_demo_set
    from streams.ingest import ingest_folder
    from streams.supervisor import Stack

    folder = Path(args.folder) if args.folder else make_demo_set(settings.data_path / "demo")
    if not folder.is_dir():
        raise DamflowError(f"not a directory: {folder}")

    batch_id = new_id()

    async def main() -> dict:
        async with Stack(settings, workers=args.workers, serve_http=False) as stack:
            lower_priority(settings.service_nice)  # scanner and sink: below urgent work (see streams.niceness)
            t0 = time.monotonic()
            bar = None if args.json else ProgressBar()
            result = await ingest_folder(settings, stack.topics, stack.bootstrap, folder, wait=True,
                                         timeout=args.timeout, bar=bar, tier=args.tier, batch_id=batch_id)
            return {**_jsonable(result.to_dict()), "seconds": round(time.monotonic() - t0, 2),
                    "data_dir": str(settings.data_path)}

    try:
        report = asyncio.run(_sigterm_cancels(main()))
    except asyncio.CancelledError:
        return _stopped("run", batch_id, signal.SIGTERM)
    except KeyboardInterrupt:
        return _stopped("run", batch_id, signal.SIGINT)
    if args.json:
        _print_json(report)
    else:
        with Catalog(settings.catalog_path, readonly=True) as catalog:  # every tier, not only the one waited for
            tiers = [catalog.progress(report["batch_id"], t) for t in range(1, args.tier + 1)]
        counts = "; ".join(f"tier {p.tier}: {p.done} done, {p.failed + p.dead_lettered} failed"
                           for p in tiers if p is not None)
        print(f"batch {report['batch_id']}: {counts}; {report['skipped_unchanged']} unchanged, "
              f"{report['skipped_other']} not images, in {report['seconds']} s. Thumbnails: {settings.thumbs_dir}")
        print(f"next: `damflow status`, `damflow search WORDS`, `damflow show ID` (catalog: {settings.catalog_path})")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from streams.worker import run_worker

    bootstrap = resolve_bootstrap(settings)
    asyncio.run(ensure_pipeline_topics(settings, bootstrap))
    return run_worker(settings, bootstrap)


def _run_service(settings: Settings, service: Callable) -> int:
    """Run one long-lived pipeline service (``service(settings, topics, bootstrap).run()``) until a signal."""
    lower_priority(settings.service_nice)  # a service: below urgent work (see streams.niceness)

    async def main() -> None:
        bootstrap, topics = resolve_bootstrap(settings), topics_for(settings)
        await ensure_pipeline_topics(settings, bootstrap)
        from streams.supervisor import keep_running

        task = asyncio.create_task(keep_running(service.__name__, service(settings, topics, bootstrap).run))
        await _until_signal()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    return 0


def cmd_catalog(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.catalog_sink import CatalogSink
    from streams.ownership import DataDirLock

    with DataDirLock(settings):  # the catalog's one writer: refused beside `damflow up` on the same directory
        return _run_service(settings, CatalogSink)


def cmd_retrier(args: argparse.Namespace, settings: Settings) -> int:
    from streams.retrier import Retrier

    return _run_service(settings, Retrier)


# -- producers --------------------------------------------------------------------------------------------


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from streams.ingest import ingest_folder

    if not args.wait and (args.tier is not None or args.timeout is not None):  # else ignored: said, not guessed
        raise DamflowError("--tier and --timeout say what --wait waits for: give --wait too")
    folder = Path(args.folder)
    if not folder.is_dir():
        raise DamflowError(f"not a directory: {folder}")
    bootstrap = resolve_bootstrap(settings)
    if args.lane != "interactive":  # an import is batch work: below urgent work (see streams.niceness)
        lower_priority(settings.scan_nice)
    bar = ProgressBar() if args.wait and not args.json else None
    batch_id = new_id()
    try:
        result = asyncio.run(_sigterm_cancels(ingest_folder(
            settings, topics_for(settings), bootstrap, folder, wait=args.wait, lane=args.lane,
            timeout=args.timeout, bar=bar, tier=args.tier or 1, batch_id=batch_id)))
    except asyncio.CancelledError:  # SIGTERM: the scan closed its batch with what the broker took
        return _stopped("ingest", batch_id, signal.SIGTERM)
    except KeyboardInterrupt:  # Ctrl-C: the same (asyncio.run cancelled the scan, which closed its batch)
        return _stopped("ingest", batch_id, signal.SIGINT)
    except WaitTimedOut as exc:  # which batch to follow, and whether its scan was stopped short (see ingest_folder)
        print(f"damflow ingest: {exc}", file=sys.stderr)
        return 3
    if args.json:
        _print_json(_jsonable(result.to_dict()))
    else:
        print(result.batch_id)
    return 0


def cmd_upload(args: argparse.Namespace, settings: Settings) -> int:
    from streams.ingest import upload_files
    from streams.scanner import printable

    rows = asyncio.run(upload_files(settings, topics_for(settings), resolve_bootstrap(settings),
                                    [Path(f) for f in args.files], wait=args.wait, timeout=args.timeout))
    if args.json:
        _print_json([vars(r) for r in rows])
    else:
        for row in rows:  # a name that is not UTF-8 (and a reason naming it) printed as \xNN, not a traceback
            reason = printable(row.reason or "")
            extra = {"browsable": f"  browsable in {row.ms_to_browsable} ms", "failed": f"  FAILED: {reason}",
                     "rejected": f"  REJECTED: {reason}", "not_published": f"  NOT PUBLISHED: {reason}",
                     "pending": f"  not browsable within {args.timeout:g} s (published; still in the works)",
                     }.get(row.state, "")
            print(f"{row.asset_id or '-':64s}  {printable(row.file)}{extra}")
    # 2: the broker failed part-way (each row says what became of its file); 1: some file failed or was refused;
    # 3: some outcome did not come within the timeout
    if any(r.state == "not_published" for r in rows):
        print(f"damflow upload: the broker ({settings.broker_url or 'embedded'}) failed: "
              f"{sum(r.state == 'not_published' for r in rows)} file(s) not published", file=sys.stderr)
        return 2
    if any(r.state in ("failed", "rejected") for r in rows):
        return 1
    return 3 if any(r.state == "pending" for r in rows) else 0


# -- catalog views -------------------------------------------------------------------------------------------


def _catalog(settings: Settings) -> Catalog:
    if not settings.catalog_path.exists():
        raise DamflowError(f"no catalog at {settings.catalog_path} yet: run `damflow up` and ingest something")
    return Catalog(settings.catalog_path, readonly=True)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    with _catalog(settings) as catalog:
        status = catalog.status()
    status["embedded_broker_rss_bytes"] = embedded_broker_rss(settings)
    if args.json:
        _print_json(status)
        return 0
    text = render_status(status)
    in_flight = any(t["in_flight"] for b in status["batches"] for t in b["tiers"].values())
    if in_flight and not _pipeline_runs(settings):  # an ETA that only grows, unless it is said why
        text += ("\nno `damflow up` runs on this data directory: the work in flight waits for it (as it starts it "
                 "sends on what its broker lost; `damflow reconcile --dry-run` shows what)")
    print(text)
    return 0


def _pipeline_runs(settings: Settings) -> bool:
    """Whether a pipeline may be working on this data directory: a live ``damflow up``, or an external broker
    (whose workers run elsewhere: not known here, so yes)."""
    try:
        resolve_bootstrap(settings)
    except ConfigError:
        return False
    return True


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    with _catalog(settings) as catalog:
        asset = catalog.asset(args.id)
        if asset is None and os.path.lexists(args.id):  # a path as typed: the catalog holds it resolved
            asset = catalog.asset(os.path.realpath(args.id))
    if asset is None:
        raise DamflowError(f"no asset {args.id}")
    _print_json(asset) if args.json else print(render_asset(asset))
    return 0


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    with _catalog(settings) as catalog:
        rows = catalog.search(" ".join(args.text), limit=args.limit)
    _print_json(rows) if args.json else print(render_search(rows))
    return 0


def cmd_reprocess(args: argparse.Namespace, settings: Settings) -> int:
    """Send assets parsed by an older tier-2 parser (or all, with --all) through tier 2 again."""
    from agents.metadata.model import PARSER_VERSION
    from streams.reprocess import reprocess_tier2

    if args.tier != 2:
        raise DamflowError("only tier 2 can be reprocessed so far")
    target = PARSER_VERSION + 1 if args.all else PARSER_VERSION
    with _catalog(settings) as catalog:
        rows = catalog.assets_needing_reparse(target, limit=args.limit)
    if args.dry_run:
        result = {"would_reprocess": len(rows), "parser_version": PARSER_VERSION}
    else:
        result = asyncio.run(reprocess_tier2(settings, topics_for(settings), resolve_bootstrap(settings), rows))
    _print_json(result) if args.json else print(
        f"{result.get('published', result.get('would_reprocess'))} assets "
        f"{'sent to' if not args.dry_run else 'would go to'} tier 2 (parser v{PARSER_VERSION})")
    return 0


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    """Send on again the work the catalog shows as started but not finished (lost with the broker's events)."""
    from streams.reconcile import reconcile
    from streams.scanner import printable

    bootstrap = "" if args.dry_run else resolve_bootstrap(settings)
    result = asyncio.run(reconcile(settings, topics_for(settings), bootstrap, dry_run=args.dry_run))
    if args.json:
        _print_json(result)
        return 0
    verb = "would resume" if args.dry_run else "resumed"
    print(f"{verb} {result['resumed']} files of {result['batches']} batches: {result['tier1']} at tier 1 (their "
          f"retry), {result['tier2']} at tier 2 (tier 3 follows), {result['tier3']} at tier 3"
          + (f"; of them {result['uploads']} uploads the catalog never heard of, from their stored originals"
             if result["uploads"] else ""))
    for row in result["gone"]:
        print(f"  not resumed, no path holds its bytes any more: {printable(row['path'])} (batch {row['batch_id']})")
    for batch in result["unheard"]:
        if batch["first_tier"] > 1:  # a reprocess's: its assets still have the older parser's results
            again = "`damflow reprocess` (with --all if it was) sends them again"
        else:
            again = (f"`damflow ingest {printable(batch['root'])}` sends those not browsable" if batch["root"]
                     else "their uploaders must send them again")
        print(f"  batch {batch['batch_id']}: {batch['files']} files never reached the catalog; {again}")
    for batch in result["cut_short"]:
        print(f"  batch {batch['batch_id']}: its scan was cut short with the broker after {batch['scanned_total']} "
              f"files, and is closed with them; `damflow ingest {printable(batch['root'])}` sends the rest")
    return 0


# -- dead letters -----------------------------------------------------------------------------------------------


def _whole(text: str, least: int = 0) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, not {value}")
    return value


def _at_least_one(text: str) -> int:
    return _whole(text, 1)


def _batch_prefix(text: str) -> str:
    """A batch id, or its start: at least as much as `damflow status` shows (8 characters after the kind it names,
    ``upload-``), so that a prefix rarely names another batch's letters too (a replay by batch sends every letter
    it matches)."""
    if len(text.rpartition("-")[2]) < 8:
        raise argparse.ArgumentTypeError(f"{text!r}: give the batch id, or its start as `damflow status` shows it "
                                         "(8 characters at least, after `upload-` or `reprocess-`)")
    return text


def _positive(text: str) -> float:
    """A command-line number of seconds or a rate: finite and above zero ("nan" compares false with everything:
    a timeout of nan gave up at once, a rate of nan meant no limit)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, not {text!r}")
    return value


def cmd_dlq(args: argparse.Namespace, settings: Settings) -> int:
    from consumers import dlq

    topics = topics_for(settings)
    tiers = [args.tier] if args.tier else [1, 2, 3]
    since = dlq.parse_when(args.since) if args.since else None
    until = dlq.parse_when(args.until) if args.until else None
    ids = getattr(args, "ids", None) or []

    on_broker, not_found = 0, []

    async def main() -> object:
        nonlocal on_broker, not_found
        letters = await dlq.read_letters(resolve_bootstrap(settings), topics, tiers)
        on_broker = len(letters)
        ledger = dlq.Ledger(settings.dlq_ledger_path)
        try:
            ledger.annotate(letters)
            statuses = ("pending", "replayed", "purged") if getattr(args, "all", False) else ("pending",)
            chosen = dlq.select(letters, ids=ids, error_class=args.error_class, batch=args.batch, since=since,
                                until=until, statuses=statuses)
            if args.action == "list":
                return [letter.summary() for letter in chosen]
            known = {letter.id for letter in letters}
            not_found = [i for i in dict.fromkeys(ids) if i not in known]
            if args.action == "show":
                if not chosen:
                    raise DamflowError(f"no dead letter {', '.join(ids)}")
                return [letter.to_dict() for letter in chosen]
            unknown = [{"id": i, "result": "no such letter"} for i in not_found]
            if args.action == "purge":
                return dlq.purge(chosen, ledger, dry_run=args.dry_run) + unknown
            await dlq.read_back(resolve_bootstrap(settings), chosen)  # the whole of any message a letter cut
            async with producer(resolve_bootstrap(settings), compression=settings.compression_type) as prod:
                return await dlq.replay(chosen, prod, ledger, settings, topics, dry_run=args.dry_run,
                                        rate=args.rate) + unknown
        finally:
            ledger.close()

    rows = asyncio.run(main())
    if args.json or args.action == "show":
        _print_json(rows)
    else:
        print(render_dlq(rows, args.action))
    lost = 0
    if not on_broker and settings.catalog_path.exists():
        with contextlib.suppress(DamflowError, sqlite3.Error):  # (a catalog not upgraded yet: no hint, no failure)
            with Catalog(settings.catalog_path, readonly=True) as catalog:
                lost = catalog.dead_lettered_files(tiers)
        if lost:  # the embedded broker keeps its letters in memory: a restart of `damflow up` lost them
            print(f"damflow dlq: the broker holds no dead letters, but the catalog counts {lost} file(s) "
                  "dead-lettered: their letters were lost with the broker's events (the embedded broker's, at a "
                  "restart of `damflow up`); ingest their folders again, or upload the files again, to retry them "
                  "(`damflow status` names their batches)", file=sys.stderr)
    if args.action == "show" and not_found:  # shown are the others: an id no letter has was dropped silently
        print(f"damflow dlq: no dead letter {', '.join(not_found)}", file=sys.stderr)
    # a script can tell that some stay: a letter not replayed, or one asked for by an id no letter has
    missing = bool(not_found)
    return 1 if missing or (args.action == "replay" and dlq.refused(rows)) else 0


def render_dlq(rows: list[dict], action: str) -> str:
    if not rows:
        return "no dead letters match" if action == "list" else "nothing to do"
    if action != "list":
        return "\n".join(f"{r['id']:12s} {r['result']}" + (f"  {r['path']}" if r.get("path") else "") for r in rows)
    # `list --all` mixes in replayed and purged letters: then each row says which it is
    status = any(r["status"] != "pending" for r in rows)
    lines = [f"{'ID':12s} {'TIER':4s} " + (f"{'STATUS':8s} " if status else "")
             + f"{'ERROR':22s} {'TRIES':5s} {'REPLAYS':7s} PATH / MESSAGE"]
    for r in rows:
        lines.append(f"{r['id']:12s} {r['tier']:<4d} " + (f"{r['status']:8s} " if status else "")
                     + f"{r['error_class'][:22]:22s} {r['attempts'] or '-'!s:5s} "
                     f"{r['replay_count'] if r['replay_count'] is not None else '-'!s:7s} "
                     f"{r['path'] or ''}  {(r['message'] or '')[:80]}")
    return "\n".join(lines)


# -- parser -----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="damflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Callable, help_: str, *, json_flag: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(fn=fn)
        if json_flag:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    p = add("up", cmd_up, "run broker (embedded unless DAMFLOW_BROKER_URL), workers and catalog in the foreground")
    p.add_argument("--workers", type=_whole, default=1,
                   help="worker processes to start (default 1; 0: none here, `damflow worker` runs them elsewhere)")
    p = add("run", cmd_run, "start everything, ingest FOLDER (or a generated demo set), show progress, stop",
            json_flag=True)
    p.add_argument("folder", nargs="?", help="folder to ingest (default: a generated demo set)")
    p.add_argument("--workers", type=_at_least_one, default=1, help="worker processes to start (default 1)")
    p.add_argument("--tier", type=int, choices=[1, 2, 3], default=2,
                   help="stop once this tier is done: 1 browsable, 2 searchable (default), 3 enriched")
    p.add_argument("--timeout", type=_positive, default=None, help="give up waiting after this many seconds")
    add("worker", cmd_worker, "run one worker process that joins the group (scale out)")
    add("catalog", cmd_catalog, "run only the catalog sink (when workers run elsewhere)")
    p = add("ingest", cmd_ingest, "scan FOLDER and publish its images as one batch", json_flag=True)
    p.add_argument("folder")
    p.add_argument("--wait", action="store_true", help="show live progress until the batch is browsable")
    p.add_argument("--tier", type=int, choices=[1, 2, 3], default=None,
                   help="with --wait: wait for this tier (1 browsable, the default; 2 searchable, 3 enriched)")
    p.add_argument("--lane", choices=["batch", "interactive"], default="batch",
                   help="batch (the default: a folder import, behind urgent work) or interactive")
    p.add_argument("--timeout", type=_positive, default=None,
                   help="with --wait: give up waiting after this many seconds")
    p = add("upload", cmd_upload, "store FILEs and publish them on the interactive lane", json_flag=True)
    p.add_argument("files", nargs="+")
    p.add_argument("--wait", action="store_true", help="return when browsable and print the time it took")
    p.add_argument("--timeout", type=_positive, default=60.0,
                   help="with --wait: seconds to wait for each outcome (default 60; then the row is pending, exit 3)")
    add("status", cmd_status, "asset counts per tier, and per batch", json_flag=True)
    p = add("search", cmd_search, "full-text search: words, \"phrases\", prefix*, model: seed: sampler: "
            "scheduler: generator: lora: camera: file: prompt: negative: format:, -exclusions", json_flag=True)
    p.add_argument("text", nargs="+")
    p.add_argument("--limit", type=int, default=50, help="show at most this many matches, best first (default 50)")
    p = add("reprocess", cmd_reprocess, "re-emit tier-2 work for assets parsed by an older parser version",
            json_flag=True)
    p.add_argument("--tier", type=int, default=2, choices=[2], help="the tier to do again (only 2 for now)")
    p.add_argument("--all", action="store_true", help="every indexed asset, not only older parser versions")
    p.add_argument("--limit", type=_at_least_one, default=None, help="at most this many assets")
    p.add_argument("--dry-run", action="store_true", help="say how many would go, send nothing")
    p = add("reconcile", cmd_reconcile, "send on again the work the catalog shows unfinished (events the broker "
            "lost; `up` does it as it starts the embedded broker)", json_flag=True)
    p.add_argument("--dry-run", action="store_true", help="say what would go, send nothing")
    p = add("show", cmd_show, "one asset: locations, per-tier state, thumbnails", json_flag=True)
    p.add_argument("id", help="asset id, a unique prefix of at least 6 characters, or a file's path")
    p = add("dlq", cmd_dlq, "dead letters: list, show, replay or purge what failed")
    dsub = p.add_subparsers(dest="action", required=True)
    for action, help_ in (("list", "letters not yet replayed or purged"), ("show", "full envelopes of IDs"),
                          ("replay", "send the original events again (after fixing the cause)"),
                          ("purge", "mark letters as dealt with")):
        d = dsub.add_parser(action, help=help_, description=help_)
        d.add_argument("ids", nargs="*" if action != "show" else "+", help="letter ids (tier:partition:offset)")
        d.add_argument("--tier", type=int, choices=[1, 2, 3])
        d.add_argument("--error-class", help="error class or code, e.g. CorruptImage or corrupt_image")
        d.add_argument("--batch", type=_batch_prefix,
                       help="batch id, or its start as `damflow status` shows it (8 characters at least)")
        d.add_argument("--since", help="failed after: 30m, 2h, 1d, an epoch or an ISO time")
        d.add_argument("--until", help="failed before (same forms)")
        d.add_argument("--json", action="store_true", help="machine-readable output")
        if action == "list":
            d.add_argument("--all", action="store_true", help="include replayed and purged letters")
        if action in ("replay", "purge"):
            d.add_argument("--dry-run", action="store_true", help="say what would be done, do nothing")
        if action == "replay":
            d.add_argument("--rate", type=_positive, default=50.0, help="events per second at most (default 50)")
    add("retrier", cmd_retrier, "run only the retrier (when not using `damflow up`)")
    return parser


def _query_words_last(argv: list[str]) -> list[str]:
    """``search``'s arguments with its options first and the query's words after ``--``: argparse takes ``-blurry``
    or ``-model:sd15`` (the query language's exclusions) for unknown options, and ``-hands`` for ``-h``. Its
    options are ``-h`` and what starts with ``--`` (abbreviated as argparse allows, ``--limit``'s value next)."""
    if argv[:1] != ["search"]:
        return argv
    options, words = [], []
    rest = iter(argv[1:])
    for arg in rest:
        if arg == "--":
            words.extend(rest)
        elif arg == "-h" or arg.startswith("--"):
            options.append(arg)
            if len(arg) > 2 and "--limit".startswith(arg) and (value := next(rest, None)) is not None:
                options.append(value)
        else:
            words.append(arg)
    return ["search", *options, "--", *words]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_query_words_last(sys.argv[1:] if argv is None else argv))
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = f" DAMFLOW_{str(first['loc'][0]).upper()}" if first["loc"] else ""  # none: a pair of them
        print(f"damflow: bad setting{name}: {first['msg']}", file=sys.stderr)
        return 2
    except SettingsError as exc:  # a list or mapping setting whose value is not JSON: raised before validation
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"DAMFLOW_{field[1].upper()}" if field else "a DAMFLOW_ variable"
        print(f"damflow: bad setting {name}: not JSON ({exc.__cause__ or exc}); write a list as JSON, "
              "e.g. [256, 1440]", file=sys.stderr)
        return 2
    try:
        logs.configure(settings.log_level, settings.log_format)
        code = args.fn(args, settings)
        sys.stdout.flush()  # a reader gone (`| head`) shows here, not as a message at the interpreter's exit
        return code
    except BrokenPipeError as exc:
        if not _stdout_gone():  # a pipe of its own (a child's, a socket's) that broke: a failure as any other
            print(f"damflow {args.command}: {exc}", file=sys.stderr)
            return 2
        _drop_stdout()  # the reader stopped reading (`| head`): nothing to say to it, as `git log | head`
        return 128 + signal.SIGPIPE
    except DamflowError as exc:
        print(f"damflow {args.command}: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, TimeoutError) else 2  # a wait that ran out (WaitTimedOut) exits as any timeout
    except (TimeoutError, asyncio.TimeoutError):
        print(f"damflow {args.command}: timed out", file=sys.stderr)
        return 3
    except KafkaError as exc:  # a broker that cannot be reached or refuses: where, and what it said
        print(f"damflow {args.command}: the broker ({settings.broker_url or 'embedded'}) failed: {exc}",
              file=sys.stderr)
        return 2
    except sqlite3.Error as exc:  # a catalog or ledger file that is damaged, locked or not a database
        print(f"damflow {args.command}: cannot use the catalog under {settings.data_path}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a data directory that is a file or read-only, a port already taken...
        print(f"damflow {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _stdout_gone() -> bool:
    """Whether stdout is a pipe or socket whose reader has gone (poll reports an error or hang-up on it)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError):  # no stdout, or one that has no descriptor
        return False


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's flush of what is still buffered raises nothing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
