"""Reads a Lockstep offline store the way a data engineer would, with DuckDB and with
pyarrow, and prints what they see as JSON. Usage: read_offline_store.py ROOT GROUP"""
import json
import sys

import duckdb
import pyarrow.dataset as ds

root, group = sys.argv[1], sys.argv[2]
glob = f"{root}/{group}/**/*.parquet"

con = duckdb.connect()
src = f"read_parquet('{glob}', hive_partitioning = true)"


def rows(sql):
    return con.execute(sql).fetchall()


duck = {
    # DESCRIBE gives (name, type, ...) per column without fetching timestamps.
    "columns": [[r[0], r[1]] for r in rows(f"DESCRIBE SELECT * FROM {src}")],
    "rows": rows(f"SELECT count(*) FROM {src}")[0][0],
    "partitions": rows(f"SELECT DISTINCT version, year, month, day, hour FROM {src} ORDER BY ALL"),
    "total": rows(f"SELECT sum(total) FROM {src}")[0][0],
}

dataset = ds.dataset(f"{root}/{group}", format="parquet", partitioning="hive")
table = dataset.to_table()
arrow = {
    "columns": [[f.name, str(f.type)] for f in table.schema],
    "rows": table.num_rows,
}
print(json.dumps({"duckdb": duck, "pyarrow": arrow}, default=str))
