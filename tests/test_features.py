"""Per-level cell features from the real Liechtenstein extract."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from s2vec_core import s2
from s2vec_core.features import cell_features, channel_totals, schema
from s2vec_core.osm import extract_cells
from s2vec_core.taxonomy import CHANNEL_NAMES

PBF = Path(__file__).resolve().parent.parent / "data/osm/liechtenstein-2013-08-03.osm.pbf"
LEVELS = (11, 13, 15)


@pytest.fixture(scope="module")
def pixels() -> pl.DataFrame:
    return extract_cells(PBF, max(LEVELS))


@pytest.fixture(scope="module")
def features(pixels) -> pl.DataFrame:
    return cell_features(pixels, LEVELS, "liechtenstein")


def test_schema_and_keys(features):
    assert features.schema == schema()
    assert features.select("level", "cell_id").is_unique().all()
    assert sorted(features["level"].unique().to_list()) == list(LEVELS)
    assert (features["region"] == "liechtenstein").all()


def test_ids_are_at_their_level_and_tokens_match(features):
    ids = s2.as_uint64(features["cell_id"].to_numpy())
    assert np.array_equal(s2.cell_level(ids), features["level"].to_numpy())
    assert np.array_equal(s2.from_token(features["token"].to_numpy()), ids)


def test_channel_totals_equal_across_levels(pixels, features):
    totals = channel_totals(features).select(CHANNEL_NAMES).to_numpy()
    finest = pixels.select(CHANNEL_NAMES).sum().to_numpy()[0]
    assert totals[:, CHANNEL_NAMES.index("building_count")].min() > 3000
    np.testing.assert_allclose(totals, np.broadcast_to(finest, totals.shape), rtol=1e-9)


def test_coarse_cells_are_parents_of_fine_cells(features):
    fine = s2.as_uint64(features.filter(pl.col("level") == 15)["cell_id"].to_numpy())
    coarse = set(s2.as_uint64(features.filter(pl.col("level") == 11)["cell_id"].to_numpy()).tolist())
    assert set(s2.parent(fine, 11).tolist()) == coarse


def test_levels_must_match_the_extraction(pixels):
    with pytest.raises(ValueError, match="finest level"):
        cell_features(pixels, (11, 16), "liechtenstein")
    with pytest.raises(ValueError, match="lacks columns"):
        cell_features(pixels.drop("building_count"), LEVELS, "liechtenstein")


def test_long_and_wide_extractions_give_the_same_table(features):
    from s2vec_core.osm import extract_cells_long

    from_long = cell_features(extract_cells_long(PBF, max(LEVELS)), LEVELS, "liechtenstein")
    assert from_long.select("level", "cell_id").to_dicts() == features.select("level", "cell_id").to_dicts()
    np.testing.assert_allclose(
        from_long.select(CHANNEL_NAMES).to_numpy(),
        features.select(CHANNEL_NAMES).to_numpy(),
        rtol=1e-12,
        atol=1e-9,
    )


def test_long_extraction_with_unknown_channels_is_refused():
    bad = pl.DataFrame(
        {
            "cell_id": pl.Series([s2.latlng_to_cell_id(47.1, 9.5, 15)[()]], dtype=pl.UInt64),
            "channel": [len(CHANNEL_NAMES)],
            "value": [1.0],
        }
    )
    with pytest.raises(ValueError, match="channel index"):
        cell_features(bad, LEVELS, "liechtenstein")


def test_identical_inputs_give_bit_identical_tables_whatever_the_row_order(pixels):
    from s2vec_core.osm import extract_cells_long

    long = extract_cells_long(PBF, max(LEVELS))
    first = cell_features(long, LEVELS, "liechtenstein")
    for seed in (1, 2):
        shuffled = long.sample(fraction=1.0, shuffle=True, seed=seed)
        assert cell_features(shuffled, LEVELS, "liechtenstein").equals(first)


def test_two_runs_in_separate_processes_write_bit_identical_tables():
    """The finding this guards: identical runs gave 4 table digests in 11."""
    import subprocess
    import sys

    monaco = PBF.parent / "monaco-2023.osm.pbf"
    script = (
        "import hashlib, sys; from s2vec_core.osm import extract_cells_long; "
        "from s2vec_core.features import cell_features; "
        f"t = cell_features(extract_cells_long({str(monaco)!r}, 17), (13, 15, 17), 'monaco'); "
        "print(hashlib.sha256(t.sort('level', 'cell_id').write_ipc(None).getvalue()).hexdigest())"
    )
    digests = {
        subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
        for _ in range(3)
    }
    assert len(digests) == 1
