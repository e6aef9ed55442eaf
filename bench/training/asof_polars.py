"""Polars' side of the training-set benchmark: one join_asof per group.

usage: asof_polars.py LABELS STORE OUT GROUP[,GROUP…]
"""

import sys

import polars as pl

labels, store, out, groups = sys.argv[1:5]
stored = {"card_id", "event_time", "write_time", "api_invocation_time", "is_deleted", "plugin_hash"}
frame = pl.scan_parquet(labels).sort("label_time")
for group in groups.split(","):
    features = pl.scan_parquet(
        f"{store}/{group}/version=1.0.0/**/*.parquet", hive_partitioning=False
    )
    names = [c for c in features.collect_schema().names() if c not in stored]
    features = (
        features.select(["card_id", "event_time", *names])
        .rename({c: f"{group}__{c}" for c in names})
        .sort("event_time")
    )
    frame = frame.join_asof(
        features,
        left_on="label_time",
        right_on="event_time",
        by="card_id",
        strategy="backward",
        allow_exact_matches=False,
    ).drop("event_time")
frame.collect().write_parquet(out)
