"""Larger than memory: a backfill under --memory-limit equals an unconstrained one.

Runs `lockstep batch run` twice over the same events — without a limit, then with
`--memory-limit` — reports time and peak RSS of each, and checks with DuckDB that the
two offline stores hold exactly the same rows (write stamps aside).

usage: spill.py --lockstep BIN --plugin WASM [--events 20000000] [--cards 1000000]
                [--memory-limit 1GiB] [--work DIR]
"""

import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import HERE, ensure_events, measure  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lockstep", required=True)
    p.add_argument("--plugin", required=True)
    p.add_argument("--events", type=int, default=20_000_000)
    p.add_argument("--cards", type=int, default=1_000_000)
    p.add_argument("--memory-limit", default="1GiB")
    p.add_argument("--work", default=os.path.join(HERE, "..", "..", "target", "bench-batch"))
    args = p.parse_args()
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    events = ensure_events(args.lockstep, work, args.events, args.cards)
    runs = {}
    for name, extra in [("unlimited", []), (f"limit {args.memory_limit}", ["--memory-limit", args.memory_limit])]:
        out = os.path.join(work, "spill-" + name.split()[0])
        shutil.rmtree(out, ignore_errors=True)
        log = os.path.join(work, f"spill-{name.split()[0]}.log")
        secs, rss, _ = measure(
            name,
            [args.lockstep, "batch", "run", "--plugin", args.plugin, "--source", events,
             "--offline-store", out] + extra,
            log,
        )
        with open(log) as f:
            print(f.read(), end="")
        runs[name] = (secs, rss, out)
    import duckdb

    cols = "* EXCLUDE (write_time, api_invocation_time)"
    (a, b) = [v[2] for v in runs.values()]
    diff = duckdb.sql(
        f"""
        WITH a AS (SELECT {cols} FROM read_parquet('{a}/**/*.parquet', hive_partitioning = false)),
             b AS (SELECT {cols} FROM read_parquet('{b}/**/*.parquet', hive_partitioning = false))
        SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM b),
               (SELECT count(*) FROM (SELECT * FROM a EXCEPT ALL SELECT * FROM b)),
               (SELECT count(*) FROM (SELECT * FROM b EXCEPT ALL SELECT * FROM a))
        """
    ).fetchall()[0]
    print(f"\n{args.events} events, {args.cards} cards")
    print(f"{'':18} {'time s':>8} {'events/s':>12} {'peak RSS MiB':>13}")
    for name, (secs, rss, _) in runs.items():
        print(f"{name:18} {secs:8.2f} {args.events / secs:12,.0f} {rss / 2**20:13,.0f}")
    print(f"rows: {diff[0]:,} vs {diff[1]:,}; only in one: {diff[2]:,} + {diff[3]:,}")
    if diff[0] != diff[1] or diff[2] or diff[3]:
        sys.exit("the limited run differs from the unlimited one")
    print("identical rows")


if __name__ == "__main__":
    main()
