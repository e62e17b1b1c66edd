"""s2vec_assets: the Dagster layer over s2vec_core."""
