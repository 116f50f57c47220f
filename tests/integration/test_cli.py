"""The quick-start main job and the reporting commands, run as a newcomer would: `damflow` subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from consumers.catalog import Catalog
from schemas import AssetFailed
from streams.kafka import ensure_topics
from streams.settings import settings_env
from streams.topics import topics_for
from tests.images import make_png

pytestmark = pytest.mark.integration


def damflow(*args: str, env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_run_ingests_the_demo_set_and_status_and_show_report_it(tmp_path: Path) -> None:
    env = dict(os.environ, DAMFLOW_DATA_DIR=str(tmp_path / "data"), DAMFLOW_REBALANCE_TIMEOUT_S="1",
               DAMFLOW_LOG_LEVEL="warn")
    run = damflow("run", "--json", env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    progress = report["progress"]
    # demo set: 24 renders + 1 photo + 1 exact copy + 1 truncated file; notes.txt is not an image
    assert report["found"] == 27 and report["skipped_other"] == 1
    # it waits until tier 2 (searchable) by default: the 26 browsable files, the truncated one never reaches it
    assert progress["tier"] == 2 and progress["done"] == 26 and progress["total_final"] is True

    status = damflow("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["locations"] == 26
    assert data["asset_states"]["tier1"]["browsable"] == 25  # the copy is the same asset
    [batch] = data["batches"]
    assert batch["batch_id"] == report["batch_id"] and batch["scan_complete"]

    photo = str((tmp_path / "data" / "demo" / "camera" / "IMG_0001.jpg").resolve())
    show = damflow("show", photo, "--json", env=env)
    assert show.returncode == 0, show.stderr
    asset = json.loads(show.stdout)
    assert asset["tier1_state"] == "browsable"
    assert (asset["width"], asset["height"]) == (480, 640)  # EXIF orientation 6 applied
    assert (tmp_path / "data" / asset["thumbnails"]["256"]).is_file()
    relative = damflow("show", os.path.relpath(photo), "--json", env=env)  # a path as typed, not resolved
    assert relative.returncode == 0 and json.loads(relative.stdout)["asset_id"] == asset["asset_id"]
    by_prefix = damflow("show", asset["asset_id"][:10], env=env)
    assert by_prefix.returncode == 0 and asset["asset_id"] in by_prefix.stdout
    found = damflow("search", "koi", "--json", env=env)  # demo seeds 1001, 1009, ... render the koi pond
    assert found.returncode == 0 and len(json.loads(found.stdout)) == 3


def test_commands_fail_with_a_one_line_reason(tmp_path: Path) -> None:
    env = dict(os.environ, DAMFLOW_DATA_DIR=str(tmp_path / "nothing-here"))
    for args in (["status"], ["show", "abcdef"], ["ingest", str(tmp_path)], ["ingest", str(tmp_path / "missing")]):
        result = damflow(*args, env=env, timeout=30)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("damflow"), result.stderr
    bad = damflow("status", env=dict(env, DAMFLOW_PARTITIONS="zero"), timeout=30)
    assert bad.returncode == 2 and "DAMFLOW_PARTITIONS" in bad.stderr
    bad = damflow("status", env=dict(env, DAMFLOW_SESSION_TIMEOUT_S="inf"), timeout=30)
    assert bad.returncode == 2 and "DAMFLOW_SESSION_TIMEOUT_S" in bad.stderr and "finite" in bad.stderr
    for args in (["ingest", str(tmp_path), "--wait", "--timeout", "nan"], ["dlq", "replay", "--rate", "0"]):
        bad = damflow(*args, env=env, timeout=30)  # nan gave up at once; a rate of 0 or nan meant no limit
        assert bad.returncode == 2 and "finite number above 0" in bad.stderr, bad.stderr

    # what the operator's machine gets wrong, each a traceback before (from an audit)
    a_file, damaged = tmp_path / "a-file", tmp_path / "damaged"
    a_file.write_text("")
    damaged.mkdir()
    (damaged / "catalog.sqlite").write_text("not a database")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    cases = [
        (["up"], dict(DAMFLOW_DATA_DIR=str(a_file)), "File exists"),
        (["ingest", str(tmp_path)], dict(DAMFLOW_DATA_DIR=str(a_file)), "Not a directory"),
        (["status"], dict(DAMFLOW_DATA_DIR=str(damaged)), "not a database"),
        (["up"], dict(DAMFLOW_DATA_DIR=str(damaged)), "not a database"),  # at once, not "timed out" after 60 s
        (["dlq", "list"], dict(DAMFLOW_BROKER_URL="127.0.0.1:9"), "cannot reach broker"),
        (["up"], dict(DAMFLOW_DATA_DIR=str(tmp_path / "up"), DAMFLOW_HTTP_PORT=str(taken.getsockname()[1])),
         "address already in use"),
    ]
    with taken:
        for args, changed, reason in cases:
            bad = damflow(*args, env=dict(env, **changed), timeout=90)
            last = bad.stderr.strip().splitlines()[-1]
            assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
            assert last.startswith(f"damflow {args[0]}") and reason in last, last


def test_an_ingest_that_times_out_names_its_batch(make_settings, tmp_path: Path) -> None:
    settings = make_settings()
    asyncio.run(ensure_topics(settings.broker_url, topics_for(settings).all(), settings.partitions))
    folder = tmp_path / "in"
    folder.mkdir()
    make_png(folder / "a.png", size=(16, 16), seed=1)
    env = dict(os.environ) | settings_env(settings) | {"DAMFLOW_LOG_LEVEL": "warn"}
    # no worker runs: the batch cannot finish within the wait
    result = damflow("ingest", str(folder), "--wait", "--timeout", "1", env=env, timeout=60)
    assert result.returncode == 3, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("damflow ingest: timed out waiting for batch ") and "goes on" in line


def test_an_ingest_that_times_out_while_its_scan_is_held_says_the_scan_stopped(make_settings, tmp_path: Path) -> None:
    settings = make_settings(scan_high_water=2, scan_low_water=1, scan_lag_every=1)
    asyncio.run(ensure_topics(settings.broker_url, topics_for(settings).all(), settings.partitions))
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        make_png(folder / f"{i}.png", size=(16, 16), seed=i)
    env = dict(os.environ) | settings_env(settings) | {"DAMFLOW_LOG_LEVEL": "warn"}
    # no worker runs: backpressure holds the walk at 2 files; the wait's timeout ends it (it hung for good)
    result = damflow("ingest", str(folder), "--wait", "--timeout", "1", env=env, timeout=60)
    assert result.returncode == 3, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("damflow ingest: timed out waiting for batch ") and "the scan stopped" in line
    assert "ingest the folder again" in line


def test_dlq_list_says_when_the_catalog_counts_dead_letters_the_broker_no_longer_holds(
        make_settings, tmp_path: Path) -> None:
    # the embedded broker keeps its letters in memory: after a restart of `damflow up`, `dlq list` said only "no
    # dead letters match" while `status` still counted the files dead-lettered, and nothing said how to retry them
    settings = make_settings()
    asyncio.run(ensure_topics(settings.broker_url, topics_for(settings).all(), settings.partitions))
    settings.data_path.mkdir(parents=True, exist_ok=True)
    with Catalog(settings.catalog_path) as catalog:
        catalog.apply([AssetFailed(event_id="e1", batch_id="b1", lane="batch", source="scan", tier=1,
                                   path="/in/broken.png", error_class="CorruptImage", error_code="corrupt_image",
                                   reason="truncated", retriable=False, outcome="dead_lettered", failed_at=1.0)])
    env = dict(os.environ) | settings_env(settings) | {"DAMFLOW_LOG_LEVEL": "warn"}
    listed = damflow("dlq", "list", env=env, timeout=60)
    assert listed.returncode == 0 and listed.stdout.strip() == "no dead letters match", listed.stderr
    assert "the catalog counts 1 file(s) dead-lettered" in listed.stderr and "ingest their folders again" in (
        listed.stderr)
    only_tier_2 = damflow("dlq", "list", "--tier", "2", env=env, timeout=60)
    assert only_tier_2.stderr == ""
