"""Backfill benchmark: Lockstep vs DuckDB vs PySpark on the same events, one run.

Each contender reads the same Parquet file of transactions, computes txn_velocity's
features per event and writes hour-partitioned Parquet. Each runs as its own process
tree; wall time is measured around it and peak RSS is the largest sum of the RSS of
the tree's processes, sampled every 50 ms (for Spark, the JVM as well as Python).

usage: run.py --lockstep BIN --plugin WASM [--events N] [--cards M] [--work DIR]
              [--skip-spark] [--memory-limit SIZE]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def tree_rss(root):
    """Total RSS in bytes of `root` and its descendants."""
    children = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(pid))
        except (OSError, IndexError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def measure(name, argv, log, timeout=None):
    """Runs argv, returns (seconds, peak RSS bytes, finished); exits on failure. After
    `timeout` seconds the process tree is killed and `finished` is False."""
    print(f"== {name}: {' '.join(argv)}", flush=True)
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            if timeout is not None and time.monotonic() - started > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                print(f"   {name} stopped after {timeout:.0f} s", flush=True)
                return time.monotonic() - started, peak, False
            time.sleep(0.05)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        with open(log) as f:
            sys.exit(f"{name} failed ({proc.returncode}):\n{f.read()[-4000:]}")
    return seconds, peak, True


def ensure_events(lockstep, work, events, cards):
    """The events file for (events, cards), generated once (seed 42) and reused."""
    path = os.path.join(work, f"transactions-{events}-{cards}.parquet")
    if not os.path.exists(path):
        print(f"generating {events} events over {cards} cards → {path}", flush=True)
        subprocess.run(
            [lockstep, "gen", "events", "--kind", "transactions", "--rows", str(events),
             "--entities", str(cards), "--seed", "42", "--out", path],
            check=True,
        )
    return path


def count_rows(path):
    import duckdb

    return duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{path}/**/*.parquet', hive_partitioning = false)"
    ).fetchall()[0][0]


def agreement(lockstep_dir, duckdb_dir):
    """Every row, matched by card, instant and place among the instant's rows (Lockstep's
    emission order, DuckDB's txn_id order: the documented order), and how many match."""
    import duckdb

    features = [
        f"{k}_{w}" for w in ["1h", "24h", "7d"] for k in ["txn_count", "txn_sum", "txn_max"]
    ] + ["distinct_merchants_24h"]
    close = " AND ".join(
        f"(abs(l.{f} - d.{f}) <= 1e-9 * greatest(1, abs(l.{f})) OR (l.{f} IS NULL AND d.{f} IS NULL))"
        for f in features
    )
    row = duckdb.sql(
        f"""
        WITH l AS (SELECT *, row_number() OVER (PARTITION BY card_id, event_time
                                                 ORDER BY filename, file_row_number) AS nth
                   FROM read_parquet('{lockstep_dir}/**/*.parquet', hive_partitioning = false,
                                     filename = true, file_row_number = true)),
             d AS (SELECT *, row_number() OVER (PARTITION BY card_id, event_time
                                                 ORDER BY txn_count_7d) AS nth
                   FROM read_parquet('{duckdb_dir}/**/*.parquet', hive_partitioning = false)),
             j AS (SELECT l.*, ({close}) AS same FROM l JOIN d USING (card_id, event_time, nth))
        SELECT (SELECT count(*) FROM l), count(*) FILTER (WHERE same) FROM j
        """
    ).fetchall()[0]
    return row


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lockstep", required=True)
    p.add_argument("--plugin", required=True)
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--cards", type=int, default=1_000_000)
    p.add_argument("--work", default=os.path.join(HERE, "..", "..", "target", "bench-batch"))
    p.add_argument("--skip-spark", action="store_true")
    p.add_argument("--spark-memory", default="6g")
    p.add_argument("--spark-timeout", type=float, default=1800,
                   help="stop PySpark after this many seconds and report a lower bound")
    args = p.parse_args()
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    events = ensure_events(args.lockstep, work, args.events, args.cards)
    threads = os.cpu_count() or 2
    results = {}
    outs = {}
    for name in ["lockstep", "duckdb", "pyspark"]:
        out = os.path.join(work, f"out-{name}")
        shutil.rmtree(out, ignore_errors=True)
        outs[name] = out
    results["lockstep"] = measure(
        "lockstep",
        [args.lockstep, "batch", "run", "--plugin", args.plugin, "--source", events,
         "--offline-store", outs["lockstep"], "--partitions", str(threads)],
        os.path.join(work, "lockstep.log"),
    )
    results["duckdb"] = measure(
        "duckdb",
        [sys.executable, os.path.join(HERE, "duckdb_velocity.py"), events, outs["duckdb"], str(threads)],
        os.path.join(work, "duckdb.log"),
    )
    if not args.skip_spark:
        results["pyspark"] = measure(
            "pyspark",
            [sys.executable, os.path.join(HERE, "spark_velocity.py"), events, outs["pyspark"],
             args.spark_memory],
            os.path.join(work, "pyspark.log"),
            timeout=args.spark_timeout,
        )
    with open(os.path.join(work, "lockstep.log")) as f:
        print(f.read(), end="")
    print(f"\n{args.events} events, {args.cards} cards, {threads} cores, same input file\n")
    print(f"{'':10} {'time s':>8} {'events/s':>12} {'peak RSS MiB':>13} {'rows out':>10} {'time vs lockstep':>17}")
    base = results["lockstep"][0]
    report = {"events": args.events, "cards": args.cards, "threads": threads}
    for name, (secs, rss, finished) in results.items():
        if not finished:
            print(f"{name:10} >{secs:7.0f} {'<' + format(args.events / secs, ',.0f'):>12} "
                  f"{rss / 2**20:13,.0f} {'(stopped)':>10} {'>' + format(secs / base, '.1f'):>16}x")
            report[name] = {"seconds_at_least": secs, "peak_rss_bytes": rss, "finished": False}
            continue
        rows = count_rows(outs[name])
        print(f"{name:10} {secs:8.2f} {args.events / secs:12,.0f} {rss / 2**20:13,.0f} {rows:10,} {secs / base:16.2f}x")
        report[name] = {"seconds": secs, "events_per_second": args.events / secs,
                        "peak_rss_bytes": rss, "rows": rows, "finished": True}
    compared, same = agreement(outs["lockstep"], outs["duckdb"])
    print(f"\nvalues: {same:,} of {compared:,} rows agree between lockstep and duckdb "
          "(tied timestamps included)")
    report["agreement"] = {"compared": compared, "same": same}
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"results: {os.path.join(work, 'results.json')}")


if __name__ == "__main__":
    main()
