"""Raster tensors: children at their true S2 face (i, j) position, normalisation, memory-mapped shards."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
import s2sphere
import torch

from s2vec_core import s2
from s2vec_core.raster import NormStats, RasterError, open_shards, rasterize, write_shards

IMAGE_LEVEL, PIXEL_LEVEL = 10, 13
K = PIXEL_LEVEL - IMAGE_LEVEL
SIZE = 1 << K
# (face, I, J) of image cells at IMAGE_LEVEL: every face (each has its own axis orientation), plus
# blocks on the face's edges and corners, where a wrong orientation or offset would fall off the face.
TOP = (1 << IMAGE_LEVEL) - 1
IMAGES = [(0, 100, 200), (1, 511, 3), (2, 7, 900), (3, 640, 640), (4, 2, 1000), (5, 333, 77),
          (0, TOP, 0), (3, 0, TOP), (5, TOP, TOP)]


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
    frame = pl.DataFrame({
        "region": "test",
        "level": pl.Series(np.full(ids.size, PIXEL_LEVEL, np.int8)),
        "cell_id": pl.Series(ids.view(np.int64)),
        "token": s2.to_token(ids),
        "taxonomy_version": "t",
        "a": [r[1] for r in rows], "b": [r[2] for r in rows], "c": [r[3] for r in rows],
    })
    # A coarser-level row must be ignored by the rasteriser.
    coarse = frame.head(1).with_columns(level=pl.lit(IMAGE_LEVEL, pl.Int8),
                                        cell_id=pl.lit(int(np.int64(s2.parent(ids[:1], IMAGE_LEVEL)[0].view(np.int64)))))
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


def test_norm_stats_standardise_log1p_and_round_trip():
    rng = np.random.default_rng(0)
    x = rng.poisson(3.0, (20, 3, 4, 4)).astype(np.float32)
    x[:, 2] = 5.0  # a constant channel must not blow up
    stats = NormStats.fit([x[:7], x[7:]], ("a", "b", "c"))
    z = stats.apply(x)
    np.testing.assert_allclose(z[:, :2].mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(z[:, :2].std(axis=(0, 2, 3)), 1.0, atol=1e-4)
    assert np.all(z[:, 2] == 0.0) and stats.std[2] == 1.0
    assert NormStats.from_dict(stats.to_dict()) == stats
    np.testing.assert_allclose(stats.apply_torch(torch.from_numpy(x)).numpy(), z, rtol=1e-6, atol=1e-6)
    # A channel seen in one pixel gets a huge z there; it is clipped so it cannot dominate the loss.
    rare = np.zeros((50, 1, 4, 4), np.float32)
    rare[0, 0, 0, 0] = 100.0
    rare_stats = NormStats.fit([rare], ("r",))
    assert rare_stats.apply(rare).max() == rare_stats.clip == 5.0
    with pytest.raises(RasterError):
        NormStats.fit([x[:, :2]], ("a", "b", "c"))


def test_shards_memory_map_and_index(pattern, tmp_path):
    frame, _ = pattern
    r = rasterize(frame, IMAGE_LEVEL, PIXEL_LEVEL)
    index = write_shards(r, tmp_path / "rasters", shard_size=4)
    assert index["shard"].n_unique() == 3 and index.height == len(IMAGES)
    assert index["cell_id"].to_numpy().view(np.uint64).tolist() == r.image_ids.tolist()
    shards = open_shards(tmp_path / "rasters")
    assert all(isinstance(s, np.memmap) for s in shards.shards)
    rows = np.array([8, 0, 5, 4, 1])
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
    assert sorted(p.name for p in (tmp_path / "rasters").glob("*.npy")) == ["shard-00000.npy"]
    assert not list(tmp_path.glob(".rasters*"))
    two = open_shards([tmp_path / "rasters", tmp_path / "rasters"])
    assert len(two) == 2 * len(IMAGES)
    np.testing.assert_array_equal(two.take(np.array([len(IMAGES)])), r.tensors[:1])
    with pytest.raises(RasterError, match="not a raster shard directory"):
        open_shards(tmp_path)
