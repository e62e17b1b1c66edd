"""Great Expectations 1.x suites run inside Dagster asset checks.

dagster-ge only supports GX 0.x, so checks run GX themselves: an ephemeral context, the frame as a
pandas dataframe batch, one suite per check, and the outcome turned into an `AssetCheckResult` whose
metadata names the failing expectations and shows a sample of the bad rows.

Usage in a check (see `defs/features/checks.py`):

    frame = ...  # polars frame, with helper columns computed so that plain expectations apply
    yield gx_check_result(frame, [Expect("expect_column_values_to_not_be_null", column="x")],
                          asset_key=..., check_name=..., sample_columns=["region", "cell_id"])

GX is imported on first use (it takes seconds), so loading the code location stays fast.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dagster as dg
import polars as pl

from s2vec_assets.metadata import markdown_table

if TYPE_CHECKING:
    from great_expectations.core import ExpectationSuiteValidationResult

SAMPLE_ROWS = 5
"""Bad rows shown per failing expectation."""
MAX_SAMPLED_EXPECTATIONS = 10
"""Failing expectations that get a bad-row sample (all of them are listed)."""


@dataclass(frozen=True, init=False)
class Expect:
    """One GX expectation named by its GX type, e.g. `Expect("expect_column_values_to_be_between",
    column="x", min_value=0)`; built into the GX class (`ExpectColumnValuesToBeBetween`) on use."""

    type: str
    kwargs: dict[str, Any]

    def __init__(self, type: str, **kwargs: Any) -> None:
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "kwargs", kwargs)

    def build(self):
        import great_expectations.expectations as gxe

        class_name = "".join(part.title() for part in self.type.split("_"))
        try:
            cls = getattr(gxe, class_name)
        except AttributeError:
            raise ValueError(f"unknown Great Expectations expectation {self.type!r}") from None
        return cls(**self.kwargs)


@functools.cache
def _batch_definition(suite_name: str):
    """A whole-dataframe batch definition named `suite_name` in this process's one ephemeral GX context.
    One context for the process, not one per run: each new context kept ~0.3 MB, and a region's checks
    run thousands of suites (range by range)."""
    return _pandas_source().add_dataframe_asset(suite_name).add_batch_definition_whole_dataframe(suite_name)


@functools.cache
def _pandas_source():
    # No usage analytics from data checks (GX reads this when it is imported).
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context.data_sources.add_pandas("s2vec")


def run_suite(
    frame: pl.DataFrame, expectations: Sequence[Expect], suite_name: str
) -> ExpectationSuiteValidationResult:
    """Validate `frame` against `expectations` (GX's ephemeral context, the frame as a pandas batch)."""
    import great_expectations as gx

    batch = _batch_definition(suite_name).get_batch(batch_parameters={"dataframe": frame.to_pandas()})
    suite = gx.ExpectationSuite(name=suite_name, expectations=[e.build() for e in expectations])
    # SUMMARY gives the row positions of a sample of unexpected values (the frame has a RangeIndex).
    return batch.validate(
        suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_ROWS}
    )


def gx_check_result(
    frame: pl.DataFrame,
    expectations: Sequence[Expect],
    *,
    asset_key: dg.AssetKey,
    check_name: str,
    sample_columns: Sequence[str] = (),
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
) -> dg.AssetCheckResult:
    """Run the suite and report it as a check result (passed only if every expectation passed)."""
    result = run_suite(frame, expectations, suite_name=check_name)
    failed = [r for r in result.results if not r.success]
    metadata: dict[str, Any] = {
        "rows_checked": dg.MetadataValue.int(frame.height),
        "expectations_evaluated": dg.MetadataValue.int(len(result.results)),
        "expectations_failed": dg.MetadataValue.int(len(failed)),
    }
    if failed:
        metadata["failed_expectations"] = dg.MetadataValue.json([_describe(r) for r in failed])
        metadata["bad_rows"] = dg.MetadataValue.md(_bad_rows_markdown(frame, failed, sample_columns))
    summary = (
        f"{len(failed)} of {len(result.results)} expectations failed: "
        + ", ".join(_label(r) for r in failed[:MAX_SAMPLED_EXPECTATIONS])
        if failed
        else f"all {len(result.results)} expectations passed"
    )
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=check_name,
        passed=bool(result.success),
        metadata=metadata,
        description=summary,
        severity=severity,
    )


def _columns(config_kwargs: dict[str, Any]) -> list[str]:
    cols = [config_kwargs[k] for k in ("column", "column_A", "column_B") if config_kwargs.get(k)]
    return cols + list(config_kwargs.get("column_list") or [])


def _label(r) -> str:
    cols = _columns(r.expectation_config.kwargs)
    return f"{r.expectation_config.type}({', '.join(cols)})" if cols else r.expectation_config.type


def _describe(r) -> dict[str, Any]:
    out: dict[str, Any] = {
        "expectation": r.expectation_config.type,
        "columns": _columns(r.expectation_config.kwargs),
    }
    for key in ("observed_value", "unexpected_count", "unexpected_percent"):
        if key in (r.result or {}):
            value = r.result[key]
            out[key] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    if r.exception_info and r.exception_info.get("raised_exception"):
        out["exception"] = str(r.exception_info.get("exception_message"))
    return out


def _bad_rows_markdown(frame: pl.DataFrame, failed: list, sample_columns: Sequence[str]) -> str:
    parts = []
    for r in failed[:MAX_SAMPLED_EXPECTATIONS]:
        rows = (r.result or {}).get("partial_unexpected_index_list") or []
        parts.append(f"**{_label(r)}**")
        if not rows:
            parts.append(f"observed: {(r.result or {}).get('observed_value', 'n/a')}")
            continue
        columns = list(dict.fromkeys([*sample_columns, *_columns(r.expectation_config.kwargs)]))
        parts.append(
            markdown_table(frame[[int(i) for i in rows], [c for c in columns if c in frame.columns]])
        )
    if len(failed) > MAX_SAMPLED_EXPECTATIONS:
        parts.append(f"... and {len(failed) - MAX_SAMPLED_EXPECTATIONS} more failing expectations")
    return "\n\n".join(parts)
