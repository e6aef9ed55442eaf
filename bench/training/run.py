"""Training-set benchmark: Lockstep vs DuckDB ASOF JOIN vs Polars join_asof, one run.

The same Parquet files for all: 1M labels over 1M cards, two groups in the offline
store (`txn_velocity`, backfilled by the batch host from 10M generated transactions,
and `card_profile`, 10M synthetic rows), each contender joining both. Time is wall
time around each process; peak RSS is the process tree's, sampled every 50 ms. Then
Lockstep again under --memory-limit 512MiB, which must give the same rows.

usage: run.py --lockstep BIN --plugin WASM --group-writer BIN [--labels N] [--rows N]
              [--cards M] [--work DIR]
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "batch"))
from run import ensure_events, measure  # noqa: E402

GROUPS = ["txn_velocity", "card_profile"]


def ensure_store(args, work):
    store = os.path.join(work, "store")
    if not os.path.isdir(os.path.join(store, "txn_velocity")):
        events = ensure_events(args.lockstep, os.path.join(work, "..", "bench-batch"), args.rows, args.cards)
        subprocess.run(
            [args.lockstep, "batch", "run", "--plugin", args.plugin, "--source", events,
             "--offline-store", store],
            check=True,
        )
    if not os.path.isdir(os.path.join(store, "card_profile")):
        subprocess.run(
            [args.group_writer, store, str(args.rows), str(args.cards), "7"], check=True
        )
    return store


def ensure_labels(work, n, cards):
    import duckdb

    path = os.path.join(work, f"labels-{n}.parquet")
    if not os.path.exists(path):
        duckdb.sql(
            f"""
            COPY (
              SELECT i AS label_id,
                     'card-' || lpad(CAST(hash(i) % {cards} AS VARCHAR), 6, '0') AS card_id,
                     TIMESTAMPTZ '2024-01-01 00:00:00+00'
                       + to_microseconds(CAST(hash(i * 7 + 1) % 2592000000000 AS BIGINT)) AS label_time,
                     CAST(hash(i * 3) % 10 = 0 AS INTEGER) AS is_fraud
              FROM range({n}) t(i)
            ) TO '{path}' (FORMAT parquet)
            """
        )
    return path


def compare(a, b, key="label_id"):
    """(rows, rows identical in every column, same order) of two outputs."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    rows = con.execute(f"SELECT count(*) FROM '{a}'").fetchone()[0]
    differ = con.execute(
        f"SELECT count(*) FROM (SELECT * FROM '{a}' EXCEPT ALL SELECT * FROM '{b}')"
    ).fetchone()[0]
    same_order = con.execute(
        f"""SELECT count(*) FROM read_parquet('{a}', file_row_number = true) x
            JOIN read_parquet('{b}', file_row_number = true) y USING (file_row_number)
            WHERE x.{key} <> y.{key}"""
    ).fetchone()[0] == 0
    return rows, rows - differ, same_order


def agreement(ours, theirs):
    """Labels whose features are all equal (null = null) in both outputs."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    columns = [
        r[0] for r in con.execute(f"DESCRIBE SELECT * FROM '{ours}'").fetchall() if "__" in r[0]
    ]
    same = " AND ".join(f'o."{c}" IS NOT DISTINCT FROM t."{c}"' for c in columns)
    return con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE {same}) FROM '{ours}' o JOIN '{theirs}' t USING (label_id)"
    ).fetchone()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lockstep", required=True)
    p.add_argument("--plugin", required=True)
    p.add_argument("--group-writer", required=True)
    p.add_argument("--labels", type=int, default=1_000_000)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--cards", type=int, default=1_000_000)
    p.add_argument("--work", default=os.path.join(HERE, "..", "..", "target", "bench-training"))
    args = p.parse_args()
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    store = ensure_store(args, work)
    labels = ensure_labels(work, args.labels, args.cards)
    threads = os.cpu_count() or 2
    # Every contender reads the same files: read them once first, so that none pays
    # for a cold page cache the others do not.
    for root, _, files in os.walk(store):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                while f.read(1 << 20):
                    pass
    out = {name: os.path.join(work, f"out-{name}.parquet")
           for name in ["lockstep", "lockstep-512MiB", "duckdb", "polars"]}
    ours = [args.lockstep, "training-set", "--labels", labels, "--offline-store", store,
            "--group", GROUPS[0], "--group", GROUPS[1]]
    results = {}
    results["lockstep"] = measure("lockstep", ours + ["--out", out["lockstep"]],
                                  os.path.join(work, "lockstep.log"))
    results["duckdb"] = measure(
        "duckdb",
        [sys.executable, os.path.join(HERE, "asof_duckdb.py"), labels, store, out["duckdb"],
         str(threads), ",".join(GROUPS)],
        os.path.join(work, "duckdb.log"),
    )
    results["polars"] = measure(
        "polars",
        [sys.executable, os.path.join(HERE, "asof_polars.py"), labels, store, out["polars"],
         ",".join(GROUPS)],
        os.path.join(work, "polars.log"),
    )
    results["lockstep-512MiB"] = measure(
        "lockstep-512MiB",
        ours + ["--out", out["lockstep-512MiB"], "--memory-limit", "512MiB"],
        os.path.join(work, "lockstep-512MiB.log"),
    )
    with open(os.path.join(work, "lockstep.log")) as f:
        print(f.read(), end="")
    print(f"\n{args.labels:,} labels x {len(GROUPS)} groups of {args.rows:,} rows "
          f"({args.cards:,} cards), {threads} cores, same files\n")
    print(f"{'':16} {'time s':>8} {'labels/s':>10} {'peak RSS MiB':>13} {'time vs duckdb':>15}")
    base = results["duckdb"][0]
    report = {"labels": args.labels, "rows_per_group": args.rows, "cards": args.cards,
              "groups": GROUPS, "threads": threads}
    for name, (secs, rss, _) in results.items():
        print(f"{name:16} {secs:8.2f} {args.labels / secs:10,.0f} {rss / 2**20:13,.0f} "
              f"{secs / base:14.2f}x")
        report[name] = {"seconds": secs, "peak_rss_bytes": rss}
    rows, same, ordered = compare(out["lockstep"], out["lockstep-512MiB"])
    print(f"\n512MiB run: {same:,} of {rows:,} rows identical, label order "
          f"{'kept' if ordered else 'NOT kept'}")
    report["memory_limited_identical"] = same == rows and ordered
    for peer in ["duckdb", "polars"]:
        total, agree = agreement(out["lockstep"], out[peer])
        print(f"{peer}: {agree:,} of {total:,} labels have every feature equal "
              "(the rest: the latest row ties with another at the same event time)")
        report[f"agreement_{peer}"] = {"labels": total, "equal": agree}
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"results: {os.path.join(work, 'results.json')}")
    if not report["memory_limited_identical"]:
        sys.exit("the memory-limited run differs")


if __name__ == "__main__":
    main()
