"""The extraction monitor: the request log as SQL (DuckDB), per-account features, baselines and their scores."""
