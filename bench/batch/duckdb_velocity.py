"""txn_velocity's features with DuckDB SQL window functions (the peer of `lockstep batch run`).

Reads the events Parquet, drops repeated transactions (same txn_id), computes per card
the counts, sums, means and maxima over the last 1 h, 24 h and 7 d, the seconds since
the previous transaction and the distinct merchants in the last 24 h, and writes
hour-partitioned Snappy Parquet, as Lockstep's offline store does.

Windows are RANGE frames over the event time: `(t - W, t]`. They differ from Lockstep's
per-event semantics only where one card has several transactions at the same
timestamp (SQL treats them as peers and includes the later ones too).

usage: duckdb_velocity.py EVENTS.parquet OUT_DIR THREADS
"""

import sys

import duckdb

events, out, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = duckdb.connect()
con.execute(f"SET threads = {threads}")
con.execute("SET preserve_insertion_order = false")


def window(name, micros):
    return (
        f"{name} AS (PARTITION BY card_id ORDER BY ts "
        f"RANGE BETWEEN INTERVAL '{micros - 1} microseconds' PRECEDING AND CURRENT ROW)"
    )


HOUR = 3_600_000_000
features = []
for w in ["1h", "24h", "7d"]:
    features += [
        f"count(*) OVER w{w} AS txn_count_{w}",
        f"sum(amount) OVER w{w} AS txn_sum_{w}",
        f"avg(amount) OVER w{w} AS txn_mean_{w}",
        f"max(amount) OVER w{w} AS txn_max_{w}",
    ]
features += [
    "(epoch_us(ts) - epoch_us(lag(ts) OVER (PARTITION BY card_id ORDER BY ts, txn_id))) / 1e6"
    " AS secs_since_prev_txn",
    "count(DISTINCT merchant) OVER w24h AS distinct_merchants_24h",
]
sql = f"""
COPY (
  WITH deduplicated AS (
    SELECT * FROM read_parquet('{events}')
    QUALIFY row_number() OVER (PARTITION BY txn_id ORDER BY ts) = 1
  ),
  featured AS (
    SELECT card_id, ts AS event_time, {", ".join(features)}
    FROM deduplicated
    WINDOW {window("w1h", HOUR)}, {window("w24h", 24 * HOUR)}, {window("w7d", 7 * 24 * HOUR)}
  )
  SELECT *, year(event_time) AS year, month(event_time) AS month,
         day(event_time) AS day, hour(event_time) AS hour
  FROM featured
) TO '{out}' (FORMAT parquet, PARTITION_BY (year, month, day, hour), COMPRESSION snappy,
              OVERWRITE_OR_IGNORE true)
"""
con.execute(sql)
