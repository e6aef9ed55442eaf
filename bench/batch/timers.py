"""What wake-ups cost a backfill: txn_velocity with timers vs the same build without,
side by side in one run.

The 10M transactions over 1M cards of the backfill benchmark, backfilled by each build in
alternating order (`--rounds` times, medians reported), every run a fresh process
writing a fresh store. For each: wall time, peak RSS of the process tree, rows written
(and of them, wake-up rows). The bar: with timers at most twice the time without.

usage: timers.py --lockstep BIN --plugin WASM --plain-plugin WASM
                 [--events N] [--cards M] [--rounds R] [--partitions P] [--work DIR]
"""

import argparse
import os
import re
import shutil
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run import ensure_events, measure  # noqa: E402


def written(log):
    with open(log) as f:
        text = f.read()
    rows = re.search(r"wrote\s+(\d+) rows", text)
    woken = re.search(r"(\d+) of the rows are wake-up rows", text)
    if rows is None:
        sys.exit(f"no row count in {log}:\n{text[-2000:]}")
    return int(rows.group(1)), int(woken.group(1)) if woken else 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lockstep", required=True)
    p.add_argument("--plugin", required=True, help="txn_velocity with timers")
    p.add_argument("--plain-plugin", required=True, help="txn_velocity built with no-timers")
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--cards", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--partitions", type=int, default=os.cpu_count() or 2)
    p.add_argument("--work", default=os.path.join(HERE, "..", "..", "target", "bench-batch"))
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)
    events = ensure_events(args.lockstep, args.work, args.events, args.cards)
    variants = {"without": args.plain_plugin, "with": args.plugin}
    results = {name: [] for name in variants}
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            store = os.path.join(args.work, f"timers-{name}")
            shutil.rmtree(store, ignore_errors=True)
            log = os.path.join(args.work, f"timers-{name}.log")
            seconds, peak, _ = measure(
                f"{name} timers, round {r + 1}",
                [args.lockstep, "batch", "run", "--plugin", variants[name], "--source", events,
                 "--offline-store", store, "--partitions", str(args.partitions)],
                log,
            )
            rows, woken = written(log)
            results[name].append((seconds, peak, rows, woken))
            print(f"   {seconds:7.1f} s  peak RSS {peak / 2**20:7.0f} MiB  {rows} rows ({woken} wake-up rows)",
                  flush=True)
            shutil.rmtree(store, ignore_errors=True)
    med = {n: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v), v[-1][2], v[-1][3])
           for n, v in results.items()}
    print()
    print(f"{args.events} events over {args.cards} cards, {args.partitions} partitions, "
          f"{args.rounds} alternating rounds (medians)")
    print(f"{'':10} {'time s':>8} {'peak MiB':>9} {'rows':>12} {'wake rows':>12}")
    for n in variants:
        s, peak, rows, woken = med[n]
        print(f"{n + ' timers':10} {s:8.1f} {peak / 2**20:9.0f} {rows:12d} {woken:12d}")
    ratio = med["with"][0] / med["without"][0]
    print(f"time with / without: {ratio:.2f}x (bar: at most 2x); "
          f"rows {med['with'][2] / med['without'][2]:.2f}x; "
          f"peak RSS {med['with'][1] / med['without'][1]:.2f}x")


if __name__ == "__main__":
    main()
