"""Great Expectations checks on cell_features, per region partition, read back from the Delta table.

All are blocking: duplicated, misplaced or negative cells would poison the rasters and the model.
One op runs them all (one GX import, one table version) and each reports its own result. Where a rule
is not a plain GX expectation, a helper frame is computed first (e.g. the S2 level of each id, or each
channel's count of negative values over the region) and GX checks that frame.
"""

from collections.abc import Callable, Iterable

import dagster as dg
import numpy as np
import polars as pl

from s2vec_assets.check_specs import check_specs
from s2vec_assets.defs.features import assets as feature_assets
from s2vec_assets.defs.resources import WarehouseResource
from s2vec_assets.gx_checks import Expect, gx_check_result
from s2vec_core import s2
from s2vec_core.taxonomy import CHANNEL_NAMES

KEYS = ["region", "level", "cell_id", "token"]
TOTALS_RTOL = 1e-9
"""Relative tolerance of per-channel totals across levels (they differ only by float summation order)."""
TOTALS_ATOL = 1e-6

Suite = tuple[pl.DataFrame, list[Expect], list[str]]


def not_empty(df: pl.DataFrame) -> Suite:
    return df.select("region"), [Expect("expect_table_row_count_to_be_between", min_value=1)], []


CELL_KEY = ["region", "level", "cell_id"]


def unique_cells(df: pl.DataFrame) -> Suite:
    return df.select(KEYS), [Expect("expect_compound_columns_to_be_unique", column_list=CELL_KEY)], KEYS


def valid_cell_ids(df: pl.DataFrame) -> Suite:
    ids = s2.as_uint64(df["cell_id"].to_numpy())
    valid = s2.is_valid(ids)
    id_level = np.full(len(ids), -1, dtype=np.int16)
    id_level[valid] = s2.cell_level(ids[valid])
    frame = df.select(KEYS).with_columns(
        id_level=pl.Series(id_level),
        valid_s2_id=pl.Series(valid),
        at_stated_level=pl.Series(id_level == df["level"].to_numpy()),
        token_matches_id=pl.Series(s2.to_token(ids) == df["token"].to_numpy()),
    )
    expectations = [
        Expect("expect_column_values_to_be_in_set", column=c, value_set=[True])
        for c in ("valid_s2_id", "at_stated_level", "token_matches_id")
    ]
    return frame, expectations, [*KEYS, "id_level"]


VALUE_FAULTS = ("missing", "negative", "non_finite")
"""What the values suite counts per channel. GX skips nulls (pandas NaN) in value expectations and a
GX pass per channel over every row cost minutes and gigabytes, so polars counts each fault per channel
and GX checks that every count is zero."""


def channel_faults(df: pl.DataFrame) -> pl.DataFrame:
    """One row per channel: how many of `df`'s rows are missing, negative or non-finite there, and the
    token of one such row (null when none)."""

    def faults(c: str) -> dict[str, pl.Expr]:
        value = pl.col(c)
        return {"missing": value.is_null(), "negative": value < 0, "non_finite": ~value.is_finite()}

    sums = [fault.sum().alias(f"{c}/{name}") for c in CHANNEL_NAMES for name, fault in faults(c).items()]
    examples = [
        pl.col("token").filter(pl.any_horizontal(*faults(c).values()).fill_null(True)).first().alias(c)
        for c in CHANNEL_NAMES
    ]
    row = df.select(*sums, *examples).row(0, named=True)
    return pl.DataFrame(
        {
            "channel": list(CHANNEL_NAMES),
            **{name: [row[f"{c}/{name}"] for c in CHANNEL_NAMES] for name in VALUE_FAULTS},
            "example_cell": [row[c] for c in CHANNEL_NAMES],
        },
        schema_overrides={name: pl.Int64 for name in VALUE_FAULTS} | {"example_cell": pl.String},
    )


def merge_faults(parts: list[pl.DataFrame]) -> pl.DataFrame:
    return (
        pl.concat(parts)
        .group_by("channel", maintain_order=True)
        .agg(*(pl.col(f).sum() for f in VALUE_FAULTS), pl.col("example_cell").drop_nulls().first())
    )


def level_totals(df: pl.DataFrame) -> pl.DataFrame:
    """Each channel's sum per level over `df`'s rows."""
    return df.group_by("level").agg(pl.col(list(CHANNEL_NAMES)).sum())


def merge_totals(parts: list[pl.DataFrame]) -> pl.DataFrame:
    return pl.concat(parts).group_by("level").agg(pl.col(list(CHANNEL_NAMES)).sum())


def values_finite_nonnegative(faults: pl.DataFrame) -> Suite:
    """On `channel_faults`' rows: a failing row names the channel, how many cells are bad and one of them."""
    expectations = [
        Expect("expect_column_values_to_be_in_set", column=f, value_set=[0]) for f in VALUE_FAULTS
    ]
    return faults, expectations, ["channel", "example_cell"]


def totals_consistent(totals: pl.DataFrame) -> Suite:
    """On `level_totals`' rows: per channel, the spread of its totals across levels."""
    frame = (
        totals.unpivot(index="level", variable_name="channel", value_name="total")
        .group_by("channel", maintain_order=True)
        .agg(levels=pl.len(), min_total=pl.col("total").min(), max_total=pl.col("total").max())
        .with_columns(
            spread=pl.col("max_total") - pl.col("min_total"),
            tolerance=TOTALS_RTOL * pl.max_horizontal(pl.col("max_total").abs(), pl.col("min_total").abs())
            + TOTALS_ATOL,
        )
    )
    expectation = Expect(
        "expect_column_pair_values_a_to_be_greater_than_b",
        column_A="tolerance",
        column_B="spread",
        or_equal=True,
    )
    return frame, [expectation], ["channel", "levels", "min_total", "max_total"]


SUITES: dict[str, tuple[Callable[[pl.DataFrame], Suite], str]] = {
    "cell_features_not_empty": (not_empty, "The region has at least one cell with features."),
    "cell_features_unique_cells": (unique_cells, "No (region, level, cell_id) appears twice."),
    "cell_features_valid_cell_ids": (
        valid_cell_ids,
        "Every cell_id is a valid S2 cell at the row's stated level, and the token is that id's token.",
    ),
    "cell_features_values_finite_nonnegative": (
        values_finite_nonnegative,
        "Every channel value is present, finite and >= 0.",
    ),
    "cell_features_totals_consistent": (
        totals_consistent,
        f"Each channel's total is the same at every level (rtol {TOTALS_RTOL}, atol {TOTALS_ATOL}).",
    ),
}

PRE_WRITE = ("cell_features_not_empty", "cell_features_unique_cells")
"""Suites `cell_features` also runs on its frame before writing it, so that a region that would fail
them is refused with its previous rows still current (no commit). These are cheap (one pass over the
keys); the value and totals suites stay after the write only: a GX pass over every channel costs
seconds per small region, and the extraction cannot produce negative or non-finite sums."""


SCREENS: dict[str, Callable[[pl.DataFrame], bool]] = {
    "cell_features_not_empty": lambda df: df.height > 0,
    "cell_features_unique_cells": lambda df: not df.select(CELL_KEY).is_duplicated().any(),
}
"""The `PRE_WRITE` rules as polars predicates (True: passes), for the frames that pass, nearly all of
them: `cell_features` checks every piece of a region before writing, and a GX run per piece cost the
step ~250 MB (importing GX) and about half its time. GX then runs only to describe a failure;
`tests/test_write_safety.py` checks that both agree."""


def failures_before_write(df: pl.DataFrame) -> dict[str, str]:
    """The `PRE_WRITE` suites `df` fails: check name -> what the rule is and what failed.

    Same suites as the blocking checks (same builders, same GX run), on the frame about to be written,
    run when a `SCREENS` predicate fails. An empty frame is reported as empty only (the other suites
    are vacuous on it).
    """
    if all(SCREENS[name](df) for name in PRE_WRITE):
        return {}
    failed = {}
    for name in PRE_WRITE:
        build, rule = SUITES[name]
        frame, expectations, sample_columns = build(df)
        result = gx_check_result(
            frame,
            expectations,
            asset_key=feature_assets.cell_features.key,
            check_name=name,
            sample_columns=sample_columns,
        )
        if not result.passed:
            failed[name] = f"{rule} ({result.description})"
            if name == "cell_features_not_empty":
                break
    return failed


SPECS = check_specs(feature_assets.cell_features, {name: desc for name, (_, desc) in SUITES.items()})


CHECK_ROWS = 1 << 16
"""Rows the suites read at once: the region is read range by range of cell ids, never whole (a GX
suite works on a pandas copy, and polars' streaming scans of a Delta region held gigabytes). Ranges of
2**18 rows held ~300 MB more; they took 33 s where these take 51-59 s at 150 MB of PBF."""
RANGE_SHIFT = 40
"""Ranges are cut between blocks of 2**40 ids (cells of level 11 and finer never straddle two), so a
duplicated (level, cell_id) always falls in one range and uniqueness per range is uniqueness."""
SUMMARISED: dict[str, tuple[Callable[[pl.DataFrame], pl.DataFrame], Callable[[list], pl.DataFrame]]] = {
    "cell_features_values_finite_nonnegative": (channel_faults, merge_faults),
    "cell_features_totals_consistent": (level_totals, merge_totals),
}
"""Suites over the whole region: each range is summarised (summarise), the summaries merged (merge),
and the suite checks the merged summary."""


def cell_ranges(ids: Iterable[np.ndarray], rows: int = CHECK_ROWS) -> list[tuple[int, int]]:
    """Consecutive unsigned cell-id ranges holding about `rows` of the ids each (Int64 or uint64, in any
    batches), cut only between blocks of 2**RANGE_SHIFT ids."""
    counts: dict[int, int] = {}
    for batch in ids:
        blocks, n = np.unique(s2.as_uint64(batch) >> np.uint64(RANGE_SHIFT), return_counts=True)
        for block, count in zip(blocks.tolist(), n.tolist(), strict=True):
            counts[block] = counts.get(block, 0) + count
    ranges, start, held = [], None, 0
    for block in sorted(counts):
        start = block if start is None else start
        held += counts[block]
        if held >= rows:
            ranges.append((start << RANGE_SHIFT, ((block + 1) << RANGE_SHIFT) - 1))
            start, held = None, 0
    if start is not None:
        ranges.append((start << RANGE_SHIFT, ((max(counts) + 1) << RANGE_SHIFT) - 1))
    return ranges


def _merged(results: list[dg.AssetCheckResult]) -> dg.AssetCheckResult:
    """One suite's results over the ranges as one: the first failing range's (the rows it names are
    there), else the first's; rows checked summed over all."""
    failed = [r for r in results if not r.passed]
    chosen = failed[0] if failed else results[0]
    rows = sum(r.metadata["rows_checked"].value for r in results)
    metadata = {**chosen.metadata, "rows_checked": dg.MetadataValue.int(rows)}
    metadata["cell_ranges"] = dg.MetadataValue.int(len(results))
    metadata["cell_ranges_failed"] = dg.MetadataValue.int(len(failed))
    return chosen._replace(metadata=metadata)


@dg.multi_asset_check(specs=SPECS, can_subset=True, name="cell_features_checks")
def cell_features_checks(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource):
    """Great Expectations suites on the region's rows of the cell_features Delta table, read range by
    range of cell ids at one table version (`CHECK_ROWS` rows at a time), so memory holds a range."""
    region = {"region": context.partition_key}
    version = warehouse.version(feature_assets.TABLE)
    selected = {key.name for key in context.selected_asset_check_keys}
    ids = warehouse.scan(feature_assets.TABLE, region, ["cell_id"], version).collect_batches()
    ranges = cell_ranges((batch["cell_id"].to_numpy() for batch in ids), CHECK_ROWS)
    by_range = [n for n in SUITES if n in selected and n not in SUMMARISED]
    summarised = [n for n in SUITES if n in selected and n in SUMMARISED]
    columns = None if summarised else KEYS
    results: dict[str, list[dg.AssetCheckResult]] = {n: [] for n in by_range}
    summaries: dict[str, list[pl.DataFrame]] = {n: [] for n in summarised}
    for cells in ranges or [None]:
        df = warehouse.scan(feature_assets.TABLE, region, columns, version, cells).collect()
        for name in by_range:
            results[name].append(_run(name, df))
        for name in summarised:
            summaries[name].append(SUMMARISED[name][0](df))
        del df
    for name in SUITES:
        if name in results:
            yield _merged(results[name])
        elif name in summaries:
            yield _run(name, SUMMARISED[name][1](summaries[name]))


def _run(name: str, df: pl.DataFrame) -> dg.AssetCheckResult:
    build, _ = SUITES[name]
    frame, expectations, sample_columns = build(df)
    return gx_check_result(
        frame,
        expectations,
        asset_key=feature_assets.cell_features.key,
        check_name=name,
        sample_columns=sample_columns,
    )
