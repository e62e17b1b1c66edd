"""Dagster definitions, one folder per domain, discovered by `dg.load_from_defs_folder`."""
