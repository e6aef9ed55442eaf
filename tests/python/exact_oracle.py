"""An oracle for `training-set --exact`, written from the documented rule alone.

  exact_oracle.py labels --events FILE --out LABELS --n N --seed S
      Labels for random cards at random instants, many of them on purpose right at,
      just after or just before an instant where a transaction leaves a window, some
      for cards that have no transactions at all.
  exact_oracle.py check --events FILE --labels LABELS --exact SET [--inclusive]
                        [--join SET]

The README and GUIDE say: with --exact, a label at L gets txn_velocity's features for
windows ending at L over the card's transactions strictly before L (at or before L with
--inclusive), duplicates (a repeated txn_id) counted once: per window W of 1 h, 24 h
and 7 d the count, sum, mean and maximum of the amounts of the transactions at t with
L - W < t, the distinct merchants of the 24 h window, and the seconds since the last
transaction; all null for a card with no transaction yet. This script computes that
with DuckDB from the raw events and compares it with the exact training set (counts,
maxima and distinct merchants exactly, sums and means to 1e-9 relative: SQL sums in
another order).

With --join (the same labels joined strictly with the stored rows, wake-up rows
included) it also checks the promise that both agree wherever both apply, bit for
bit: labels at or before the input's end with no window exit of their card within the
minute before them (a wake-up is rounded up to the next whole minute), on every
window feature (`secs_since_prev_txn` is the time since the last transaction at the
row's own instant, so it differs by nature).

Prints a JSON summary; exit 1 on any difference.
"""

import argparse
import json
import math
import random
import struct
import sys

import duckdb

HOUR_US = 3_600 * 1_000_000
MINUTE_US = 60 * 1_000_000
WINDOWS = [("1h", HOUR_US), ("24h", 24 * HOUR_US), ("7d", 7 * 24 * HOUR_US)]


def read_events(con, path):
    con.execute(
        f"""
        CREATE TABLE raw AS
        SELECT card_id, CAST(ts AS BIGINT) AS ts, CAST(amount AS DOUBLE) AS amount,
               merchant, txn_id
        FROM read_json('{path}', format = 'newline_delimited',
                       columns = {{card_id: 'VARCHAR', ts: 'BIGINT', amount: 'DOUBLE',
                                  merchant: 'VARCHAR', txn_id: 'VARCHAR'}})
        """
    )
    # A repeated id is a duplicate: the first in (ts, txn_id) order is kept.
    con.execute(
        """
        CREATE TABLE events AS
        SELECT card_id, ts, amount, merchant FROM (
          SELECT *, row_number() OVER (PARTITION BY card_id, txn_id ORDER BY ts, txn_id) AS k
          FROM raw) WHERE k = 1
        """
    )


def make_labels(args):
    con = duckdb.connect()
    read_events(con, args.events)
    rng = random.Random(args.seed)
    events = con.execute("SELECT card_id, ts FROM events ORDER BY card_id, ts").fetchall()
    cards = sorted({c for c, _ in events})
    lo, hi = events[0][1], max(t for _, t in events)
    rows = []
    for i in range(args.n):
        pick = rng.random()
        card, t = events[rng.randrange(len(events))]
        if pick < 0.35:
            # At, just before or just after a window exit of this card's transaction.
            _, width = rng.choice(WINDOWS)
            at = t + width + rng.choice([0, 1, -1, MINUTE_US // 2, MINUTE_US, 2 * MINUTE_US])
        elif pick < 0.55:
            at = t + rng.choice([0, 1, rng.randrange(1, HOUR_US)])
        elif pick < 0.95:
            card = rng.choice(cards)
            at = rng.randrange(lo - HOUR_US, hi + 8 * 24 * HOUR_US)
        else:
            card = f"card-unknown-{i % 7}"
            at = rng.randrange(lo, hi)
        rows.append((i, card, at, i % 2))
    con.execute("CREATE TABLE labels (label_id BIGINT, card_id VARCHAR, at_us BIGINT, outcome BIGINT)")
    con.executemany("INSERT INTO labels VALUES (?, ?, ?, ?)", rows)
    con.execute(
        f"""
        COPY (SELECT label_id, card_id, make_timestamptz(at_us) AS label_time, outcome
              FROM labels ORDER BY label_id) TO '{args.out}' (FORMAT parquet)
        """
    )


def bits(x):
    return None if x is None else struct.pack("<d", x)


def close(a, b):
    if a is None or b is None:
        return a is None and b is None
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b)) + 1e-9


def check(args):
    con = duckdb.connect()
    read_events(con, args.events)
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        f"""
        CREATE TABLE labels AS
        SELECT label_id, card_id, epoch_us(label_time) AS at
        FROM read_parquet('{args.labels}')
        """
    )
    visible = "e.ts <= l.at" if args.inclusive else "e.ts < l.at"
    parts = []
    for name, width in WINDOWS:
        inside = f"l.at - e.ts < {width}"
        parts.append(
            f"""count(*) FILTER (WHERE {inside}) AS txn_count_{name},
                coalesce(sum(e.amount) FILTER (WHERE {inside}), 0.0) AS txn_sum_{name},
                max(e.amount) FILTER (WHERE {inside}) AS txn_max_{name}"""
        )
    con.execute(
        f"""
        CREATE TABLE oracle AS
        SELECT l.label_id, count(e.ts) AS seen, {", ".join(parts)},
               count(DISTINCT e.merchant) FILTER (WHERE l.at - e.ts < {24 * HOUR_US})
                 AS distinct_merchants_24h,
               (l.at - max(e.ts)) / 1e6 AS secs_since_prev_txn
        FROM labels l LEFT JOIN events e ON e.card_id = l.card_id AND {visible}
        GROUP BY l.label_id, l.at
        """
    )
    features = []
    for name, _ in WINDOWS:
        features += [f"txn_count_{name}", f"txn_sum_{name}", f"txn_mean_{name}", f"txn_max_{name}"]
    features += ["secs_since_prev_txn", "distinct_merchants_24h"]
    cols = ", ".join(f"o.{c}" for c in features if "mean" not in c)
    got_cols = ", ".join(f"x.txn_velocity__{c}" for c in features)
    rows = con.execute(
        f"""
        SELECT o.label_id, o.seen, {cols}, {got_cols}
        FROM oracle o JOIN read_parquet('{args.exact}') x ON x.label_id = o.label_id
        ORDER BY o.label_id
        """
    ).fetchall()
    n_labels = con.execute("SELECT count(*) FROM labels").fetchone()[0]
    plain = [c for c in features if "mean" not in c]
    mismatches = []
    with_state = 0
    for row in rows:
        label, seen = row[0], row[1]
        want = dict(zip(plain, row[2 : 2 + len(plain)]))
        got = dict(zip(features, row[2 + len(plain) :]))
        for name, _ in WINDOWS:
            n, s = want[f"txn_count_{name}"], want[f"txn_sum_{name}"]
            want[f"txn_mean_{name}"] = s / n if n else None
        if seen == 0:
            want = {c: None for c in features}
        else:
            with_state += 1
        for c in features:
            exact = c.startswith("txn_count") or c.startswith("distinct") or c.startswith("txn_max")
            same = (want[c] == got[c]) if exact else close(want[c], got[c])
            if not same:
                mismatches.append({"label_id": label, "feature": c, "oracle": want[c], "ours": got[c]})
    report = {
        "labels": n_labels,
        "compared": len(rows),
        "labels_with_state": with_state,
        "mismatches": len(mismatches),
        "first_mismatches": mismatches[:10],
    }
    ok = len(rows) == n_labels and not mismatches

    if args.join:
        end = con.execute("SELECT max(ts) FROM events").fetchone()[0]
        exits = " OR ".join(
            f"(e.ts + {w} > l.at - {MINUTE_US} AND e.ts + {w} <= l.at)" for _, w in WINDOWS
        )
        comparable = [
            r[0]
            for r in con.execute(
                f"""
                SELECT l.label_id FROM labels l
                WHERE l.at <= {end} AND NOT EXISTS (
                  SELECT 1 FROM events e WHERE e.card_id = l.card_id AND ({exits}))
                ORDER BY l.label_id
                """
            ).fetchall()
        ]
        window_features = [c for c in features if c != "secs_since_prev_txn"]
        pairs = ", ".join(f"x.txn_velocity__{c}, j.txn_velocity__{c}" for c in window_features)
        joined = con.execute(
            f"""
            SELECT x.label_id, {pairs}
            FROM read_parquet('{args.exact}') x JOIN read_parquet('{args.join}') j
              ON j.label_id = x.label_id
            ORDER BY x.label_id
            """
        ).fetchall()
        wanted = set(comparable)
        differ = []
        agreed_with_values = 0
        for row in joined:
            if row[0] not in wanted:
                continue
            values = row[1:]
            for i, c in enumerate(window_features):
                a, b = values[2 * i], values[2 * i + 1]
                if bits(a) != bits(b) if isinstance(a, float) or isinstance(b, float) else a != b:
                    differ.append({"label_id": row[0], "feature": c, "exact": a, "join": b})
            if values[0] is not None:
                agreed_with_values += 1
        report["join_comparable"] = len(comparable)
        report["join_comparable_with_values"] = agreed_with_values
        report["join_differences"] = len(differ)
        report["first_join_differences"] = differ[:10]
        ok = ok and not differ
    print(json.dumps(report, default=str))
    return 0 if ok else 1


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    lab = sub.add_parser("labels")
    lab.add_argument("--events", required=True)
    lab.add_argument("--out", required=True)
    lab.add_argument("--n", type=int, default=3000)
    lab.add_argument("--seed", type=int, default=1)
    chk = sub.add_parser("check")
    chk.add_argument("--events", required=True)
    chk.add_argument("--labels", required=True)
    chk.add_argument("--exact", required=True)
    chk.add_argument("--join")
    chk.add_argument("--inclusive", action="store_true")
    args = parser.parse_args()
    if args.command == "labels":
        make_labels(args)
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
