"""The s2vec code location: everything under `s2vec_assets/defs/`, found by Dagster's defs loader.

`dagster dev` (workspace.yaml), `dagster asset materialize -m s2vec_assets.definitions` and
`python -m s2vec_assets.run` all load this.
"""

from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).resolve().parent)
