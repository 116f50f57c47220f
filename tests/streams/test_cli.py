"""The command line's reports, without a broker: the pipeline calls they print are stood in for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# `damflow upload NAME NAME.2` with upload_files stood in for: argv[1] is the name as bytes (hex), argv[2] what
# became of the second file
_UPLOAD = """
import os, sys
import streams.cli as cli, streams.ingest as ingest
from streams.errors import UnsupportedFormat
from streams.ingest import UploadResult

async def upload_files(settings, topics, bootstrap, files, **kw):
    [good, other] = files
    if sys.argv[2] == "rejected":
        second = UploadResult(str(other), "", "", state="rejected", batch_id="upload-x",
                              reason=str(UnsupportedFormat("not a regular file (a FIFO)", path=str(other))))
    else:
        second = UploadResult(str(other), "cd" * 32, "", state="not_published", batch_id="upload-x",
                              reason="the broker did not take it: KafkaConnectionError()")
    return [UploadResult(str(good), "ab" * 32, "e1", batch_id="upload-x"), second]

ingest.upload_files = upload_files
cli.resolve_bootstrap = lambda settings: "unused:9092"
name = os.fsdecode(bytes.fromhex(sys.argv[1]))
sys.exit(cli.main(["upload", name, name + ".2"]))
"""


def _upload(tmp_path: Path, second: str) -> tuple[subprocess.CompletedProcess, str]:
    """Run the stood-in `damflow upload` on a name that is not UTF-8; returns it and the name as printed."""
    name = os.fsencode(tmp_path) + b"/caf\xe9.png"
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict",  # stdout as under en_US.UTF-8 (C.UTF-8 escapes)
               DAMFLOW_DATA_DIR=str(tmp_path / "data"))
    done = subprocess.run([sys.executable, "-c", _UPLOAD, name.hex(), second], env=env, capture_output=True,
                          cwd=Path(__file__).parents[2], timeout=60)
    assert b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")[-2000:]
    return done, os.fsdecode(tmp_path) + "/caf\\xe9.png"


def test_an_upload_report_prints_a_name_that_is_not_utf8_under_a_strict_utf8_stdout(tmp_path: Path) -> None:
    done, shown = _upload(tmp_path, "rejected")
    assert done.returncode == 1  # a refused file, reported as such
    [published, rejected] = done.stdout.decode("utf-8").splitlines()
    assert published == f"{'ab' * 32}  {shown}"
    assert rejected.startswith(f"{'-':64s}  {shown}.2  REJECTED: not a regular file (a FIFO)")
    assert rejected.endswith(f"({shown}.2)")


def test_an_upload_the_broker_failed_part_way_prints_every_row_and_exits_as_a_failure(tmp_path: Path) -> None:
    done, shown = _upload(tmp_path, "broker")
    assert done.returncode == 2
    [published, lost] = done.stdout.decode("utf-8").splitlines()
    assert published == f"{'ab' * 32}  {shown}"
    assert lost == f"{'cd' * 32}  {shown}.2  NOT PUBLISHED: the broker did not take it: KafkaConnectionError()"
    assert done.stderr.decode().strip().splitlines()[-1].endswith("failed: 1 file(s) not published")


def test_a_report_to_a_reader_that_stopped_reading_ends_quietly(tmp_path: Path) -> None:
    """`damflow status | head -1`: the pipe's reader gone, the command says nothing about it (no "Broken pipe"
    line, no "Exception ignored" at the interpreter's exit) and exits as a process killed by SIGPIPE would."""
    from consumers.catalog import Catalog

    Catalog(tmp_path / "data" / "catalog.sqlite").close()
    read, write = os.pipe()
    os.close(read)  # the reader is gone before a byte is written
    try:
        done = subprocess.run([sys.executable, "-m", "streams.cli", "status"], stdout=write, stderr=subprocess.PIPE,
                              env=dict(os.environ, DAMFLOW_DATA_DIR=str(tmp_path / "data")),
                              cwd=Path(__file__).parents[2], timeout=60)
    finally:
        os.close(write)
    assert done.stderr == b""
    assert done.returncode == 128 + 13  # SIGPIPE


@pytest.mark.parametrize(("name", "value"), [("DAMFLOW_THUMBNAIL_SIZES", "256,1440"),
                                             ("DAMFLOW_THUMBNAIL_SIZES", "[256, 0]"), ("DAMFLOW_HTTP_PORT", "x"),
                                             ("DAMFLOW_SCAN_HIGH_WATER", "100"), ("DAMFLOW_EMBEDDED_PORT", "70000")])
def test_a_bad_setting_is_one_line_naming_it_and_exit_2(name: str, value: str, monkeypatch, capsys) -> None:
    """A list setting that is not JSON raised pydantic-settings' SettingsError past the check: a traceback."""
    from streams.cli import main

    monkeypatch.setenv(name, value)
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("damflow: bad setting") and name in err and err.count("\n") == 1, err


@pytest.mark.parametrize("limit", ["-3", "0", "x"])
def test_reprocess_refuses_a_limit_that_is_not_a_count_of_assets(limit: str, capsys) -> None:
    """`--limit -3` went to SQLite as LIMIT -3, which means no limit: every asset was sent to tier 2 again."""
    from streams.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["reprocess", "--tier", "2", "--all", "--limit", limit])
    assert exit_.value.code == 2
    assert "--limit" in capsys.readouterr().err
    assert build_parser().parse_args(["reprocess", "--limit", "5"]).limit == 5


def _letter(id_: str, status: str) -> dict:
    return {"id": id_, "tier": 1, "status": status, "error_class": "CorruptImage", "attempts": 1,
            "replay_count": 0, "path": f"/data/{id_}.png", "message": "truncated"}


def test_dlq_list_all_says_which_letters_were_replayed_or_purged() -> None:
    # `dlq list --all` showed a replayed letter exactly as a pending one: nothing told them apart
    from streams.cli import render_dlq

    header, pending, replayed, purged = render_dlq(
        [_letter("1:0:1", "pending"), _letter("1:0:2", "replayed"), _letter("1:0:3", "purged")], "list").splitlines()
    assert header.split()[:4] == ["ID", "TIER", "STATUS", "ERROR"]
    assert [row.split()[2] for row in (pending, replayed, purged)] == ["pending", "replayed", "purged"]
    header, row = render_dlq([_letter("1:0:1", "pending")], "list").splitlines()  # plain `list`: as before
    assert header.split()[:3] == ["ID", "TIER", "ERROR"] and row.split()[2] == "CorruptImage"


@pytest.mark.parametrize("extra", [["--tier", "2"], ["--timeout", "5"]])
def test_ingest_refuses_what_only_a_wait_uses_without_wait(extra: list[str], tmp_path: Path) -> None:
    # `damflow ingest DIR --tier 2` published the folder and returned at once: the tier asked for was ignored
    done = subprocess.run([sys.executable, "-m", "streams.cli", "ingest", str(tmp_path), *extra],
                          env=dict(os.environ, DAMFLOW_DATA_DIR=str(tmp_path / "data")), capture_output=True,
                          text=True, cwd=Path(__file__).parents[2], timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "damflow ingest: --tier and --timeout say what --wait waits for: give --wait too"


def test_status_says_why_work_in_flight_does_not_move_when_no_pipeline_runs(tmp_path: Path) -> None:
    """After `damflow run` or a stopped `up`, a batch's work stayed 'in flight' with an ETA that only grew."""
    from consumers.catalog import Catalog
    from streams.broker import record_runtime
    from streams.settings import Settings
    from tests.consumers.test_catalog import browsable, scanned

    settings = Settings(data_dir=tmp_path / "data")
    with Catalog(settings.catalog_path) as catalog:
        catalog.apply([scanned(3, complete=True), browsable("e1", "/data/shoot/e1.png")])
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAMFLOW_")} | {
        "DAMFLOW_DATA_DIR": str(settings.data_path)}

    def status() -> str:
        done = subprocess.run([sys.executable, "-m", "streams.cli", "status"], env=env, capture_output=True,
                              text=True, cwd=Path(__file__).parents[2], timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "no `damflow up` runs on this data directory: the work in flight waits for it" in status()
    record_runtime(settings, "127.0.0.1:9")  # as a running `damflow up` (this live process) leaves it
    assert "no `damflow up` runs" not in status()


def test_search_takes_the_query_languages_exclusions_as_words(tmp_path: Path, monkeypatch, capsys) -> None:
    """`damflow search koi -blurry`: argparse took `-blurry` for an unknown option (and `-hands` for `-h`), so
    the README's exclusions only worked quoted into one argument."""
    import json

    from consumers.catalog import Catalog
    from streams import cli
    from tests.consumers.test_catalog import A1, A2, browsable
    from tests.consumers.test_catalog_search import indexed

    monkeypatch.setenv("DAMFLOW_DATA_DIR", str(tmp_path / "data"))
    with Catalog(tmp_path / "data" / "catalog.sqlite") as catalog:
        catalog.apply([browsable("e1", "/d/a.png"), browsable("e2", "/d/b.png", A2),
                       indexed(A1, event_id="e1", positive="koi pond, blurry water", model="sdxl"),
                       indexed(A2, event_id="e2", positive="koi pond at dawn", model="pony")])

    def found(*argv: str) -> list[str]:
        assert cli.main(["search", *argv]) == 0
        return [row["asset_id"] for row in json.loads(capsys.readouterr().out)]

    assert found("koi", "-blurry", "--json") == [A2]
    assert found("-model:pony", "--limit", "5", "koi", "--json") == [A1]
    assert found("--json", "koi", "-hands") == found("--json", "koi") != []
    assert found("--json", "--", "koi", "-water") == [A2]


def test_search_options_are_taken_wherever_they_are_and_abbreviated() -> None:
    from streams.cli import _query_words_last, build_parser

    def parsed(*argv: str) -> tuple[list[str], int, bool]:
        args = build_parser().parse_args(_query_words_last(["search", *argv]))
        return args.text, args.limit, args.json

    assert parsed("koi", "-blurry", "--li", "5", "-model:x") == (["koi", "-blurry", "-model:x"], 5, False)
    assert parsed("--limit=7", "-hands", "--js", "koi") == (["-hands", "koi"], 7, True)
    assert parsed("koi", "--", "--json", "-h") == (["koi", "--json", "-h"], 50, False)


def test_reconcile_tells_how_a_reprocess_whose_files_were_lost_goes_again(tmp_path: Path) -> None:
    from consumers.catalog import Catalog
    from schemas.events import BatchScanned
    from streams.settings import Settings

    settings = Settings(data_dir=tmp_path / "data")
    with Catalog(settings.catalog_path) as catalog:
        catalog.apply([BatchScanned(batch_id="reprocess-1", lane="batch", root="", found=2, complete=True,
                                    started_at=1.0, scanned_at=2.0, first_tier=2)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAMFLOW_")} | {
        "DAMFLOW_DATA_DIR": str(settings.data_path)}
    done = subprocess.run([sys.executable, "-m", "streams.cli", "reconcile", "--dry-run"], env=env,
                          capture_output=True, text=True, cwd=Path(__file__).parents[2], timeout=60)
    assert done.returncode == 0, done.stderr
    assert "batch reprocess-1: 2 files never reached the catalog; `damflow reprocess`" in done.stdout


@pytest.mark.parametrize(("batch", "taken"), [("0123abcd", True), ("upload-0123abcd", True), ("0123abc", False),
                                               ("upload-a", False), ("reprocess-0123", False)])
def test_dlq_takes_a_batch_by_as_much_of_its_id_as_status_shows(batch: str, taken: bool, capsys) -> None:
    # `upload-a` passed as 8 characters, and `dlq replay --batch upload-a` replayed one upload batch in 16
    from streams.cli import build_parser

    if taken:
        assert build_parser().parse_args(["dlq", "replay", "--batch", batch]).batch == batch
    else:
        with pytest.raises(SystemExit):
            build_parser().parse_args(["dlq", "replay", "--batch", batch])
        assert "8 characters at least" in capsys.readouterr().err
