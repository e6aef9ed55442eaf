"""DuckDB's side of the training-set benchmark: one ASOF LEFT JOIN per group.

usage: asof_duckdb.py LABELS STORE OUT THREADS GROUP[,GROUP…]
"""

import sys

import duckdb

labels, store, out, threads, groups = sys.argv[1:6]
con = duckdb.connect()
con.execute(f"SET threads = {int(threads)}")
query = f"SELECT * FROM read_parquet('{labels}')"
for i, group in enumerate(groups.split(",")):
    files = f"{store}/{group}/version=1.0.0/**/*.parquet"
    columns = [
        r[0]
        for r in con.execute(
            f"DESCRIBE SELECT * FROM read_parquet('{files}', hive_partitioning = false)"
        ).fetchall()
    ]
    stored = {"card_id", "event_time", "write_time", "api_invocation_time", "is_deleted", "plugin_hash"}
    features = ", ".join(f'f{i}."{c}" AS "{group}__{c}"' for c in columns if c not in stored)
    query = f"""
        SELECT l.*, {features}
        FROM ({query}) l ASOF LEFT JOIN read_parquet('{files}', hive_partitioning = false) f{i}
          ON l.card_id = f{i}.card_id AND l.label_time > f{i}.event_time
    """
con.execute(f"COPY ({query}) TO '{out}' (FORMAT parquet)")
