"""An oracle for the event order, written from the documented rule alone.

  order_oracle.py labels --events FILE --out LABELS
      Labels at the events' own instants (where ties are) and a microsecond before.
  order_oracle.py check --events FILE --store DIR --ours TRAINING_SET --labels LABELS

DESIGN §4 and the README say: per entity, events apply in ascending
(event_time, event_id) — `ORDER BY ts, txn_id` in SQL — and an id seen before is a
duplicate (the first in that order is kept). txn_velocity's documented features are then
plain SQL over that order: the 1 h count, sum and maximum of amounts in (t − 1 h, t]
among the events applied so far, and the seconds since the previous transaction. Its
README and GUIDE add the wake-ups: a transaction at t leaves the 1 h, 24 h and 7 d
windows at t + 1 h, t + 24 h, t + 7 d, each rounded up to the whole minute (the
manifest's timer resolution), and at each such instant up to the input's latest event
time the card gets a row — the windows at that instant over the transactions at or
before it, after the transactions of that instant (secs_since_prev_txn: since the
last transaction). This script computes them with DuckDB from the raw events and
compares them with the rows
Lockstep stored (read back in the store's emission order: file row order within an
entity and instant), then checks a training set built with `--inclusive` against an
as-of join over the oracle's rows in which, of rows at one instant, the last applied
one wins. Nothing here reads Lockstep's code or its order columns.

Prints a JSON summary; exit 1 on any difference.
"""

import argparse
import json
import sys

import duckdb

HOUR_US = 3_600 * 1_000_000
MINUTE_US = 60 * 1_000_000
WINDOWS_US = [HOUR_US, 24 * HOUR_US, 7 * 24 * HOUR_US]


def make_labels(args):
    con = duckdb.connect()
    con.execute(
        f"""
        COPY (
          WITH instants AS (
            SELECT DISTINCT card_id, CAST(ts AS BIGINT) AS ts
            FROM read_json('{args.events}', format = 'newline_delimited',
                           columns = {{card_id: 'VARCHAR', ts: 'BIGINT'}})
          ), shaped AS (
            SELECT card_id, make_timestamptz(ts) AS label_time FROM instants
            UNION ALL
            SELECT card_id, make_timestamptz(ts - 1) FROM instants
          )
          SELECT row_number() OVER (ORDER BY card_id, label_time) - 1 AS label_id,
                 card_id, label_time, 0 AS outcome
          FROM shaped ORDER BY label_id
        ) TO '{args.out}' (FORMAT parquet)
        """
    )


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("labels")
    p.add_argument("--events", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("check")
    p.add_argument("--events", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--ours", required=True)
    p.add_argument("--labels", required=True)
    args = parser.parse_args()
    if args.command == "labels":
        make_labels(args)
    else:
        check(args)


def check(args):
    con = duckdb.connect()
    con.execute(
        f"""
        CREATE TABLE raw AS
        SELECT card_id, CAST(ts AS BIGINT) AS ts, CAST(amount AS DOUBLE) AS amount, txn_id
        FROM read_json('{args.events}', format = 'newline_delimited',
                       columns = {{card_id: 'VARCHAR', ts: 'BIGINT', amount: 'DOUBLE',
                                   merchant: 'VARCHAR', txn_id: 'VARCHAR'}})
        """
    )
    # Duplicates: the first copy of an id in (ts, id) order is applied. The generator
    # gives copies of one id either identical content or distinct times, so the first
    # copy is well defined without any hash.
    con.execute(
        """
        CREATE TABLE applied AS
        SELECT * FROM raw
        QUALIFY row_number() OVER (PARTITION BY card_id, txn_id ORDER BY ts) = 1
        """
    )
    # Each applied event's features over the events applied up to and including it.
    con.execute(
        f"""
        CREATE TABLE expected AS
        SELECT e.card_id, e.ts, e.txn_id,
               count(*) AS txn_count_1h,
               sum(p.amount) AS txn_sum_1h,
               max(p.amount) AS txn_max_1h,
               row_number() OVER (PARTITION BY e.card_id ORDER BY e.ts, e.txn_id) AS nth
        FROM applied e JOIN applied p
          ON p.card_id = e.card_id
         AND (p.ts < e.ts OR (p.ts = e.ts AND p.txn_id <= e.txn_id))
         AND p.ts > e.ts - {HOUR_US}
        GROUP BY e.card_id, e.ts, e.txn_id
        """
    )
    con.execute(
        """
        CREATE TABLE expected_full AS
        SELECT x.*,
               (x.ts - lag(x.ts) OVER (PARTITION BY x.card_id ORDER BY x.ts, x.txn_id)) / 1e6
                 AS secs_since_prev_txn
        FROM expected x
        """
    )
    # The wake-ups: where each applied transaction leaves each window, on the minute
    # grid, up to the input's latest event time; one per card and instant.
    windows = ", ".join(f"({w})" for w in WINDOWS_US)
    con.execute(
        f"""
        CREATE TABLE wakes AS
        SELECT DISTINCT a.card_id,
               (a.ts + w.width + {MINUTE_US - 1}) // {MINUTE_US} * {MINUTE_US} AS ts
        FROM applied a, (VALUES {windows}) w(width)
        WHERE (a.ts + w.width + {MINUTE_US - 1}) // {MINUTE_US} * {MINUTE_US}
              <= (SELECT max(ts) FROM raw)
        """
    )
    con.execute(
        f"""
        CREATE TABLE wake_rows AS
        SELECT g.card_id, g.ts,
               count(p.ts) AS txn_count_1h,
               coalesce(sum(p.amount), 0.0) AS txn_sum_1h,
               max(p.amount) AS txn_max_1h,
               (g.ts - (SELECT max(q.ts) FROM applied q
                        WHERE q.card_id = g.card_id AND q.ts <= g.ts)) / 1e6
                 AS secs_since_prev_txn
        FROM wakes g LEFT JOIN applied p
          ON p.card_id = g.card_id AND p.ts <= g.ts AND p.ts > g.ts - {HOUR_US}
        GROUP BY g.card_id, g.ts
        """
    )
    # Every row in the order the docs give: by time; at one instant the transactions
    # (by id), then the wake-up.
    con.execute(
        """
        CREATE TABLE expected_all AS
        SELECT *, row_number() OVER (PARTITION BY card_id ORDER BY ts, kind, txn_id) AS nth
        FROM (
          SELECT card_id, ts, txn_id, 0 AS kind, txn_count_1h, txn_sum_1h, txn_max_1h,
                 secs_since_prev_txn
          FROM expected_full
          UNION ALL
          SELECT card_id, ts, NULL, 1, txn_count_1h, txn_sum_1h, txn_max_1h,
                 secs_since_prev_txn
          FROM wake_rows
        )
        """
    )
    con.execute(
        f"""
        CREATE TABLE stored AS
        SELECT card_id, epoch_us(event_time) AS ts, txn_count_1h, txn_sum_1h, txn_max_1h,
               secs_since_prev_txn,
               row_number() OVER (PARTITION BY card_id
                                  ORDER BY event_time, filename, file_row_number) AS nth
        FROM read_parquet('{args.store}/txn_velocity/version=1.0.0/**/*.parquet',
                          hive_partitioning = false, filename = true, file_row_number = true)
        """
    )
    compared = "card_id, ts, nth, txn_count_1h, txn_sum_1h, txn_max_1h, secs_since_prev_txn"
    only_ours = con.execute(
        f"SELECT count(*) FROM (SELECT {compared} FROM stored "
        f"EXCEPT ALL SELECT {compared} FROM expected_all)"
    ).fetchone()[0]
    only_oracle = con.execute(
        f"SELECT count(*) FROM (SELECT {compared} FROM expected_all "
        f"EXCEPT ALL SELECT {compared} FROM stored)"
    ).fetchone()[0]
    example = con.execute(
        f"""SELECT 'ours' AS side, * FROM (SELECT {compared} FROM stored
                EXCEPT ALL SELECT {compared} FROM expected_all)
            UNION ALL
            SELECT 'oracle', * FROM (SELECT {compared} FROM expected_all
                EXCEPT ALL SELECT {compared} FROM stored)
            ORDER BY 2, 3, 4, 1 LIMIT 6"""
    ).fetchall()
    tied = con.execute(
        "SELECT count(*) FROM (SELECT card_id, ts FROM applied GROUP BY ALL HAVING count(*) > 1)"
    ).fetchone()[0]

    # The training set: of rows at one instant the last one (a wake-up after the
    # transactions, else the highest id) is what a label at or after that instant sees.
    con.execute(
        """
        CREATE TABLE last_at AS
        SELECT * FROM expected_all
        QUALIFY row_number() OVER (PARTITION BY card_id, ts ORDER BY nth DESC) = 1
        """
    )
    con.execute(
        f"""
        CREATE TABLE theirs AS
        SELECT l.label_id, f.txn_sum_1h, f.txn_max_1h, f.txn_count_1h
        FROM read_parquet('{args.labels}') l ASOF LEFT JOIN last_at f
          ON l.card_id = f.card_id AND epoch_us(l.label_time) >= f.ts
        """
    )
    con.execute(
        f"""
        CREATE TABLE ours AS
        SELECT label_id, txn_velocity__txn_sum_1h AS txn_sum_1h,
               txn_velocity__txn_max_1h AS txn_max_1h,
               txn_velocity__txn_count_1h AS txn_count_1h
        FROM read_parquet('{args.ours}')
        """
    )
    labels = con.execute("SELECT count(*) FROM theirs").fetchone()[0]
    set_only_ours = con.execute(
        "SELECT count(*) FROM (SELECT * FROM ours EXCEPT ALL SELECT * FROM theirs)"
    ).fetchone()[0]
    set_only_oracle = con.execute(
        "SELECT count(*) FROM (SELECT * FROM theirs EXCEPT ALL SELECT * FROM ours)"
    ).fetchone()[0]
    summary = {
        "events": con.execute("SELECT count(*) FROM raw").fetchone()[0],
        "applied": con.execute("SELECT count(*) FROM applied").fetchone()[0],
        "stored_rows": con.execute("SELECT count(*) FROM stored").fetchone()[0],
        "wake_rows": con.execute("SELECT count(*) FROM wake_rows").fetchone()[0],
        "tied_instants": tied,
        "only_ours": only_ours,
        "only_oracle": only_oracle,
        "example": [str(r) for r in example],
        "labels": labels,
        "training_only_ours": set_only_ours,
        "training_only_oracle": set_only_oracle,
    }
    print(json.dumps(summary))
    same = (
        only_ours == 0 and only_oracle == 0 and set_only_ours == 0 and set_only_oracle == 0
    )
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
