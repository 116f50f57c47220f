"""Search latency: ``Catalog.search`` over 100,000 synthetic indexed assets.

The catalog is built the way the catalog sink builds it — ``Catalog.apply`` in transactions of ``--batch``
events, one ``AssetBrowsable`` and one ``AssetIndexed`` per asset — from a seeded generator: ComfyUI/A1111-style
prompts (quality tags, subjects, lighting, styles, artists, Zipf-weighted, plus a long tail of rare words),
20 models, LoRAs, 14 samplers, 7 schedulers, 64-bit seeds, and one asset in ten a camera photo with make, model,
lens and a caption. Then a mixed set of queries (single common and rare words, phrases, prefixes, every field
filter, combinations, exclusions, common words with a format or scheduler few or no assets have) runs once to
warm the page cache and once timed, end to end through ``Catalog.search`` (compile, execute, rows to dicts).

    python bench/search_latency.py [--assets 100000] [--batch 1000] [--seed 7]

Prints the build time, a table per query kind and one JSON line (prefixed ``BENCH_JSON``). Target: p95 ≤ 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consumers.catalog import Catalog  # noqa: E402
from schemas.events import AssetBrowsable, AssetIndexed  # noqa: E402

QUALITY = ["masterpiece", "best quality", "high quality", "ultra detailed", "highly detailed", "8k", "absurdres",
           "photorealistic", "sharp focus", "intricate details", "hdr", "award winning"]
SUBJECTS = ["1girl", "1boy", "woman", "old man", "portrait", "lighthouse", "castle", "dragon", "cat", "fox", "wolf",
            "astronaut", "samurai", "knight", "witch", "robot", "cyborg", "mermaid", "city skyline", "forest",
            "mountain", "ocean", "waterfall", "desert", "village", "spaceship", "sports car", "motorcycle",
            "flower field", "ancient tree", "owl", "tiger", "horse", "butterfly", "cottage", "temple", "bridge",
            "street market", "library", "garden", "island", "volcano", "glacier", "canyon", "river", "train station",
            "airship", "lantern", "shrine", "harbor"]
DETAILS = ["long hair", "short hair", "blue eyes", "red dress", "armor", "kimono", "hoodie", "smile",
           "looking at viewer", "standing", "sitting", "from above", "from below", "close-up", "full body",
           "upper body", "wide shot", "dynamic pose", "detailed face", "reflections", "puddles", "crowd"]
LIGHTING = ["golden hour", "sunset", "sunrise", "volumetric lighting", "cinematic lighting", "rim light",
            "soft light", "dramatic lighting", "neon lights", "moonlight", "studio lighting", "god rays",
            "backlighting", "bioluminescence", "candlelight", "light rays", "lightning"]
STYLES = ["oil painting", "watercolor", "digital art", "concept art", "anime", "manga", "pixel art", "3d render",
          "octane render", "unreal engine", "cyberpunk", "steampunk", "art nouveau", "ukiyo-e", "impressionism",
          "surrealism", "film grain", "analog photo", "35mm", "bokeh", "depth of field", "studio ghibli style",
          "low poly", "isometric", "vaporwave", "synthwave", "dark fantasy", "high fantasy", "sci-fi", "film noir"]
ARTISTS = ["by greg rutkowski", "by alphonse mucha", "by artgerm", "by wlop", "by makoto shinkai",
           "by hayao miyazaki", "by james gurney", "by simon stalenhag", "by moebius", "by zdzislaw beksinski",
           "by rembrandt", "by claude monet", "by hokusai", "by syd mead", "by craig mullins"]
MOODS = ["intricate", "ornate", "ethereal", "epic", "cozy", "mysterious", "serene", "majestic", "ancient",
         "futuristic", "abandoned", "overgrown", "floating", "glowing", "crystal", "mechanical", "gothic", "baroque",
         "minimalist", "rain", "snow", "fog", "storm", "night", "starry sky", "aurora", "pastel colors",
         "vibrant colors", "muted colors", "monochrome", "teal and orange", "café terrace"]
NEGATIVES = [("lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, cropped, worst quality, "
              "low quality, jpeg artifacts, signature, watermark, username, blurry"),
             "blurry, deformed, ugly, disfigured, watermark", "(worst quality:1.4), (low quality:1.4), monochrome",
             "nsfw, lowres, bad anatomy, extra limbs", "cartoon, painting, illustration, 3d, render",
             "embedding:EasyNegative, embedding:badhandv4", "", "out of frame, duplicate, morbid, mutilated"]
MODELS = ["sd_xl_base_1.0.safetensors", "juggernautXL_v9Rundiffusionphoto2.safetensors",
          "dreamshaperXL_lightningDPMSDE.safetensors", "realisticVisionV60B1_v51VAE.safetensors",
          "ponyDiffusionV6XL_v6StartWithThisOne.safetensors", "animagineXLV31_v31.safetensors",
          "epicrealism_naturalSinRC1VAE.safetensors", "v1-5-pruned-emaonly.safetensors", "flux1-dev-fp8.safetensors",
          "flux1-schnell.safetensors", "sd3.5_large.safetensors", "revAnimated_v122.safetensors",
          "deliberate_v3.safetensors", "absolutereality_v181.safetensors", "counterfeitV30_v30.safetensors",
          "zavychromaxl_v80.safetensors", "albedobaseXL_v21.safetensors", "RealVisXL_V4.0.safetensors",
          "copaxTimelessxl_v12.safetensors", "proteus_v06.safetensors"]
LORAS = ["add_detail", "lcm-lora-sdxl", "detail_tweaker_xl", "more_details", "epi_noiseoffset2", "LowRA",
         "film_grain_xl", "pixel-art-xl", "ghibli_style_offset", "sdxl_lightning_4step_lora", "Hyper-SDXL-8steps-lora",
         "neon_palette", "watercolor_v1", "cyberpunk_style_v3", "papercut_sdxl", "ral-dissolve", "xl_more_art-full",
         "aesthetic_anime_v1s", "ClayAnimationRedmond", "LogoRedmond"]
SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_sde", "ddim", "uni_pc",
            "heun", "lms", "DPM++ 2M Karras", "Euler a", "DPM++ SDE Karras", "lcm"]
SCHEDULERS = ["normal", "karras", "exponential", "sgm_uniform", "simple", "beta", "ddim_uniform"]
GENERATORS = ["comfyui"] * 10 + ["a1111"] * 4 + ["forge"] * 2 + ["invokeai", "fooocus", "novelai", "swarmui"]
CAMERAS = [("Canon", "Canon EOS R5", "RF24-70mm F2.8 L IS USM"), ("NIKON CORPORATION", "NIKON Z 6_2",
           "NIKKOR Z 24-70mm f/4 S"), ("SONY", "ILCE-7M4", "FE 24-105mm F4 G OSS"),
           ("FUJIFILM", "X-T5", "XF16-55mmF2.8 R LM WR"), ("Apple", "iPhone 15 Pro", "iPhone 15 Pro back camera"),
           ("Google", "Pixel 8", ""), ("OLYMPUS CORPORATION", "E-M1MarkIII", "M.12-40mm F2.8"),
           ("LEICA CAMERA AG", "LEICA Q2", "SUMMILUX 1:1.7/28 ASPH."), ("Panasonic", "DC-S5M2", "LUMIX S 20-60"),
           ("RICOH IMAGING COMPANY, LTD.", "RICOH GR III", "")]
PLACES = ["Lisbon", "Kyoto", "Reykjavik", "the Dolomites", "Patagonia", "Marrakesh", "Hallstatt", "Big Sur",
          "the Scottish Highlands", "Hanoi", "Cappadocia", "Bergen", "Tasmania", "Porto", "Lofoten"]
SYLLABLES = ["zo", "ra", "quel", "mir", "than", "vex", "lu", "dor", "kai", "sen", "bri", "ost", "ny", "fa", "gul",
             "tre", "wyn", "ix", "pa", "lor"]
T0 = 1_700_000_000.0


def _zipf_pool(words: list[str], s: float = 0.9) -> tuple[list[str], list[float]]:
    return words, [1 / (rank + 1) ** s for rank in range(len(words))]


class Corpus:
    """Seeded synthetic asset summaries; the same ``seed`` gives the same catalog and the same queries."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        rng = self.rng
        tags = QUALITY + SUBJECTS + DETAILS + LIGHTING + STYLES + ARTISTS + MOODS
        rng.shuffle(tags)
        self.tags, self.tag_weights = _zipf_pool(tags)
        self.rare = sorted({"".join(rng.choice(SYLLABLES) for _ in range(3)) for _ in range(3000)})
        self.seeds: list[int] = []
        self.files: list[str] = []

    def prompt(self) -> str:
        rng = self.rng
        parts = rng.choices(self.tags, self.tag_weights, k=rng.randint(8, 24))
        parts = list(dict.fromkeys(parts))
        if rng.random() < 0.3:
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(self.rare))
        if rng.random() < 0.2:
            i = rng.randrange(len(parts))
            parts[i] = f"({parts[i]}:{rng.choice(['1.1', '1.2', '1.3', '1.4'])})"
        return ", ".join(parts)

    def events(self, n: int) -> Iterator[tuple[AssetBrowsable, AssetIndexed]]:
        rng = self.rng
        for i in range(n):
            asset_id = rng.randbytes(32).hex()
            batch = f"bench-{i // 5000:03d}"
            photo = rng.random() < 0.1
            name = f"IMG_{i:06d}.JPG" if photo else f"ComfyUI_{i:06d}_.png"
            path = f"/library/{batch}/{name}"
            at = T0 + i * 0.01
            browsable = AssetBrowsable(
                event_id=f"e{i}", batch_id=batch, lane="batch", source="scan", asset_id=asset_id, path=path,
                size=rng.randint(800_000, 2_000_000), mtime_ns=i, format="JPEG" if photo else rng.choice(
                    ["PNG"] * 8 + ["WEBP"]), width=1024, height=1024 if not photo else 768,
                thumbnails={"256": f"thumbs/{asset_id[:2]}/{asset_id}.256.webp"}, discovered_at=at,
                browsable_at=at + 0.05)
            common = {"event_id": f"e{i}", "batch_id": batch, "lane": "batch", "source": "scan",
                      "asset_id": asset_id, "path": path, "parser_version": 1,
                      "metadata_path": f"metadata/{asset_id[:2]}/{asset_id}.v1.json", "indexed_at": at + 0.1}
            if photo:
                make, model, lens = rng.choice(CAMERAS)
                camera = {"make": make, "model": model, "datetime_original": "2024:06:01 18:30:00",
                          "description": f"{rng.choice(SUBJECTS)} in {rng.choice(PLACES)} at "
                                         f"{rng.choice(LIGHTING)}",
                          "keywords": ", ".join(rng.sample(["travel", "landscape", "street", "portrait", "family",
                                                            "holiday", "architecture", "nature"], 3))}
                if lens:
                    camera["lens"] = lens
                indexed = AssetIndexed(**common, camera=camera, gps=(rng.uniform(-60, 70), rng.uniform(-180, 180)))
            else:
                seed = rng.randrange(1 << 64) if rng.random() < 0.9 else rng.randrange(1000)
                self.seeds.append(seed)
                indexed = AssetIndexed(
                    **common, generator=rng.choice(GENERATORS), model=rng.choice(MODELS),
                    loras=rng.sample(LORAS, rng.choice([0, 0, 1, 1, 2, 3])), seed=seed, steps=rng.randint(4, 50),
                    cfg=rng.choice([1.0, 3.5, 5.0, 6.0, 7.0, 7.5, 8.0]), sampler=rng.choice(SAMPLERS),
                    scheduler=rng.choice(SCHEDULERS), denoise=1.0, positive=self.prompt(),
                    negative=rng.choice(NEGATIVES))
            if i % 97 == 0:
                self.files.append(name)
            yield browsable, indexed

    def queries(self, n: int) -> list[tuple[str, str]]:
        """About ``n`` distinct ``(kind, query)`` pairs, every kind represented."""
        rng = self.rng
        weight: dict[str, float] = defaultdict(float)
        for tag, w in zip(self.tags, self.tag_weights, strict=True):
            for word in tag.split():
                if len(word) > 2 and word.isalpha() and word not in ("and", "the", "from"):
                    weight[word] += w
        words = sorted(weight)
        by_weight = sorted(words, key=weight.__getitem__, reverse=True)
        common, rare_tags = by_weight[:25], by_weight[-40:]
        phrases = [t for t in self.tags if " " in t]
        makers = {
            "word, common": lambda: rng.choice(common),
            "word, rare": lambda: rng.choice(self.rare + rare_tags),
            "words (2-4)": lambda: " ".join(rng.sample(words, rng.randint(2, 4))),
            "phrase": lambda: f'"{rng.choice(phrases)}"',
            "prefix": lambda: rng.choice([f"{w[:rng.randint(3, 5)]}*" for w in words] + [w[:4] for w in words]),
            "model:": lambda: f"model:{rng.choice(MODELS).split('_')[0].split('.')[0][:rng.randint(4, 10)]}",
            "seed:": lambda: f"seed:{rng.choice(self.seeds)}",
            "sampler:": lambda: f"sampler:{rng.choice(SAMPLERS).split()[0].lower()}",
            "camera:": lambda: f"camera:{rng.choice(CAMERAS)[rng.randint(0, 1)].split()[0].lower()}",
            "file:": lambda: f"file:{rng.choice(self.files).rsplit('.', 1)[0]}",
            "lora:/scheduler:/format:/generator:/negative:": lambda: rng.choice([
                f"lora:{rng.choice(LORAS)}", f"scheduler:{rng.choice(SCHEDULERS)}",
                f"format:{rng.choice(['png', 'jpg', 'webp'])}", f"generator:{rng.choice(GENERATORS)}",
                f"negative:{rng.choice(['watermark', 'bad hands', 'easynegative', 'extra limbs'])}"]),
            "combination": lambda: rng.choice([
                f"{rng.choice(words)} model:{rng.choice(MODELS)[:6]} sampler:{rng.choice(SAMPLERS).split()[0]}",
                f'"{rng.choice(phrases)}" {rng.choice(words)} -{rng.choice(words)}',
                f"{rng.choice(words)} camera:{rng.choice(CAMERAS)[0].split()[0].lower()}",
                f"{rng.choice(words)} seed:{rng.choice(self.seeds)}",
                f"{rng.choice(words)} {rng.choice(words)} scheduler:karras format:png",
                f"{rng.choice(words)} lora:{rng.choice(LORAS)} -model:flux",
                f'prompt:"{rng.choice(phrases)}" negative:watermark',
                f"{rng.choice(common)} {rng.choice(self.rare)}"]),
            "exclusion": lambda: f"{rng.choice(words)} -{rng.choice(words)} -{rng.choice(common)}",
            # a common word in a format few assets have (photos are JPEG) or none has; a scheduler none used
            "word + rare filter": lambda: rng.choice([
                f"{rng.choice(common)} format:{rng.choice(['jpg', 'gif', 'tiff'])}",
                f"{rng.choice(common)} scheduler:{rng.choice(['zzz', 'align_your_steps'])}",
                f"format:{rng.choice(['gif', 'tiff', 'heic'])}"]),
        }
        per_kind = max(1, n // len(makers))
        out: list[tuple[str, str]] = []
        for kind, make in makers.items():
            seen: set[str] = set()
            for _ in range(50 * per_kind):  # distinct queries where the kind has enough of them
                if len(seen) == per_kind:
                    break
                query = make()
                if query not in seen:
                    seen.add(query)
                    out.append((kind, query))
        return out


def build(catalog: Catalog, corpus: Corpus, n: int, batch: int) -> float:
    t0 = time.perf_counter()
    pending: list = []
    for browsable, indexed in corpus.events(n):
        pending += (browsable, indexed)
        if len(pending) >= batch:
            catalog.apply(pending)
            pending = []
    if pending:
        catalog.apply(pending)
    return time.perf_counter() - t0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1000, help="events per Catalog.apply transaction")
    ap.add_argument("--queries", type=int, default=260)
    ap.add_argument("--limit", type=int, default=50, help="results per query")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--reuse", type=Path, help="keep the catalog at this path and reuse it when it exists "
                    "(same --assets and --seed), to iterate on queries without rebuilding")
    args = ap.parse_args()
    corpus = Corpus(args.seed)
    with tempfile.TemporaryDirectory(prefix="damflow-search-bench-") as tmp:
        path = args.reuse or Path(tmp) / "catalog.sqlite"
        reused = path.exists()
        with Catalog(path) as catalog:
            if reused:
                for _ in corpus.events(args.assets):  # the same generator state, for the same queries
                    pass
                build_s = 0.0
                print(f"reusing {path}", flush=True)
            else:
                print(f"building a catalog of {args.assets:,} indexed assets "
                      f"({2 * args.assets:,} events, Catalog.apply per {args.batch}) …", flush=True)
                build_s = build(catalog, corpus, args.assets, args.batch)
            size_mb = sum(f.stat().st_size for f in path.parent.glob(path.name + "*")) / 1e6
            if build_s:
                print(f"built in {build_s:.1f} s ({2 * args.assets / build_s:,.0f} events/s), {size_mb:.0f} MB",
                      flush=True)
            assert catalog.counts()["indexed"] == args.assets
            queries = corpus.queries(args.queries)
            for _, query in queries:  # warm the page cache: the timed pass is a catalog in use, not a cold one
                catalog.search(query, limit=args.limit)
            timings: dict[str, list[float]] = defaultdict(list)
            hits: dict[str, list[int]] = defaultdict(list)
            slowest: list[tuple[float, str]] = []
            for kind, query in queries:
                t0 = time.perf_counter()
                rows = catalog.search(query, limit=args.limit)
                ms = (time.perf_counter() - t0) * 1000
                timings[kind].append(ms)
                hits[kind].append(len(rows))
                slowest.append((ms, query))
    every = [ms for values in timings.values() for ms in values]
    figures = {f"p{q}": percentile(every, q) for q in (50, 95, 99)}
    figures["max"] = max(every)
    print(f"\nsearch latency, {len(every)} queries over {args.assets:,} indexed assets, limit {args.limit}, "
          f"{len(os.sched_getaffinity(0))} cores")
    print(f"{'kind':46s} {'n':>4s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s} {'hits':>6s}")
    for kind, values in timings.items():
        print(f"{kind:46s} {len(values):4d} {statistics.median(values):8.2f} {percentile(values, 95):8.2f} "
              f"{max(values):8.2f} {statistics.mean(hits[kind]):6.1f}")
    print(f"{'all':46s} {len(every):4d} {figures['p50']:8.2f} {figures['p95']:8.2f} {figures['max']:8.2f}")
    print(f"p50 {figures['p50']:.2f} ms · p95 {figures['p95']:.2f} ms · p99 {figures['p99']:.2f} ms · "
          f"max {figures['max']:.2f} ms (target p95 ≤ 50 ms)")
    print("slowest: " + " · ".join(f"{q!r} {ms:.1f} ms" for ms, q in sorted(slowest, reverse=True)[:5]))
    print("BENCH_JSON " + json.dumps({
        "bench": "search_latency", "assets": args.assets, "queries": len(every), "limit": args.limit,
        "build_s": round(build_s, 2), "db_mb": round(size_mb, 1),
        **{f"{k}_ms": round(v, 2) for k, v in figures.items()}, "target_p95_ms": 50,
        "by_kind": {kind: {"n": len(v), "p50_ms": round(statistics.median(v), 2),
                           "p95_ms": round(percentile(v, 95), 2)} for kind, v in timings.items()},
    }))


if __name__ == "__main__":
    main()
