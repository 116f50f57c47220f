"""Tier 2 end to end: metadata read in the worker, indexed by the catalog, found by `damflow search`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.demo import comfy_like_png
from streams.ingest import ingest_folder
from streams.supervisor import Stack
from tests.images import make_jpeg, make_png
from tests.integration.conftest import catalog_of, wait_until

pytestmark = pytest.mark.integration

A1111 = ("a red fox in fresh snow, golden hour\nNegative prompt: blurry, lowres\n"
         "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 4242, Size: 320x240, "
         "Model hash: abc123, Model: foxXL_v2")


def damflow(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


async def test_generation_metadata_becomes_searchable(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "session"
    folder.mkdir()
    for i in range(3):
        comfy_like_png(folder / f"ComfyUI_{i:05d}_.png", seed=7 + i, size=(320, 320))
    make_png(folder / "fox.png", size=(320, 240), text={"parameters": A1111, "Comment": "from the winter series"},
             seed=3)
    make_jpeg(folder / "photo.jpg", size=(200, 150), exif_make="Canon", seed=4, comment="harbour lights at dusk")
    s = stack.settings

    result = await ingest_folder(s, stack.topics, stack.bootstrap, folder, wait=True, tier=2, timeout=90)

    assert result.progress.tier == 2 and result.progress.done == 5
    with catalog_of(s) as catalog:
        fox = catalog.search("fox snow")
        assert [r["path"] for r in fox] == [os.path.realpath(folder / "fox.png")]
        assert fox[0]["seed"] == 4242 and fox[0]["model"] == "foxXL_v2"
        assert len(catalog.search("model:sd_xl")) == 3  # the ComfyUI renders' checkpoint
        assert [r["seed"] for r in catalog.search("seed:8")] == [8]
        assert [Path(r["path"]).name for r in catalog.search("camera:canon")] == ["photo.jpg"]
        # comments a person or a tool left (a JPEG COM segment, a PNG Comment chunk beside a generator's text)
        assert [Path(r["path"]).name for r in catalog.search("harbour dusk")] == ["photo.jpg"]
        assert [Path(r["path"]).name for r in catalog.search("winter series")] == ["fox.png"]
        meta = catalog.asset(os.path.realpath(folder / "ComfyUI_00000_.png"))["metadata"]
    assert meta["generator"] == "comfyui" and meta["seed"] == 7 and meta["sampler"] == "euler"
    document = json.loads((s.data_path / meta["metadata_path"]).read_text())
    assert "workflow" in document["containers"]["text"]  # the raw chunk is kept verbatim

    env = dict(os.environ, DAMFLOW_BROKER_URL=stack.bootstrap, DAMFLOW_DATA_DIR=str(s.data_path),
               DAMFLOW_TOPIC_PREFIX=s.topic_prefix, DAMFLOW_GROUP_ID=s.group_id)
    found = damflow("search", "koi", "seed:9", "--json", env=env)  # seed 9 renders the koi pond
    assert found.returncode == 0, found.stderr
    assert [Path(r["path"]).name for r in json.loads(found.stdout)] == ["ComfyUI_00002_.png"]
    bad = damflow("search", "model:", env=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1

    # re-parse every asset with the current parser: tier 2 runs again, tier 1 does not
    with catalog_of(s) as catalog:
        indexed_before = {r["asset_id"]: r for r in (catalog.asset(a) for a in
                                                     [x["asset_id"] for x in catalog.search("format:png")])}
    again = damflow("reprocess", "--tier", "2", "--all", "--json", env=env)
    assert again.returncode == 0, again.stderr
    batch = json.loads(again.stdout)["batch_id"]

    def reprocessed():
        with catalog_of(s) as catalog:
            p = catalog.progress(batch, 2)
        return p if p and p.done == 5 and p.total_final and p.in_flight == 0 else None  # finished, not open

    await wait_until(reprocessed, what="tier-2 reprocess")
    with catalog_of(s) as catalog:
        p1 = catalog.progress(batch, 1)
    assert (p1.known_total, p1.in_flight, p1.total_final) == (0, 0, True)  # nothing of it passes tier 1
    with catalog_of(s) as catalog:
        for asset_id, before in indexed_before.items():
            after = catalog.asset(asset_id)
            assert after["browsable_at"] == before["browsable_at"]  # tier 1 untouched
            assert after["metadata"]["indexed_at"] > before["metadata"]["indexed_at"]
