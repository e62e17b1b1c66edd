"""Raster tensors: children at their true S2 face (i, j) position, normalisation, memory-mapped shards."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import polars as pl
import pytest
import s2sphere
import torch

from s2vec_core import s2, warehouse
from s2vec_core.raster import (
    NormStats,
    RasterError,
    open_shards,
    rasterize,
    rasterize_by_range,
    rasterize_chunks,
    write_shards,
)

IMAGE_LEVEL, PIXEL_LEVEL = 10, 13
K = PIXEL_LEVEL - IMAGE_LEVEL
SIZE = 1 << K
# (face, I, J) of image cells at IMAGE_LEVEL: every face (each has its own axis orientation), plus
# blocks on the face's edges and corners, where a wrong orientation or offset would fall off the face.
TOP = (1 << IMAGE_LEVEL) - 1
IMAGES = [
    (0, 100, 200),
    (1, 511, 3),
    (2, 7, 900),
    (3, 640, 640),
    (4, 2, 1000),
    (5, 333, 77),
    (0, TOP, 0),
    (3, 0, TOP),
    (5, TOP, TOP),
]


def _cell(face: int, i: int, j: int, level: int) -> int:
    """Oracle: s2sphere's id of the cell at `level` holding face coordinates (i, j) at that level."""
    shift = s2sphere.CellId.MAX_LEVEL - level
    return s2sphere.CellId.from_face_ij(face, i << shift, j << shift).parent(level).id()


@pytest.fixture(scope="module")
def pattern():
    """A frame of pixel cells at known (row, col) offsets inside the IMAGES, with channel values
    that encode the image and the offset; returns (frame, expected tensors keyed by image id)."""
    rng = np.random.default_rng(7)
    rows, expected = [], {}
    for n, (face, big_i, big_j) in enumerate(IMAGES):
        image_id = _cell(face, big_i, big_j, IMAGE_LEVEL)
        grid = np.zeros((3, SIZE, SIZE), np.float32)
        # A few distinct offsets, always including two corners so flips and transposes are caught.
        offsets = {(0, SIZE - 1), (SIZE - 1, 0)} | {tuple(x) for x in rng.integers(0, SIZE, (6, 2))}
        for di, dj in sorted(offsets):
            cid = _cell(face, (big_i << K) + di, (big_j << K) + dj, PIXEL_LEVEL)
            values = (1.0 + di * SIZE + dj, float(n + 1), float(rng.integers(0, 50)))
            grid[:, di, dj] = values
            rows.append((cid, *values))
        expected[image_id] = grid
    ids = np.array([r[0] for r in rows], dtype=np.uint64)
    frame = pl.DataFrame(
        {
            "region": "test",
            "level": pl.Series(np.full(ids.size, PIXEL_LEVEL, np.int8)),
            "cell_id": pl.Series(ids.view(np.int64)),
            "token": s2.to_token(ids),
            "taxonomy_version": "t",
            "a": [r[1] for r in rows],
            "b": [r[2] for r in rows],
            "c": [r[3] for r in rows],
        }
    )
    # A coarser-level row must be ignored by the rasteriser.
    coarse = frame.head(1).with_columns(
        level=pl.lit(IMAGE_LEVEL, pl.Int8),
        cell_id=pl.lit(int(np.int64(s2.parent(ids[:1], IMAGE_LEVEL)[0].view(np.int64)))),
    )
    return pl.concat([coarse, frame.sample(fraction=1.0, shuffle=True, seed=1)]), expected


def test_children_land_at_their_face_ij_offsets(pattern):
    frame, expected = pattern
    r = rasterize(frame, IMAGE_LEVEL, PIXEL_LEVEL)
    assert r.channels == ("a", "b", "c")
    assert r.tensors.shape == (len(IMAGES), 3, SIZE, SIZE) and r.tensors.dtype == np.float32
    assert sorted(expected) == r.image_ids.tolist()
    assert set(s2.face_ij(r.image_ids)[0].tolist()) == set(range(6))
    for image_id, tensor in zip(r.image_ids.tolist(), r.tensors):
        np.testing.assert_array_equal(tensor, expected[image_id])


def test_pixel_neighbours_are_s2_neighbours(pattern):
    """Row +1 is the i+1 neighbour and col +1 the j+1 neighbour, as s2sphere's face grid says."""
    frame, _ = pattern
    r = rasterize(frame, IMAGE_LEVEL, PIXEL_LEVEL)
    face, big_i, big_j = (int(x[0]) for x in s2.face_ij(r.image_ids[:1]))
    here = s2sphere.CellId(_cell(face, big_i << K, big_j << K, PIXEL_LEVEL))
    down = _cell(face, (big_i << K) + 1, big_j << K, PIXEL_LEVEL)
    right = _cell(face, big_i << K, (big_j << K) + 1, PIXEL_LEVEL)
    neighbours = {c.id() for c in here.get_edge_neighbors()}
    assert {down, right} <= neighbours
    assert s2.parent(np.array([down, right], np.uint64), IMAGE_LEVEL).tolist() == [r.image_ids[0]] * 2


def test_bad_input_is_refused(pattern):
    frame, _ = pattern
    with pytest.raises(RasterError, match="no rows at the pixel level"):
        rasterize(frame, IMAGE_LEVEL - 1, PIXEL_LEVEL + 1)
    with pytest.raises(RasterError, match="duplicate"):
        rasterize(pl.concat([frame, frame.tail(1)]), IMAGE_LEVEL, PIXEL_LEVEL)
    with pytest.raises(RasterError, match="lacks columns"):
        rasterize(frame.drop("level"), IMAGE_LEVEL, PIXEL_LEVEL)
    with pytest.raises(RasterError, match="image_level"):
        rasterize(frame, PIXEL_LEVEL, IMAGE_LEVEL)
    wrong = frame.with_columns(level=pl.lit(PIXEL_LEVEL, pl.Int8))  # the coarse row now claims level 13
    with pytest.raises(RasterError, match="another level"):
        rasterize(wrong, IMAGE_LEVEL, PIXEL_LEVEL)


def test_norm_stats_scale_log1p_keep_zeros_and_weigh_sparse_channels_up():
    rng = np.random.default_rng(0)
    x = rng.poisson(3.0, (20, 4, 4, 4)).astype(np.float32)
    x[:, 2] = 0.0  # a channel never seen
    x[:, 3] = 0.0
    x[:3, 3, 0, 0] = [1.0, 4.0, 9.0]  # a sparse channel: 3 of 320 pixels
    stats = NormStats.fit([x[:7], x[7:]], ("a", "b", "c", "d"))
    z = stats.apply(x)
    assert (z[x == 0] == 0).all()  # zero stays zero: sparse images stay sparse
    nonzero = np.log1p(x[:, :2][x[:, :2] > 0]) / np.repeat(stats.scale[0], 1)
    assert abs(float(np.sqrt(np.mean(nonzero**2))) - 1.0) < 0.05
    # The sparse channel keeps its counts apart (no clip to one value) and outweighs the dense ones.
    assert len(set(z[:3, 3, 0, 0].tolist())) == 3
    assert stats.weight[3] > 3 * stats.weight[0] and stats.weight[2] == 0.0
    np.testing.assert_allclose(np.mean([w for w in stats.weight if w > 0]), 1.0)
    assert NormStats.from_dict(stats.to_dict()) == stats
    np.testing.assert_allclose(stats.apply_torch(torch.from_numpy(x)).numpy(), z, rtol=1e-6, atol=1e-6)
    with pytest.raises(RasterError):
        NormStats.fit([x[:, :2]], ("a", "b", "c", "d"))


def test_context_window_centre_is_the_image_and_neighbours_are_placed_across_face_edges(pattern):
    frame, _ = pattern
    # Image cells next to an image in a face's middle and to one on a face edge (face 0, i = TOP, away
    # from the corners, where grid lines bend), and that edge image itself.
    ids = s2.as_uint64(frame.filter(pl.col("level") == PIXEL_LEVEL)["cell_id"].to_numpy())
    anchors = np.unique(s2.parent(ids, IMAGE_LEVEL))
    edge = np.array([_cell(0, TOP, 500, IMAGE_LEVEL)], dtype=np.uint64)
    neighbours = s2.grid_window(np.concatenate([edge, anchors[:1]]), IMAGE_LEVEL, -1, 3)[:, 2, 1]  # i + 1
    assert s2.face_ij(neighbours[:1])[0][0] != 0  # really on the next face
    kids = s2.grid_window(np.concatenate([neighbours, edge]), PIXEL_LEVEL, 0, SIZE).reshape(-1)
    extra = pl.DataFrame(
        {
            "region": "test",
            "level": pl.Series(np.full(kids.size, PIXEL_LEVEL, np.int8)),
            "cell_id": pl.Series(kids.view(np.int64)),
            "token": s2.to_token(kids),
            "taxonomy_version": "t",
            "a": np.arange(kids.size, dtype=np.float64),
            "b": 1.0,
            "c": 2.0,
        }
    )
    r = rasterize(pl.concat([frame, extra]), IMAGE_LEVEL, PIXEL_LEVEL, context_ring=2)
    assert r.context.shape == (len(r.image_ids), 3, 10, 10)
    quadrants = r.tensors.reshape(len(r.image_ids), 3, 2, SIZE // 2, 2, SIZE // 2).sum(axis=(3, 5))
    np.testing.assert_allclose(r.context[:, :, 4:6, 4:6], quadrants, rtol=1e-6)  # every image, edges too
    for anchor, neighbour in zip((edge[0], anchors[0]), neighbours):
        a, n = np.searchsorted(r.image_ids, [anchor, neighbour])
        np.testing.assert_allclose(r.context[a, :, 6:8, 4:6], quadrants[n], rtol=1e-6)
    assert rasterize(frame, IMAGE_LEVEL, PIXEL_LEVEL).context is None
    with pytest.raises(RasterError, match="context_ring"):
        rasterize(frame, IMAGE_LEVEL, PIXEL_LEVEL, context_ring=-1)


def test_shards_store_non_zero_values_and_index(pattern, tmp_path):
    frame, _ = pattern
    r = rasterize(frame, IMAGE_LEVEL, PIXEL_LEVEL)
    index = write_shards(r, tmp_path / "rasters", shard_size=4)
    assert index["shard"].n_unique() == 3 and index.height == len(IMAGES)
    assert index["cell_id"].to_numpy().view(np.uint64).tolist() == r.image_ids.tolist()
    shards = open_shards(tmp_path / "rasters")
    assert all(isinstance(s.values, np.memmap) for s in shards.shards)
    assert 0 < shards.meta["stored_bytes"] < shards.meta["dense_bytes"] == r.tensors.nbytes
    rows = np.array([8, 0, 5, 4, 1, 0])
    np.testing.assert_array_equal(shards.take(rows), r.tensors[rows])
    np.testing.assert_array_equal(np.concatenate(list(shards.chunks(3))), r.tensors)
    digest = shards.meta["sha256"]
    # Rewriting replaces the directory as a whole (no stale shards from a larger earlier write).
    write_shards(r, tmp_path / "rasters", shard_size=100)
    assert open_shards(tmp_path / "rasters").meta["sha256"] == digest  # content hash, not layout
    changed = r.tensors.copy()
    changed[0, 0, 0, 0] += 1
    write_shards(dataclasses.replace(r, tensors=changed), tmp_path / "changed")
    assert open_shards(tmp_path / "changed").meta["sha256"] != digest
    parts = sorted(p.name for p in (tmp_path / "rasters").glob("*.npy"))
    assert parts == ["shard-00000.offsets.npy", "shard-00000.positions.npy", "shard-00000.values.npy"]
    assert not list(tmp_path.glob(".rasters*"))
    with pytest.raises(RasterError, match="no context"):
        shards.take_context(rows)
    with_context = rasterize(frame, IMAGE_LEVEL, PIXEL_LEVEL, context_ring=1)
    write_shards(with_context, tmp_path / "context", shard_size=4)
    opened = open_shards(tmp_path / "context")
    np.testing.assert_array_equal(opened.take_context(rows), with_context.context[rows])
    np.testing.assert_array_equal(np.concatenate(list(opened.chunks(3, context=True))), with_context.context)
    with pytest.raises(RasterError, match="context shape differ"):
        open_shards([tmp_path / "rasters", tmp_path / "context"])
    two = open_shards([tmp_path / "rasters", tmp_path / "rasters"])
    assert len(two) == 2 * len(IMAGES)
    np.testing.assert_array_equal(two.take(np.array([len(IMAGES)])), r.tensors[:1])
    with pytest.raises(RasterError, match="not a raster shard directory"):
        open_shards(tmp_path)


def test_shards_in_the_old_dense_format_are_refused_with_the_fix(pattern, tmp_path):
    frame, _ = pattern
    write_shards(rasterize(frame, IMAGE_LEVEL, PIXEL_LEVEL), tmp_path / "rasters")
    meta_path = tmp_path / "rasters" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["storage"]  # as written before the sparse format
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(RasterError, match="older format .*re-materialise raster_tensors"):
        open_shards(tmp_path / "rasters")


def test_chunks_are_the_whole_rasters_in_pieces_and_write_the_same_shards(pattern, tmp_path):
    frame, _ = pattern
    whole = rasterize(frame, IMAGE_LEVEL, PIXEL_LEVEL, context_ring=2)
    chunks = list(rasterize_chunks(frame, IMAGE_LEVEL, PIXEL_LEVEL, context_ring=2, images_per_chunk=4))
    assert [c.image_ids.size for c in chunks] == [4, 4, 1]
    # Context windows reach into other chunks' cells: each chunk sees the whole region.
    np.testing.assert_array_equal(np.concatenate([c.image_ids for c in chunks]), whole.image_ids)
    np.testing.assert_array_equal(np.concatenate([c.tensors for c in chunks]), whole.tensors)
    np.testing.assert_array_equal(np.concatenate([c.context for c in chunks]), whole.context)
    # Chunks of 3 written as shards of 4: shards cut across chunks, the same files as all at once.
    streamed = write_shards(
        rasterize_chunks(frame, IMAGE_LEVEL, PIXEL_LEVEL, context_ring=2, images_per_chunk=3),
        tmp_path / "s",
        4,
    )
    at_once = write_shards(whole, tmp_path / "w", shard_size=4)
    assert streamed.equals(at_once) and streamed["shard"].n_unique() == 3
    for part in ("shard-00001.values.npy", "context-00002.offsets.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "s" / part), np.load(tmp_path / "w" / part))
    a, b = open_shards(tmp_path / "s"), open_shards(tmp_path / "w")
    assert a.meta == b.meta
    np.testing.assert_array_equal(np.concatenate(list(a.chunks(5, context=True))), whole.context)
    with pytest.raises(RasterError, match="images_per_chunk"):
        next(rasterize_chunks(frame, IMAGE_LEVEL, PIXEL_LEVEL, images_per_chunk=0))
    with pytest.raises(RasterError, match="no images"):
        write_shards(iter(()), tmp_path / "empty")
    assert not (tmp_path / "empty").exists() and not list(tmp_path.glob(".empty*"))


@pytest.mark.parametrize("ring", [0, 2])
def test_chunks_read_by_cell_range_from_delta_are_the_same_chunks(pattern, tmp_path, ring):
    """Each chunk's pixel rows read from the Delta table by cell range, the context windows still
    reaching into the other chunks: the same chunks bit for bit, the same shards. Sorted, the images
    run over every face, so one chunk's range crosses 2**63, where the Int64 ids turn negative."""
    frame, _ = pattern
    uri = str(tmp_path / "features")
    warehouse.write_partition(frame, uri, {"region": "test"})
    pixels = {"region": "test", "level": PIXEL_LEVEL}
    reads = []

    def read(lo: int, hi: int) -> pl.LazyFrame:
        reads.append((lo, hi))
        return warehouse.scan_table(uri, pixels, cell_range=(lo, hi))

    def by_range():
        ids = warehouse.scan_table(uri, pixels, columns=["cell_id"]).collect_batches(chunk_size=5)
        return rasterize_by_range(
            read, (b["cell_id"].to_numpy() for b in ids), IMAGE_LEVEL, PIXEL_LEVEL, ring, 4
        )

    whole = list(rasterize_chunks(frame, IMAGE_LEVEL, PIXEL_LEVEL, ring, images_per_chunk=4))
    got = list(by_range())
    assert [c.image_ids.size for c in got] == [4, 4, 1]
    for a, b in zip(got, whole, strict=True):
        np.testing.assert_array_equal(a.image_ids, b.image_ids)
        np.testing.assert_array_equal(a.tensors, b.tensors)
        assert a.channels == b.channels and (a.context is None) == (ring == 0)
        if ring:
            np.testing.assert_array_equal(a.context, b.context)
    # Read once per chunk, twice with context (its sums first, then the images).
    assert len(reads) == (2 if ring else 1) * len(got)
    assert any(lo < 2**63 <= hi for lo, hi in reads)
    reads.clear()
    streamed = write_shards(by_range(), tmp_path / "r", 4)
    assert streamed.equals(write_shards(iter(whole), tmp_path / "w", 4))
    assert open_shards(tmp_path / "r").meta == open_shards(tmp_path / "w").meta
    with pytest.raises(RasterError, match="no rows at the pixel level"):
        next(rasterize_by_range(read, iter(()), IMAGE_LEVEL, PIXEL_LEVEL))
