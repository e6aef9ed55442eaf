"""Cross-checks a Lockstep training set with DuckDB's ASOF JOIN over the same files.

  asof_check.py labels --store DIR --group NAME@VERSION --key COL --out FILE --n N --seed S
      Labels drawn from the group's rows: a third exactly at a feature row's event time
      (where strict and inclusive differ), others a microsecond either side or anywhere
      in the range, a few for entities the group has never seen.

  asof_check.py check --store DIR --labels FILE --ours FILE [--inclusive] [--ttl-us N]
                      --group NAME@VERSION:KEY:F1,F2 [--group …]
      Computes the training set with DuckDB and compares it with ours row for row, in
      order. Of stored rows sharing a key and an event time the last one in its file is
      the one a reader sees (the store's emission order): DuckDB is told so explicitly.
      Prints a JSON summary; exit 1 on any difference.
"""

import argparse
import json
import sys

import duckdb


def group_files(store, name, version):
    return f"{store}/{name}/version={version}/**/*.parquet"


def make_labels(args):
    name, version = args.group.split("@")
    con = duckdb.connect()
    con.execute("SELECT setseed(?)", [args.seed / 1000.0])
    files = group_files(args.store, name, version)
    key = args.key
    n = args.n
    con.execute(
        f"""
        CREATE TABLE rows AS SELECT "{key}" AS k, event_time AS t
        FROM read_parquet('{files}', hive_partitioning = false)
        """
    )
    con.execute(
        f"""
        COPY (
          WITH picked AS (
            SELECT k, t, random() AS r FROM rows ORDER BY random() LIMIT {n}
          ), shaped AS (
            SELECT k AS "{key}",
                   CASE WHEN r < 0.34 THEN t
                        WHEN r < 0.5 THEN t + INTERVAL 1 MICROSECOND
                        WHEN r < 0.66 THEN t - INTERVAL 1 MICROSECOND
                        ELSE t + to_microseconds(CAST((random() - 0.3) * 86400e6 AS BIGINT))
                   END AS label_time,
                   CAST(random() < 0.1 AS INTEGER) AS outcome
            FROM picked
            UNION ALL
            SELECT 'never-seen-' || CAST(i AS VARCHAR), TIMESTAMPTZ '2024-01-01 12:00:00+00', 0
            FROM range(5) r(i)
          )
          SELECT row_number() OVER () - 1 AS label_id, * FROM shaped ORDER BY random()
        ) TO '{args.out}' (FORMAT parquet)
        """
    )
    print(con.execute(f"SELECT count(*) FROM '{args.out}'").fetchone()[0])


def check(args):
    con = duckdb.connect()
    con.execute(
        f"CREATE TABLE l0 AS SELECT * FROM read_parquet('{args.labels}', file_row_number = true)"
    )
    label_columns = [
        r[0] for r in con.execute("DESCRIBE l0").fetchall() if r[0] != "file_row_number"
    ]
    op = ">=" if args.inclusive else ">"
    ttl = args.ttl_us
    previous = "l0"
    matched = {}
    for i, spec in enumerate(args.group):
        head, key, features = spec.split(":")
        name, version = head.split("@")
        features = features.split(",")
        files = group_files(args.store, name, version)
        con.execute(
            f"""
            CREATE TABLE f{i} AS
            SELECT * FROM read_parquet('{files}', hive_partitioning = false,
                                       filename = true, file_row_number = true)
            QUALIFY row_number() OVER (
              PARTITION BY "{key}", event_time
              ORDER BY filename DESC, file_row_number DESC) = 1
            """
        )
        hidden = "f.is_deleted"
        if ttl is not None:
            hidden += f" OR epoch_us(l.label_time) - epoch_us(f.event_time) > {ttl}"
        picked = ", ".join(
            f'CASE WHEN {hidden} THEN NULL ELSE f."{feat}" END AS "{name}__{feat}"'
            for feat in features
        )
        con.execute(
            f"""
            CREATE TABLE l{i + 1} AS
            SELECT l.*, {picked},
                   (f.event_time IS NOT NULL AND NOT ({hidden})) AS seen_{i}
            FROM {previous} l ASOF LEFT JOIN f{i} f
              ON l."{key}" = f."{key}" AND l.label_time {op} f.event_time
            """
        )
        matched[name] = con.execute(
            f"SELECT count(*) FILTER (WHERE seen_{i}) FROM l{i + 1}"
        ).fetchone()[0]
        previous = f"l{i + 1}"
    ours_columns = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM '{args.ours}'").fetchall()]
    feature_columns = [c for c in ours_columns if c not in label_columns]
    theirs = ", ".join(f'"{c}"' for c in label_columns + feature_columns)
    con.execute(
        f"""CREATE TABLE theirs AS SELECT file_row_number AS pos, {theirs}
            FROM {previous}"""
    )
    con.execute(
        f"""CREATE TABLE ours AS SELECT file_row_number AS pos, {theirs}
            FROM read_parquet('{args.ours}', file_row_number = true)"""
    )
    rows = con.execute("SELECT count(*) FROM ours").fetchone()[0]
    expected = con.execute("SELECT count(*) FROM l0").fetchone()[0]
    only_ours = con.execute(
        "SELECT count(*) FROM (SELECT * FROM ours EXCEPT ALL SELECT * FROM theirs)"
    ).fetchone()[0]
    only_theirs = con.execute(
        "SELECT count(*) FROM (SELECT * FROM theirs EXCEPT ALL SELECT * FROM ours)"
    ).fetchone()[0]
    example = con.execute(
        "SELECT * FROM (SELECT * FROM ours EXCEPT ALL SELECT * FROM theirs) ORDER BY pos LIMIT 3"
    ).fetchall()
    summary = {
        "rows": rows,
        "labels": expected,
        "columns": ours_columns,
        "only_ours": only_ours,
        "only_duckdb": only_theirs,
        "matched": matched,
        "example": [str(r) for r in example],
    }
    print(json.dumps(summary))
    same = rows == expected and only_ours == 0 and only_theirs == 0
    sys.exit(0 if same else 1)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("labels")
    p.add_argument("--store", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("check")
    p.add_argument("--store", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--ours", required=True)
    p.add_argument("--inclusive", action="store_true")
    p.add_argument("--ttl-us", type=int)
    p.add_argument("--group", action="append", required=True)
    args = parser.parse_args()
    if args.command == "labels":
        make_labels(args)
    else:
        check(args)


if __name__ == "__main__":
    main()
