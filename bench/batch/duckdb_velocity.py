"""txn_velocity's features with DuckDB SQL window functions (the peer of `lockstep batch run`).

Reads the events Parquet, drops repeated transactions (same txn_id), computes per card
the counts, sums, means and maxima over the last 1 h, 24 h and 7 d, the seconds since
the previous transaction and the distinct merchants in the last 24 h, and writes
hour-partitioned Snappy Parquet, as Lockstep's offline store does.

Each event's features count the events applied up to and including it, in the
documented order (event time, then txn_id): the events of `(t - W, t)` (a RANGE frame
that ends before the instant) plus those at `t` up to this one in txn_id order (a ROWS
frame over the instant's peers). So cards with several transactions at one timestamp
are computed as Lockstep computes them, and compared too.

usage: duckdb_velocity.py EVENTS.parquet OUT_DIR THREADS
"""

import sys

import duckdb

events, out, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = duckdb.connect()
con.execute(f"SET threads = {threads}")
con.execute("SET preserve_insertion_order = false")


def before(name, micros):
    """Events of the card in (t - W, t): strictly before this instant."""
    return (
        f"{name} AS (PARTITION BY card_id ORDER BY ts "
        f"RANGE BETWEEN INTERVAL '{micros - 1} microseconds' PRECEDING "
        f"AND INTERVAL '1 microseconds' PRECEDING)"
    )


HOUR = 3_600_000_000
features = []
for w in ["1h", "24h", "7d"]:
    count = f"(count(*) OVER before{w} + nth_at_instant)"
    total = f"(coalesce(sum(amount) OVER before{w}, 0) + sum(amount) OVER at_instant)"
    features += [
        f"{count} AS txn_count_{w}",
        f"{total} AS txn_sum_{w}",
        f"{total} / {count} AS txn_mean_{w}",
        f"greatest(max(amount) OVER before{w}, max(amount) OVER at_instant) AS txn_max_{w}",
    ]
features += [
    "(epoch_us(ts) - epoch_us(lag(ts) OVER (PARTITION BY card_id ORDER BY ts, txn_id))) / 1e6"
    " AS secs_since_prev_txn",
    # The merchants of (t - 24 h, t), plus those of the instant's events so far that
    # are new: first of their merchant at this instant, and not seen in (t - 24 h, t).
    "count(DISTINCT merchant) OVER before24h + sum(new_merchant) OVER at_instant"
    " AS distinct_merchants_24h",
]
windows = ", ".join(
    [before("before1h", HOUR), before("before24h", 24 * HOUR), before("before7d", 7 * 24 * HOUR)]
    + ["at_instant AS (PARTITION BY card_id, ts ORDER BY txn_id "
       "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"]
)
sql = f"""
COPY (
  WITH deduplicated AS (
    SELECT * FROM read_parquet('{events}')
    QUALIFY row_number() OVER (PARTITION BY txn_id ORDER BY ts) = 1
  ),
  ranked AS (
    SELECT *,
           row_number() OVER (PARTITION BY card_id, ts ORDER BY txn_id) AS nth_at_instant,
           CAST(row_number() OVER (PARTITION BY card_id, ts, merchant ORDER BY txn_id) = 1
                AND coalesce(max(ts) OVER (
                      PARTITION BY card_id, merchant ORDER BY ts
                      RANGE BETWEEN UNBOUNDED PRECEDING AND INTERVAL '1 microseconds' PRECEDING)
                    <= ts - INTERVAL '{24 * HOUR} microseconds', true) AS INTEGER)
             AS new_merchant
    FROM deduplicated
  ),
  featured AS (
    SELECT card_id, ts AS event_time, {", ".join(features)}
    FROM ranked
    WINDOW {windows}
  )
  SELECT *, year(event_time) AS year, month(event_time) AS month,
         day(event_time) AS day, hour(event_time) AS hour
  FROM featured
) TO '{out}' (FORMAT parquet, PARTITION_BY (year, month, day, hour), COMPRESSION snappy,
              OVERWRITE_OR_IGNORE true)
"""
con.execute(sql)
