"""Sparse image storage: exact round trips, in any row order, through the files."""

import numpy as np
import pytest

from s2vec_core.sparse_images import SparseImages


@pytest.fixture
def images() -> np.ndarray:
    """12 images [3, 8, 8] of Poisson-sparse counts, one all zeros and one with no zero at all."""
    rng = np.random.default_rng(0)
    out = (rng.poisson(0.05, (12, 3, 8, 8)) * rng.gamma(2.0, 3.0, (12, 3, 8, 8))).astype(np.float32)
    out[4] = 0
    out[7] = rng.uniform(0.5, 2.0, out[7].shape)
    return out


def test_round_trip_is_exact_for_any_rows(images, tmp_path):
    SparseImages.from_dense(images).save(tmp_path / "s")
    stored = SparseImages.load(tmp_path / "s", images.shape[1:])
    assert len(stored) == 12 and isinstance(stored.values, np.memmap)
    assert stored.values.size == np.count_nonzero(images)
    assert stored.positions.dtype == np.uint8  # 192 values per image
    for rows in ([0, 1, 2, 3], [3, 4, 5], [4], [7, 8], [0, 4, 4, 11], [2, 9, 11], list(range(12)), []):
        np.testing.assert_array_equal(stored.dense(np.array(rows, np.int64)), images[rows])
    assert stored.nbytes < images.nbytes / 4


def test_positions_widen_with_the_image(tmp_path):
    big = np.zeros((2, 92, 32, 32), np.float32)
    big[1, -1, -1, -1] = 3.0  # the last flat position, 94,207, needs 32 bits
    stored = SparseImages.from_dense(big)
    assert stored.positions.dtype == np.uint32
    np.testing.assert_array_equal(stored.dense(np.arange(2)), big)


def test_a_truncated_or_corrupt_shard_is_refused(images, tmp_path):
    stored = SparseImages.from_dense(images)
    stored.save(tmp_path / "s")
    np.save(tmp_path / "s.values.npy", stored.values[:-3])  # a write cut short
    with pytest.raises(ValueError, match="do not agree"):
        SparseImages.load(tmp_path / "s", images.shape[1:])
    positions = stored.positions.copy()
    positions[-1] = 250  # past the 192 values of an image
    bad = SparseImages(stored.offsets, positions, stored.values, stored.shape)
    with pytest.raises(ValueError, match="corrupt"):
        bad.dense(np.arange(12))


def test_an_all_zero_shard_reads_back(tmp_path):
    zeros = np.zeros((5, 2, 4, 4), np.float32)
    SparseImages.from_dense(zeros).save(tmp_path / "z")
    stored = SparseImages.load(tmp_path / "z", (2, 4, 4))
    np.testing.assert_array_equal(stored.dense(np.array([1, 3])), zeros[[1, 3]])
    np.testing.assert_array_equal(stored.dense(np.arange(5)), zeros)
