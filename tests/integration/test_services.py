"""The scale-out layout of docker-compose.yml, without Docker: ``damflow worker``, ``damflow catalog`` and
``damflow retrier`` as processes of their own on one external broker and one data directory, driven by the CLI
as the ``cli`` service runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.settings import Settings, settings_env
from streams.worker import READY_LINE
from tests.images import make_png, write_truncated

pytestmark = pytest.mark.integration


def _env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings_env(settings), "DAMFLOW_DATA_DIR": str(settings.data_path)}


def _damflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, capture_output=True, text=True,
                          timeout=90)


def _ready(proc: subprocess.Popen, timeout: float) -> bool:
    """Whether the worker printed its ready line within ``timeout``; False at once when it exits before."""
    answered, seen = threading.Event(), []

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.strip() == READY_LINE:
                seen.append(True)
                break
        answered.set()

    threading.Thread(target=read, daemon=True).start()
    answered.wait(timeout)
    return bool(seen)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        proc.terminate()
    for proc in started:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_workers_catalog_and_retrier_as_separate_services_take_an_import_and_an_upload(
        make_settings, services: list[subprocess.Popen], tmp_path: Path) -> None:
    settings = make_settings(data_dir=tmp_path / "volume" / "data")  # nothing there yet: the worker comes first
    env = _env(settings)
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(name: str) -> subprocess.Popen:
        with open(logs / f"{name}.log", "w") as log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen([sys.executable, "-m", "streams.cli", name], env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=log, text=True)
        services.append(proc)
        return proc

    worker = start("worker")
    assert _ready(worker, 60), f"worker not ready (exit {worker.poll()}): {(logs / 'worker.log').read_text()[-800:]}"
    start("catalog")
    start("retrier")

    folder = tmp_path / "import"
    folder.mkdir()
    for i in range(4):
        make_png(folder / f"render-{i}.png", size=(160, 120), seed=i)
    write_truncated(folder / "cut.png", folder / "render-0.png", keep=0.4)
    upload = make_png(tmp_path / "urgent.png", size=(200, 150), seed=99)

    ingested = _damflow(env, "ingest", str(folder), "--wait", "--json", "--timeout", "60")
    assert ingested.returncode == 0, ingested.stderr[-800:]
    progress = json.loads(ingested.stdout)["progress"]
    assert (progress["done"], progress["dead_lettered"], progress["known_total"]) == (4, 1, 5)

    uploaded = _damflow(env, "upload", str(upload), "--wait", "--json", "--timeout", "60")
    assert uploaded.returncode == 0, uploaded.stderr[-800:]
    assert json.loads(uploaded.stdout)[0]["state"] == "browsable"

    letters = _damflow(env, "dlq", "list", "--json")
    assert letters.returncode == 0, letters.stderr[-800:]
    assert [Path(letter["path"]).name for letter in json.loads(letters.stdout)] == ["cut.png"]
    status = _damflow(env, "status", "--json")
    assert status.returncode == 0, status.stderr[-800:]
    assert all(proc.poll() is None for proc in services), "a service exited"
