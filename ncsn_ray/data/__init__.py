"""Datasets: sources, preparation into Parquet shards plus a manifest, and ingest into training workers."""
