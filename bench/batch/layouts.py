"""Table-format benchmark: the plain layout vs a Delta table, side by side in one run.

Three cases, each run for both layouts in alternating order (`--rounds` times, the
median reported), every run a fresh process writing a fresh store:

- dense: the backfill benchmark's 10M transactions over 1M cards (721 hours);
- training: a training set of 1M labels read from each layout's store (the as-of join
  reads the plain layout's hour files or the Delta table's snapshot);
- sparse: 300k transactions spread over 300 days (~7,200 hours of a few dozen rows),
  where committing thousands of small files is most of the job.

For each run: wall time, peak RSS of the process tree, the commit's share (printed by
`batch run`), and the files the store holds. The two layouts must hold the same rows
(count and an order-free digest, read by DuckDB for the plain layout and by the
`deltalake` package for the table), and the two training sets must be equal.

usage: layouts.py --lockstep BIN --plugin WASM [--events N] [--cards M] [--rounds R]
                  [--sparse-events N] [--labels N] [--work DIR]
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run import ensure_events, measure  # noqa: E402

LAYOUTS = ["plain", "delta"]


def sparse_events(lockstep, work, n):
    """`n` transactions spread over 300 days: the generator's month stretched ×10."""
    import duckdb

    path = os.path.join(work, f"sparse-{n}.parquet")
    if not os.path.exists(path):
        month = os.path.join(work, f"sparse-{n}-month.parquet")
        subprocess.run(
            [lockstep, "gen", "events", "--kind", "transactions", "--rows", str(n),
             "--entities", "20000", "--seed", "7", "--out", month],
            check=True,
        )
        duckdb.sql(
            f"""
            COPY (
              SELECT * REPLACE (
                TIMESTAMPTZ '2024-01-01 00:00:00+00'
                  + to_microseconds(CAST((epoch_us(ts) - 1704067200000000) * 10 AS BIGINT)) AS ts)
              FROM read_parquet('{month}')
            ) TO '{path}' (FORMAT parquet)
            """
        )
        os.remove(month)
    return path


def files_in(store):
    data = logs = 0
    for root, _, names in os.walk(store):
        for n in names:
            if n.endswith(".parquet"):
                data += 1
            elif "_delta_log" in root:
                logs += 1
    return data, logs


def rows_digest(store, layout):
    """Row count and an order-free digest of the stored rows, stamps left out."""
    import duckdb

    version = os.path.join(store, "txn_velocity", "version=1.0.0")
    if layout == "plain":
        rel = f"read_parquet('{version}/**/*.parquet', hive_partitioning = false)"
    else:
        import deltalake

        dataset = deltalake.DeltaTable(version).to_pyarrow_dataset()  # noqa: F841
        rel = "dataset"
    con = duckdb.connect()
    if layout != "plain":
        con.register("dataset", dataset)
    return con.sql(
        f"SELECT count(*), sum(hash(card_id, event_time, txn_count_24h, txn_sum_24h, txn_max_7d)) "
        f"FROM {rel}"
    ).fetchall()[0]


def labels_file(work, events, n):
    import duckdb

    path = os.path.join(work, f"labels-{n}.parquet")
    if not os.path.exists(path):
        duckdb.sql(
            f"""
            COPY (
              SELECT card_id, ts + INTERVAL 1 SECOND AS label_time
              FROM read_parquet('{events}') USING SAMPLE {n} ROWS (reservoir, 42)
            ) TO '{path}' (FORMAT parquet)
            """
        )
    return path


def set_digest(path):
    import duckdb

    return duckdb.sql(
        f"SELECT count(*), sum(hash(COLUMNS(*))) FROM read_parquet('{path}')"
    ).fetchall()[0]


def backfill_case(args, work, name, events, threads):
    """Backfills `events` into a fresh store per layout, `rounds` times alternating."""
    runs = {layout: [] for layout in LAYOUTS}
    stores = {}
    for r in range(args.rounds):
        order = LAYOUTS if r % 2 == 0 else LAYOUTS[::-1]
        for layout in order:
            store = os.path.join(work, f"{name}-{layout}")
            shutil.rmtree(store, ignore_errors=True)
            log = os.path.join(work, f"{name}-{layout}.log")
            secs, rss, _ = measure(
                f"{name} {layout} (round {r + 1})",
                [args.lockstep, "batch", "run", "--plugin", args.plugin, "--source", events,
                 "--offline-store", store, "--partitions", str(threads), "--no-cache",
                 "--table-format", layout],
                log,
            )
            with open(log) as f:
                said = f.read()
            commit = re.search(r"\(([\d.]+) s to commit\)", said)
            runs[layout].append((secs, rss, float(commit.group(1)) if commit else float("nan")))
            stores[layout] = store
    out = {}
    for layout in LAYOUTS:
        secs = statistics.median(r[0] for r in runs[layout])
        rss = max(r[1] for r in runs[layout])
        commit = statistics.median(r[2] for r in runs[layout])
        data, logs = files_in(stores[layout])
        out[layout] = {"seconds": secs, "all_seconds": [r[0] for r in runs[layout]],
                       "peak_rss_bytes": rss, "commit_seconds": commit,
                       "data_files": data, "log_files": logs,
                       "rows_digest": rows_digest(stores[layout], layout)}
    return out, stores


def training_case(args, work, stores, labels):
    runs = {layout: [] for layout in LAYOUTS}
    digests = {}
    for r in range(args.rounds):
        order = LAYOUTS if r % 2 == 0 else LAYOUTS[::-1]
        for layout in order:
            out = os.path.join(work, f"training-{layout}.parquet")
            secs, rss, _ = measure(
                f"training set over {layout} (round {r + 1})",
                [args.lockstep, "training-set", "--labels", labels, "--group",
                 "txn_velocity@1.0.0", "--offline-store", stores[layout], "--out", out],
                os.path.join(work, f"training-{layout}.log"),
            )
            runs[layout].append((secs, rss))
            digests[layout] = set_digest(out)
    return {layout: {"seconds": statistics.median(r[0] for r in runs[layout]),
                     "all_seconds": [r[0] for r in runs[layout]],
                     "peak_rss_bytes": max(r[1] for r in runs[layout]),
                     "digest": digests[layout]} for layout in LAYOUTS}


def table(title, results, extra):
    print(f"\n{title}")
    print(f"{'':8} {'time s':>8} {'runs s':>18} {'peak RSS MiB':>13} {'commit s':>9} "
          f"{'files':>7} {'log':>5}")
    for layout in LAYOUTS:
        r = results[layout]
        runs = " ".join(f"{s:.2f}" for s in r["all_seconds"])
        print(f"{layout:8} {r['seconds']:8.2f} {runs:>18} {r['peak_rss_bytes'] / 2**20:13,.0f} "
              f"{r.get('commit_seconds', float('nan')):9.2f} {r.get('data_files', 0):7,} "
              f"{r.get('log_files', 0):5}")
    base = results["plain"]["seconds"]
    print(f"delta / plain: {results['delta']['seconds'] / base:.2f}x time{extra}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lockstep", required=True)
    p.add_argument("--plugin", required=True)
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--cards", type=int, default=1_000_000)
    p.add_argument("--sparse-events", type=int, default=300_000)
    p.add_argument("--labels", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--work", default=os.path.join(HERE, "..", "..", "target", "bench-layouts"))
    args = p.parse_args()
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    threads = os.cpu_count() or 2
    dense_events = ensure_events(args.lockstep, os.path.join(work, "..", "bench-batch"),
                                 args.events, args.cards)
    report = {"threads": threads, "rounds": args.rounds}

    dense, stores = backfill_case(args, work, "dense", dense_events, threads)
    same = dense["plain"]["rows_digest"] == dense["delta"]["rows_digest"]
    table(f"dense: {args.events:,} events, {args.cards:,} cards", dense,
          f"; same rows in both: {same} ({dense['plain']['rows_digest'][0]:,} rows)")
    report["dense"] = dense

    labels = labels_file(work, dense_events, args.labels)
    training = training_case(args, work, stores, labels)
    same_set = training["plain"]["digest"] == training["delta"]["digest"]
    table(f"training set: {args.labels:,} labels", training,
          f"; same training set: {same_set}")
    report["training"] = training

    sparse = sparse_events(args.lockstep, work, args.sparse_events)
    sparse_results, _ = backfill_case(args, work, "sparse", sparse, threads)
    same_sparse = sparse_results["plain"]["rows_digest"] == sparse_results["delta"]["rows_digest"]
    table(f"sparse: {args.sparse_events:,} events over 300 days", sparse_results,
          f"; same rows in both: {same_sparse}")
    report["sparse"] = sparse_results

    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(report, f, indent=2, default=str)
    print(f"\nresults: {os.path.join(work, 'results.json')}")
    sys.stdout.flush()
    if not (same and same_set and same_sparse):
        print("the layouts disagree", file=sys.stderr, flush=True)
        os._exit(1)
    # The deltalake package can abort at interpreter exit after reading many files.
    os._exit(0)


if __name__ == "__main__":
    main()
