"""A small generated demo set, so ``damflow run`` shows the pipeline working on a fresh machine with no images.

The images look like a ComfyUI session's output: PNGs with ``prompt``/``workflow`` text chunks, plus a camera-like
JPEG with an EXIF orientation, one exact duplicate and one truncated file (to show a recorded failure).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, PngImagePlugin

_SUBJECTS = ["lighthouse at dusk", "neon koi pond", "brutalist library", "fox in snow", "desert observatory",
             "glass greenhouse", "rainy tram stop", "paper lantern festival"]


def comfy_like_png(path: Path, seed: int, size: tuple[int, int] = (1024, 1024), *, noise: int = 48) -> Path:
    """A deterministic ComfyUI-like PNG: gradient + shapes + noise (so it compresses like a real render),
    with API-format ``prompt`` and UI ``workflow`` JSON in tEXt chunks."""
    rng = random.Random(seed)
    w, h = size
    base = Image.linear_gradient("L").resize(size).convert("RGB")
    tint = Image.new("RGB", size, (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    img = Image.blend(base, tint, 0.6)
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        x1, y1 = x0 + rng.randrange(w // 8, w // 2), y0 + rng.randrange(h // 8, h // 2)
        draw.ellipse((x0, y0, x1, y1), fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    if noise:  # per-pixel grain, like a diffusion render: makes the PNG as large as real ones
        grain = Image.frombytes("L", size, rng.randbytes(w * h)).point(lambda v: v * noise // 255)
        img = ImageChops.add(img, Image.merge("RGB", (grain, grain, grain)))
    subject = _SUBJECTS[seed % len(_SUBJECTS)]
    prompt = {
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": 20, "cfg": 7.0, "sampler_name": "euler",
              "scheduler": "normal", "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0],
              "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": w, "height": h, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": f"a {subject}, cinematic light", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, low quality", "clip": ["4", 1]}},
    }
    workflow = {"last_node_id": 7, "nodes": [{"id": int(k), "type": v["class_type"]} for k, v in prompt.items()]}
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(prompt))
    info.add_text("workflow", json.dumps(workflow))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, pnginfo=info, compress_level=4)  # what ComfyUI's SaveImage uses
    return path


def make_demo_set(folder: Path, count: int = 24) -> Path:
    """Write the demo set into ``folder`` (idempotent: existing files are kept as they are)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        target = folder / "session-01" / f"ComfyUI_{i:05d}_.png"
        if not target.exists():
            comfy_like_png(target, seed=1000 + i, size=(768, 768))
    photo = folder / "camera" / "IMG_0001.jpg"
    if not photo.exists():
        photo.parent.mkdir(parents=True, exist_ok=True)
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: rotate 90° CW to display
        exif[0x010F] = "DemoCam"
        comfy_like_png(folder / ".tmp.png", seed=7, size=(640, 480), noise=0)
        with Image.open(folder / ".tmp.png") as im:
            im.convert("RGB").save(photo, quality=90, exif=exif)
        (folder / ".tmp.png").unlink()
    dup = folder / "session-01" / "copy-of-ComfyUI_00000_.png"
    if not dup.exists():
        dup.write_bytes((folder / "session-01" / "ComfyUI_00000_.png").read_bytes())
    broken = folder / "broken" / "truncated.png"
    if not broken.exists():
        broken.parent.mkdir(parents=True, exist_ok=True)
        data = (folder / "session-01" / "ComfyUI_00001_.png").read_bytes()
        broken.write_bytes(data[: len(data) // 3])
    (folder / "notes.txt").write_text("not an image: the scanner skips it\n")
    return folder
