"""The pinned install steps of every peer environment (one place; the venv cache key is derived from it)."""

from __future__ import annotations

# Each value: install steps run in order, each a list of pinned requirements.
PEER_ENVS: dict[str, list[list[str]]] = {
    "s2sphere": [["s2sphere==0.2.5", "numpy==2.4.6"]],
    "pyosmium": [["osmium==4.3.2", "numpy==2.4.6"]],
    "pyrosm": [["pyrosm==0.25.0"]],
    "quackosm": [["quackosm==0.19.0", "duckdb==1.4.4", "duckdb-ext-spatial==1.4.4.20260205"]],
    # torch first so the CPU wheel wins; srai 0.10.2 needs quackosm 0.18.x and polars < 2 (PEERS.md);
    # DuckDB pinned to the release whose spatial extension ships on PyPI, for the offline HOME trick.
    "srai": [
        ["torch==2.13.0"],
        [
            "torch==2.13.0",
            "srai[torch]==0.10.2",
            "quackosm==0.18.2",
            "polars<2",
            "duckdb==1.4.4",
            "duckdb-ext-spatial==1.4.4.20260205",
        ],
    ],
}
