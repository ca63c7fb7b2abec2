"""Load test of ``histoguard serve`` on loopback, side by side with openslide-python's
DeepZoomGenerator behind a minimal Starlette app.

Each server runs in its own process (uvicorn, 127.0.0.1, a free port); the client is httpx with
8 concurrent connections. Per slide, the tile set is every 254-px (+1 overlap, so up to 256 px)
JPEG tile of the two finest DeepZoom levels. Each server first gets every tile of the set once
(the cold pass: nothing cached yet), then 2,000 requests drawn at random from the set (seeded)
in 4 blocks of 500, the servers' blocks interleaved, timed per request: that is the warm pass.
``histoguard`` runs twice: with its tile cache (the default) and with ``--cache-mb 0``, which
reads and encodes every tile as the cold pass does. Bounded: a fixed number of requests, a
timeout on each, loopback only.

    python benchmarks/bench_serve.py            # both real slides of the shared data
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared_data import SHARED_DATA

SLIDES = ("tcga-cr-7395-01a-01-ts1.svs", "CMU-1-Small-Region.svs")
TILE, OVERLAP, QUALITY = 254, 1, 80
CLIENTS, REQUESTS, BLOCKS = 8, 2000, 4
SERVERS = ("histoguard", "histoguard-nocache", "openslide")


def _openslide_app(slide_dir: Path):  # type: ignore[no-untyped-def]
    """The reference: DeepZoomGenerator per slide, JPEG at the same quality, sync endpoint
    (Starlette runs it in its thread pool)."""
    import io

    import openslide
    from openslide.deepzoom import DeepZoomGenerator
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    zooms = {
        p.stem: DeepZoomGenerator(openslide.OpenSlide(p), TILE, OVERLAP, limit_bounds=False)
        for p in (slide_dir / name for name in SLIDES)
    }

    def tile(request):  # type: ignore[no-untyped-def]
        params = request.path_params
        zoom = zooms[params["slide"]]
        image = zoom.get_tile(int(params["level"]), (int(params["col"]), int(params["row"])))
        buffer = io.BytesIO()
        image.save(buffer, "jpeg", quality=QUALITY)
        return Response(buffer.getvalue(), media_type="image/jpeg")

    return Starlette(routes=[Route("/slides/{slide}_files/{level}/{col}_{row}.jpeg", tile)])


def _run_server(kind: str, port: int, slide_dir: Path) -> None:
    import uvicorn

    if kind == "openslide":
        app = _openslide_app(slide_dir)
    else:
        from histoguard.serve import ServeConfig, create_app

        cache = 0 if kind == "histoguard-nocache" else 256
        app = create_app(
            ServeConfig(slide_dirs=(slide_dir,), tile_size=TILE, overlap=OVERLAP,
                        jpeg_quality=QUALITY, tile_cache_mb=cache)
        )  # fmt: skip
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(kind: str, slide_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--serve", kind, str(port), str(slide_dir)]
    process = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{kind} did not start")


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    wall_s: float = 0.0


async def _fetch_all(url: str, paths: list[str], tally: Tally) -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for path in paths:
        queue.put_nowait(path)
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                path = queue.get_nowait()
                start = time.perf_counter()
                try:
                    response = await client.get(path)
                    status = response.status_code
                except httpx.HTTPError:
                    status = 599  # counted as a server failure
                tally.latencies_ms.append((time.perf_counter() - start) * 1000)
                tally.statuses.append(status)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
        tally.wall_s += time.perf_counter() - start


def _tile_paths(stem: str, width: int, height: int) -> list[str]:
    max_level = math.ceil(math.log2(max(width, height)))
    paths = []
    for level in (max_level, max_level - 1):
        scale = 2 ** (max_level - level)
        cols = math.ceil(math.ceil(width / scale) / TILE)
        rows = math.ceil(math.ceil(height / scale) / TILE)
        paths += [
            f"/slides/{stem}_files/{level}/{c}_{r}.jpeg" for r in range(rows) for c in range(cols)
        ]
    return paths


def _row(name: str, tally: Tally) -> dict[str, float]:
    lat = np.asarray(tally.latencies_ms)
    return {
        "n": len(lat), "5xx": sum(s >= 500 for s in tally.statuses),
        "4xx": sum(400 <= s < 500 for s in tally.statuses),
        "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
        "tiles_s": len(lat) / tally.wall_s,
    }  # fmt: skip


def bench(slide_dir: Path, seed: int = 0) -> None:
    import openslide

    servers = {kind: _start(kind, slide_dir) for kind in SERVERS}
    try:
        for name in SLIDES:
            stem = Path(name).stem
            with openslide.OpenSlide(slide_dir / name) as slide:
                width, height = slide.dimensions
            tiles = _tile_paths(stem, width, height)
            draws = random.Random(seed).choices(tiles, k=REQUESTS)
            cold = {kind: Tally() for kind in SERVERS}
            warm = {kind: Tally() for kind in SERVERS}
            for kind in SERVERS:
                asyncio.run(_fetch_all(servers[kind][1], tiles, cold[kind]))
            size = REQUESTS // BLOCKS
            for block in range(BLOCKS):
                for kind in SERVERS:
                    part = draws[block * size : (block + 1) * size]
                    asyncio.run(_fetch_all(servers[kind][1], part, warm[kind]))
            print(f"\n{name}: {width}x{height}, {len(tiles)} distinct tiles (two finest levels), "
                  f"{CLIENTS} clients")  # fmt: skip
            print(f"{'server':<20}{'pass':<6}{'n':>6}{'5xx':>5}{'4xx':>5}{'p50 ms':>9}"
                  f"{'p95 ms':>9}{'tiles/s':>9}")  # fmt: skip
            rows = {}
            for kind in SERVERS:
                for label, tally in (("cold", cold[kind]), ("warm", warm[kind])):
                    r = _row(kind, tally)
                    rows[kind, label] = r
                    print(f"{kind:<20}{label:<6}{r['n']:>6}{r['5xx']:>5}{r['4xx']:>5}"
                          f"{r['p50']:>9.1f}{r['p95']:>9.1f}{r['tiles_s']:>9.0f}")  # fmt: skip
            for kind in ("histoguard", "histoguard-nocache"):
                for label in ("cold", "warm"):
                    ratio = rows[kind, label]["tiles_s"] / rows["openslide", label]["tiles_s"]
                    print(f"tiles/s ratio {kind} / openslide, {label}: {ratio:.2f}x")
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", nargs=3, metavar=("KIND", "PORT", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--slides", type=Path, default=SHARED_DATA / "wsi")
    args = parser.parse_args()
    if args.serve:
        kind, port, folder = args.serve
        _run_server(kind, int(port), Path(folder))
        return
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")  # fmt: skip
    bench(args.slides)


if __name__ == "__main__":
    main()
