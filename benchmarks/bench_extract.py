"""Feature-extraction pipeline efficiency: end-to-end tiles/s over the encoder's own tiles/s.

For each encoder, in the same run:
- encoder only: tiles already decoded and in memory, ``Encoder.encode`` on batches of the same
  size as the pipeline uses;
- pipeline: ``extract_slide`` on the real slide, reusing its tiling output (reading, decoding,
  preprocessing, encoding and the verified write all included).
Both use the same warmed-up encoder; medians of ``--repeats`` interleaved runs. The ratio is
pipeline / encoder-only; 1.0 means the encoder never waited for tiles. Then the
local Dask path with 2 workers on several copies of the slide.

    python benchmarks/bench_extract.py [--slide PATH] [--encoders hg-cnn hg-d4]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _shared_data import TCGA_SLIDE
from histoguard.encoders import Encoder, load_encoder
from histoguard.features import ExtractionConfig, extract_features, extract_slide
from histoguard.slide import TilingConfig, open_slide, read_coords_file, read_tiles, tile_slides
from histoguard.slide._tiling import TileSpec


def encoder_only_rate(encoder: Encoder, tiles: np.ndarray, batch_size: int) -> float:
    """Tiles/s of the encoder alone on in-memory tiles."""
    started = time.perf_counter()
    for i in range(0, len(tiles), batch_size):
        encoder.encode(tiles[i : i + batch_size])
    return len(tiles) / (time.perf_counter() - started)


def vit_small(directory: Path) -> Path:
    """A randomly initialised ViT-S/16 saved as a local transformers model directory: the cost
    class of a small pathology foundation model, with nothing downloaded."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                       intermediate_size=1536, image_size=224, patch_size=16)  # fmt: skip
    ViTModel(config, add_pooling_layer=False).save_pretrained(directory, safe_serialization=True)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slide", type=Path, default=TCGA_SLIDE)
    parser.add_argument("--mpp-override", type=float, default=0.25)
    parser.add_argument("--mpp", type=float, default=0.25)
    parser.add_argument("--encoders", nargs="+", default=["hg-cnn", "hg-d4"])
    parser.add_argument(
        "--weights", type=Path, default=None, help="for a single encoder needing weights"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--dask-copies", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--no-vit",
        action="store_true",
        help="skip the randomly initialised ViT-S/16 (transformers)",
    )
    args = parser.parse_args()

    print(
        f"slide {args.slide.name}, {args.mpp} µm/px, 224 px; "
        f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); batch {args.batch_size}, "
        f"{args.readers} reader processes"
    )
    tiling = TilingConfig(mpp=args.mpp, tile_size=224, mpp_override=args.mpp_override)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tile_slides([args.slide], tmp / "tiles", tiling, progress=False)
        tiles_file = read_coords_file(tmp / "tiles" / f"{args.slide.stem}.h5")
        spec = TileSpec.from_attrs(tiles_file.attrs)
        with open_slide(args.slide, mpp_override=args.mpp_override) as slide:
            reads = sorted(read_tiles(slide, spec, tiles_file.coords), key=lambda r: r.index)
        tiles = np.stack([r.tile for r in reads if r.tile is not None])
        print(
            f"{'encoder':<16} {'tiles':>6} {'encoder-only tiles/s':>21} "
            f"{'pipeline tiles/s':>17} {'ratio':>6}"
        )
        runs: list[tuple[str, str, Path | None]] = [(n, n, args.weights) for n in args.encoders]
        if not args.no_vit:
            runs.append(("ViT-S/16 (hf)", "hf-auto", vit_small(tmp / "vit-s")))
        for label, name, weights in runs:
            encoder = load_encoder(name, weights=weights)
            encoder.encode(tiles[: args.batch_size])  # warm-up, excluded from both measures
            config = ExtractionConfig(
                encoder=name, weights=weights, tiling=tiling, tiles_dir=tmp / "tiles",
                batch_size=args.batch_size, readers=args.readers,
            )  # fmt: skip
            alone, pipeline = [], []
            for repeat in range(args.repeats):  # interleaved, so drifts hit both alike
                alone.append(encoder_only_rate(encoder, tiles, args.batch_size))
                started = time.perf_counter()
                out = tmp / f"features-{len(label)}-{repeat}"
                result = extract_slide(args.slide, out, config, encoder=encoder)
                pipeline.append(result.n_tiles / (time.perf_counter() - started))
            alone_rate, pipeline_rate = statistics.median(alone), statistics.median(pipeline)
            print(
                f"{label:<16} {len(tiles):>6} {alone_rate:>21.1f} "
                f"{pipeline_rate:>17.1f} {pipeline_rate / alone_rate:>6.2f}"
            )

        if not args.dask_copies:
            return
        copies = []
        for i in range(args.dask_copies):
            copies.append(tmp / "copies" / f"copy{i}{args.slide.suffix}")
            copies[-1].parent.mkdir(exist_ok=True)
            shutil.copy(args.slide, copies[-1])
        name = args.encoders[0]
        config = ExtractionConfig(
            encoder=name, weights=args.weights, tiling=tiling, batch_size=args.batch_size
        )
        started = time.perf_counter()
        report = extract_features(copies, tmp / "dask", config, dask_workers=2, progress=False)
        wall = time.perf_counter() - started
        n_tiles = sum(r.n_tiles for r in report.results)
        busy = sum(r.seconds for r in report.results)
        print(
            f"dask, 2 local workers, {name}: {len(copies)} slides, {n_tiles} tiles in {wall:.1f} s "
            f"= {n_tiles / wall:.1f} tiles/s including cluster start-up and on-the-fly tiling "
            f"({n_tiles / busy * 2:.1f} tiles/s over task time)"
        )


if __name__ == "__main__":
    main()
