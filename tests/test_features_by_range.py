"""cell_features made range by range (the shards' runs, cut into pieces) equal the whole-region table bit
for bit, in the same row order once staged; and a staged table streams into one Delta commit.
Needs osmium-tool (`osmium` on PATH) for the shards."""

import itertools
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from s2vec_core import features, pipeline, s2, shards, warehouse
from s2vec_core.tables import CELL_FEATURES

PBF = Path(__file__).resolve().parents[1] / "data" / "osm" / "liechtenstein-2013-08-03.osm.pbf"
# 10 shard cells of levels 5 to 10 plus the rest (see test_shards.py).
TARGET = 150_000
LEVELS = [13, 15, 17]


@pytest.fixture(scope="module")
def runs() -> list[pl.DataFrame]:
    found = list(shards.iter_sharded(PBF, LEVELS[-1], workers=2, target_bytes=TARGET))
    assert len(found) > 5
    return found


@pytest.mark.parametrize(
    "levels, piece_rows, least_pieces",
    [
        (LEVELS, features.PIECE_ROWS, 1),
        (LEVELS, 5_000, 10),  # many pieces per run
        ([6, 13, 17], 5_000, 2),  # level-6 cells straddle the shards' runs: carried over to the next run
    ],
)
def test_pieces_equal_the_whole_table(runs, levels, piece_rows, least_pieces):
    whole = features.cell_features(pl.concat(runs), levels, "li")
    pieces = list(features.cell_features_by_range(runs, levels, "li", piece_rows))
    assert len(pieces) >= least_pieces
    edges = [(r["cell_id"][-1], n["cell_id"][0]) for r, n in itertools.pairwise(runs)]
    straddle = [s2.parent(np.array(e, np.uint64), levels[0]) for e in edges]
    assert any(a == b for a, b in straddle) == (levels[0] == 6)
    by_level = pl.concat(pieces).sort("level", descending=True, maintain_order=True)
    assert by_level.equals(whole)


def test_staged_pieces_scan_back_in_the_whole_tables_order(runs, tmp_path):
    whole = features.cell_features(pl.concat(runs), LEVELS, "li")
    staged = features.stage_by_level(features.cell_features_by_range(runs, LEVELS, "li", 5_000), tmp_path)
    assert len(list(tmp_path.iterdir())) > 3 * len(runs)
    assert staged.collect().equals(whole)
    assert features.stage_by_level([], tmp_path / "none").collect().schema == features.schema()


def test_pipeline_by_range_equals_the_whole_region():
    stats, whole_stats = {}, {}
    box = (9.5, 47.1, 9.6, 47.2)  # clips part of the region
    whole = pipeline.features(PBF, "li", LEVELS, box, target_bytes=TARGET, stats=whole_stats)
    pieces = pipeline.features_by_range(PBF, "li", LEVELS, box, target_bytes=TARGET, stats=stats)
    assert pl.concat(list(pieces)).sort("level", descending=True, maintain_order=True).equals(whole)
    assert stats == whole_stats and stats["cells_outside_bbox"] > 0


def test_ranges_out_of_order_are_refused(runs):
    with pytest.raises(ValueError, match="cell order"):
        list(features.cell_features_by_range([runs[1], runs[0]], LEVELS, "li"))


def test_a_staged_table_streams_into_one_commit(runs, tmp_path):
    """A lazy frame writes the same rows as the collected one, in one commit, and replaces only its
    region; rows outside the partition are refused before anything is written."""
    uri = str(tmp_path / "cell_features")
    other = features.cell_features(runs[0], LEVELS, "other")
    assert warehouse.write_partition(other, uri, {"region": "other"}, spec=CELL_FEATURES) == 0
    staged = features.stage_by_level(features.cell_features_by_range(runs, LEVELS, "li"), tmp_path)
    assert warehouse.write_partition(staged, uri, {"region": "li"}, spec=CELL_FEATURES) == 1
    # Delta keeps no row order (delta-rs writes batches in parallel), for a frame or a stream alike.
    key = ["level", "cell_id"]
    assert warehouse.read_table(uri, {"region": "li"}).sort(key).equals(staged.collect().sort(key))
    assert warehouse.read_table(uri, {"region": "other"}).sort(key).equals(other.sort(key))
    with pytest.raises(warehouse.WarehouseError, match="outside the partition"):
        warehouse.write_partition(staged, uri, {"region": "other"}, spec=CELL_FEATURES)
    assert warehouse.table_version(uri) == 1
    rows = warehouse.rows_per_partition(uri)
    assert dict(zip(rows["partition.region"], rows["rows"], strict=True)) == {
        "li": staged.collect().height,
        "other": other.height,
    }


def test_rasters_read_by_cell_range_equal_the_whole_regions(runs, tmp_path):
    """Liechtenstein's features written as cell_features writes them, then rasterised with each chunk's
    pixel rows read from Delta by cell range: the chunks `raster_chunks` makes from the whole frame."""
    uri = str(tmp_path / "cell_features")
    staged = features.stage_by_level(features.cell_features_by_range(runs, LEVELS, "li"), tmp_path)
    warehouse.write_partition(staged, uri, {"region": "li"}, spec=CELL_FEATURES)
    grid = pipeline.DEFAULT_GRID
    pixels = {"region": "li", "level": grid.pixel_level}
    ids = warehouse.scan_table(uri, pixels, columns=["cell_id"]).collect_batches(chunk_size=10_000)
    got = pipeline.raster_chunks_by_range(
        lambda lo, hi: warehouse.scan_table(uri, pixels, cell_range=(lo, hi)),
        (b["cell_id"].to_numpy() for b in ids),
        grid,
        images_per_chunk=64,
    )
    whole = pipeline.raster_chunks(warehouse.read_table(uri, pixels), grid, images_per_chunk=64)
    n = 0
    for a, b in zip(got, whole, strict=True):
        np.testing.assert_array_equal(a.image_ids, b.image_ids)
        np.testing.assert_array_equal(a.tensors, b.tensors)
        np.testing.assert_array_equal(a.context, b.context)
        n += 1
    assert n > 3


def test_a_failed_commit_leaves_no_file_and_the_old_rows(runs, tmp_path, monkeypatch):
    uri = str(tmp_path / "cell_features")
    old = features.cell_features(runs[0], LEVELS, "li")
    warehouse.write_partition(old, uri, {"region": "li"}, spec=CELL_FEATURES)
    before = sorted(p.name for p in (tmp_path / "cell_features" / "region=li").iterdir())
    staged = features.stage_by_level(features.cell_features_by_range(runs, LEVELS, "li"), tmp_path)

    def refuse(*args, **kwargs):
        raise OSError("store down")

    monkeypatch.setattr(warehouse.DeltaTable, "create_write_transaction", refuse)
    with pytest.raises(OSError, match="store down"):
        warehouse.write_partition(staged, uri, {"region": "li"}, spec=CELL_FEATURES)
    assert sorted(p.name for p in (tmp_path / "cell_features" / "region=li").iterdir()) == before
    assert warehouse.table_version(uri) == 0
    key = ["level", "cell_id"]
    assert warehouse.read_table(uri, {"region": "li"}).sort(key).equals(old.sort(key))


def test_check_ranges_cut_between_blocks_and_cover_every_id(runs):
    from s2vec_assets.defs.features.checks import RANGE_SHIFT, cell_ranges

    ids = pl.concat(runs)["cell_id"].to_numpy()
    ranges = cell_ranges([ids[::2], ids[1::2]], rows=5_000)
    assert len(ranges) > 5
    lo, hi = np.array(ranges, np.uint64).T
    assert np.all(lo[1:] > hi[:-1]) and np.all((lo & np.uint64((1 << RANGE_SHIFT) - 1)) == 0)
    inside = sum(int(((ids >= a) & (ids <= b)).sum()) for a, b in ranges)
    assert inside == ids.size
