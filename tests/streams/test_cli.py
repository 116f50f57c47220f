"""The command line's reports, without a broker: the pipeline calls they print are stood in for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# `damflow upload` with upload_files stood in for: argv[1] is a file name as bytes (hex), the rows are made here
_UPLOAD = """
import os, sys
import streams.cli as cli, streams.ingest as ingest
from streams.errors import UnsupportedFormat
from streams.ingest import UploadResult

async def upload_files(settings, topics, bootstrap, files, **kw):
    [good, bad] = files
    return [UploadResult(str(good), "ab" * 32, "e1", batch_id="upload-x"),
            UploadResult(str(bad), "", "", state="rejected", batch_id="upload-x",
                         reason=str(UnsupportedFormat("not a regular file (a FIFO)", path=str(bad))))]

ingest.upload_files = upload_files
cli.resolve_bootstrap = lambda settings: "unused:9092"
name = os.fsdecode(bytes.fromhex(sys.argv[1]))
sys.exit(cli.main(["upload", name, name + ".fifo"]))
"""


def test_an_upload_report_prints_a_name_that_is_not_utf8_under_a_strict_utf8_stdout(tmp_path: Path) -> None:
    name = os.fsencode(tmp_path) + b"/caf\xe9.png"
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict",  # stdout as under en_US.UTF-8 (C.UTF-8 escapes)
               DAMFLOW_DATA_DIR=str(tmp_path / "data"))
    done = subprocess.run([sys.executable, "-c", _UPLOAD, name.hex()], env=env, capture_output=True,
                          cwd=Path(__file__).parents[2], timeout=60)
    assert b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")[-2000:]
    assert done.returncode == 1  # a refused file, reported as such
    shown = os.fsdecode(tmp_path) + "/caf\\xe9.png"
    [published, rejected] = done.stdout.decode("utf-8").splitlines()
    assert published == f"{'ab' * 32}  {shown}"
    assert rejected.startswith(f"{'-':64s}  {shown}.fifo  REJECTED: not a regular file (a FIFO)")
    assert rejected.endswith(f"({shown}.fifo)")
