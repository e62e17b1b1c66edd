"""Raster shards on disk and read back: sparse rows (what `raster_tensors` writes) against dense float32 .npy.

The peer is the format before: each shard's images and context windows as dense float32 `.npy` files,
memory-mapped. For each PBF, the default grid's rasters are made once (`pipeline.features` ->
`pipeline.raster_chunks`), written both ways, and read back the two ways training and checks read them:
a sequential pass (`ShardSet.chunks`, 512 images a block) and random batches (256 rows each, as a
training epoch draws them from shards too large to cache). Each read runs `--repeats` times and the best is
kept; the files are in the page cache for both formats (the disk is not timed). Every read is checked
equal between the formats.

    python bench/bench_raster_storage.py data/osm/*.osm.pbf /tmp/s2vec-tiles/liechtenstein-x16.osm.pbf
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from s2vec_core import pipeline, raster

BATCH = 256
DENSE_SHARD = 1024
"""Images per dense shard file, as the old format wrote them."""


@dataclasses.dataclass(frozen=True)
class DenseShards:
    """The peer: dense float32 shards, memory-mapped, read as the old `ShardSet` did."""

    images: tuple[np.ndarray, ...]
    contexts: tuple[np.ndarray, ...]
    shard_size: int

    def take(self, arrays: tuple[np.ndarray, ...], rows: np.ndarray) -> np.ndarray:
        out = np.empty((rows.size, *arrays[0].shape[1:]), np.float32)
        shard = rows // self.shard_size
        for s in np.unique(shard):
            sel = np.flatnonzero(shard == s)
            local = rows[sel] % self.shard_size
            order = np.argsort(local, kind="stable")
            lo, hi = int(local[order[0]]), int(local[order[-1]]) + 1
            if hi - lo == local.size:  # a plain file read, as the old `_read_rows`
                array = arrays[s]
                with open(array.filename, "rb") as f:
                    f.seek(array.offset + lo * array[0].nbytes)
                    block = np.fromfile(f, np.float32, (hi - lo) * array[0].size)
                out[sel[order]] = block.reshape(hi - lo, *array.shape[1:])
            else:
                out[sel[order]] = arrays[s][local[order]]
        return out


def write_dense(shards: raster.ShardSet, directory: Path) -> DenseShards:
    images, contexts = [], []
    for n, start in enumerate(range(0, len(shards), DENSE_SHARD)):
        rows = np.arange(start, min(start + DENSE_SHARD, len(shards)))
        for take, name, out in ((shards.take, "shard", images), (shards.take_context, "context", contexts)):
            path = directory / f"{name}-{n:05d}.npy"
            np.save(path, take(rows))
            out.append(np.load(path, mmap_mode="r"))
    return DenseShards(tuple(images), tuple(contexts), DENSE_SHARD)


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(pbf: Path, repeats: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="s2vec-bench-storage-") as tmp:
        rows = pipeline.features(pbf, "bench")
        pipeline.write_rasters(pipeline.raster_chunks(rows), Path(tmp) / "sparse", "bench")
        del rows
        sparse = raster.open_shards(Path(tmp) / "sparse")
        (Path(tmp) / "dense").mkdir()
        dense = write_dense(sparse, Path(tmp) / "dense")
        n = len(sparse)
        batches = np.random.default_rng(0).permutation(n)
        batches = [batches[i : i + BATCH] for i in range(0, n, BATCH)]

        def sequential_sparse():
            for _ in sparse.chunks():
                pass
            for _ in sparse.chunks(context=True):
                pass

        def sequential_dense():
            for start in range(0, n, raster.READ_ROWS):
                rows = np.arange(start, min(start + raster.READ_ROWS, n))
                dense.take(dense.images, rows)
                dense.take(dense.contexts, rows)

        def random_sparse():
            for rows in batches:
                sparse.take(rows)
                sparse.take_context(rows)

        def random_dense():
            for rows in batches:
                dense.take(dense.images, rows)
                dense.take(dense.contexts, rows)

        for rows in (batches[0], np.arange(min(n, 700))):
            np.testing.assert_array_equal(sparse.take(rows), dense.take(dense.images, rows))
            np.testing.assert_array_equal(sparse.take_context(rows), dense.take(dense.contexts, rows))
        size = {
            way: sum(f.stat().st_size for f in (Path(tmp) / way).glob("*.npy")) for way in ("sparse", "dense")
        }
        return {
            "input": pbf.name,
            "images": n,
            "nonzero image / context values": "{:.2%} / {:.2%}".format(
                *(
                    sum(s.values.size for s in arrays) / (n * np.prod(arrays[0].shape))
                    for arrays in (sparse.shards, sparse.contexts)
                )
            ),
            "dense KB/image": size["dense"] / n / 1e3,
            "sparse KB/image": size["sparse"] / n / 1e3,
            "disk, dense / sparse": size["dense"] / size["sparse"],
            "sequential images/s, sparse": n / best_of(repeats, sequential_sparse),
            "sequential images/s, dense": n / best_of(repeats, sequential_dense),
            "random images/s, sparse": n / best_of(repeats, random_sparse),
            "random images/s, dense": n / best_of(repeats, random_dense),
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("pbfs", nargs="+", type=Path)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    results = [measure(pbf, args.repeats) for pbf in args.pbfs]
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; default grid "
        f"{pipeline.DEFAULT_GRID}; batches of {BATCH} random rows, sequential blocks of {raster.READ_ROWS}\n"
    )
    keys = list(results[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in results:
        cells = [
            f"{v:,.1f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else v for v in r.values()
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
