"""Building blocks for asset metadata, so every asset reports tables the same way.

Conventions (all assets): a table asset returns `table_metadata(...)` (row count, column schema, URI,
Delta version and a preview under Dagster's standard `dagster/...` keys, which the UI understands),
plus its own keys. Plots go in as `png_markdown(fig)`, small markdown tables as `markdown_table(df)`.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import dagster as dg
import polars as pl

from s2vec_core import tables, warehouse

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def column_schema(schema: pl.Schema | dict[str, pl.DataType], table_name: str) -> dg.TableSchema:
    """Dagster's column schema of a frame, each column described as the table's spec documents it (a
    feature channel in the taxonomy's words, which TAXONOMY.md is made from too)."""
    spec = tables.BY_NAME.get(table_name)
    docs = spec.docs if spec else {}
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, str(dtype), description=docs.get(name)) for name, dtype in schema.items()
        ]
    )


def markdown_table(df: pl.DataFrame, max_rows: int = 10, float_digits: int = 4) -> str:
    """A GitHub-flavoured markdown table of the first `max_rows` rows."""
    head = df.head(max_rows)

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.{float_digits}g}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in head.iter_rows()]
    if df.height > max_rows:
        lines.append(f"\n({df.height - max_rows} more rows)")
    return "\n".join(lines)


def table_metadata(
    df: pl.DataFrame | pl.LazyFrame,
    uri: str,
    version: int,
    table_name: str,
    preview_columns: Sequence[str] | None = None,
    preview_rows: int = 5,
    busiest: Sequence[str] | None = None,
    storage_options: dict[str, str] | None = None,
) -> dict[str, object]:
    """Row count, column schema, table URI and version, and a preview of `df` (the rows just written;
    a lazy frame is queried by streaming, never collected): with `busiest`, the rows with the largest
    sum of those columns (most cells of a sparse table are all zeros, which says nothing).
    `dagster/row_count` is this partition's; `table_row_count` and `rows_per_partition` are the whole
    table's current version."""
    parts = warehouse.rows_per_partition(uri, storage_options)
    lf = df.lazy()
    if busiest:
        busy = pl.sum_horizontal(list(busiest))
        lf = lf.top_k(preview_rows, by=busy).sort(busy, descending=True, maintain_order=True)
    preview = lf.select(preview_columns or df.collect_schema().names()).head(preview_rows)
    return {
        "dagster/row_count": dg.MetadataValue.int(_height(df)),
        "dagster/column_schema": column_schema(df.collect_schema(), table_name),
        "dagster/uri": dg.MetadataValue.path(uri),
        "dagster/table_name": table_name,
        "delta_version": dg.MetadataValue.int(version),
        "table_row_count": dg.MetadataValue.int(int(parts["rows"].sum())),
        "rows_per_partition": dg.MetadataValue.md(
            markdown_table(parts.rename(lambda c: c.removeprefix("partition.")), max_rows=50)
        ),
        "preview": dg.MetadataValue.md(markdown_table(preview.collect(engine="streaming"), preview_rows)),
    }


def _height(df: pl.DataFrame | pl.LazyFrame) -> int:
    """Rows of a frame, or of a lazy one without collecting it."""
    return df.height if isinstance(df, pl.DataFrame) else df.select(pl.len()).collect().item()


def png_markdown(fig: Figure, alt: str = "plot", dpi: int = 80) -> dg.MetadataValue:
    """A matplotlib figure as a PNG embedded in markdown metadata.

    Build figures with `matplotlib.figure.Figure()` rather than pyplot: no GUI backend, no global state.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    encoded = base64.b64encode(buf.getvalue()).decode("ascii")
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{encoded})")
