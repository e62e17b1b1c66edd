"""s2vec_core: S2Vec geospatial embeddings from OpenStreetMap, as a plain library (no Dagster)."""
