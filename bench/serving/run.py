"""Runs both sides of the serving benchmark against one redis-server and prints the
table with Lockstep/Feast ratios (see run.sh)."""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_lines(cmd):
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def run_deadline(args, port, redis_pid):
    """The deadline under a frozen cache: redis-server SIGSTOPped, every call waits out
    `--deadline-ms` with the breaker held closed, on a quiet machine and then beside
    one competing CPU-bound process."""
    results = []
    for competing in (False, True):
        spinner = None
        if competing:
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            for r in run_lines(
                [args.lockstep, "--redis", f"redis://127.0.0.1:{port}", "--entities", "1000",
                 "--timeout-ms", str(args.deadline_ms), "--freeze-pid", str(redis_pid), "--no-breaker",
                 "--scenario", f"frozen:10:50:{args.deadline_rate}:{args.deadline_seconds}"]
            ):
                r["competing"] = competing
                results.append(r)
        finally:
            if spinner:
                spinner.kill()
                spinner.wait()
    return results


def print_deadline(args, results):
    def ms(us):
        return f"{us / 1000:.2f}"

    print()
    print(f"Deadline: redis-server frozen (SIGSTOP), --timeout {args.deadline_ms}ms, breaker held closed "
          f"so every call waits; 10 keys x 50 features at {args.deadline_rate:.0f}/s")
    print("A bare thread sleeping the timeout in a loop meanwhile is the machine's floor: how late the OS wakes anyone.")
    print("| machine | what | samples | p50 ms | p99 ms | p999 ms | max ms | p999 past the deadline |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        where = "one competing CPU-bound process" if r["competing"] else "quiet"
        what = "bare thread sleep (floor)" if r["system"] == "thread-sleep" else f"serve ({r['degraded']} degraded)"
        over = (r["p999_us"] - r["timeout_us"]) / 1000
        print(f"| {where} | {what} | {r['requests']} | {ms(r['p50_us'])} | {ms(r['p99_us'])} | "
              f"{ms(r['p999_us'])} | {ms(r['max_us'])} | {over:+.2f} ms |")
    for competing in (False, True):
        serve = next((r for r in results if r["competing"] == competing and r["system"] == "lockstep"), None)
        floor = next((r for r in results if r["competing"] == competing and r["system"] == "thread-sleep"), None)
        if serve and floor:
            where = "with a competing process" if competing else "quiet"
            bar = serve["timeout_us"] + 1000
            verdict = "meets" if serve["p999_us"] <= bar else "misses"
            print(f"{where}: p999 {ms(serve['p999_us'])} ms {verdict} the timeout + 1 ms bar ({ms(bar)} ms); "
                  f"past the deadline: serve {(serve['p999_us'] - serve['timeout_us']) / 1000:.2f} ms, "
                  f"the floor {(floor['p999_us'] - floor['timeout_us']) / 1000:.2f} ms at p999")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lockstep", required=True)
    p.add_argument("--feast-python", required=True)
    p.add_argument("--entities", type=int, default=10_000)
    p.add_argument("--one-rate", type=float, default=200)
    p.add_argument("--one-seconds", type=float, default=30)
    p.add_argument("--hundred-rate", type=float, default=10)
    p.add_argument("--hundred-seconds", type=float, default=60)
    p.add_argument("--stampede-keys", type=int, default=100_000)
    p.add_argument("--stampede-ttl", type=int, default=8)
    p.add_argument("--stampede-rate", type=float, default=500)
    p.add_argument("--deadline-ms", type=int, default=5)
    p.add_argument("--deadline-rate", type=float, default=200)
    p.add_argument("--deadline-seconds", type=float, default=20)
    p.add_argument("--only-deadline", action="store_true",
                   help="run only the frozen-cache deadline scenarios")
    args = p.parse_args()

    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        shared = [
            f"one:1:50:{args.one_rate}:{args.one_seconds}",
            f"hundred:100:60:{args.hundred_rate}:{args.hundred_seconds}",
        ]
        scenario_args = [a for s in shared for a in ("--scenario", s)]
        print(f"redis-server on 127.0.0.1:{port}; {args.entities} entities x 60 float features", flush=True)
        deadline = run_deadline(args, port, redis.pid)
        if args.only_deadline:
            print_deadline(args, deadline)
            return 0
        feast = run_lines(
            [args.feast_python, os.path.join(HERE, "feast_latency.py"), "--redis", f"127.0.0.1:{port}",
             "--entities", str(args.entities)] + scenario_args
        )
        fast = [
            f"one-x10:1:50:{args.one_rate * 10}:{args.one_seconds}",
            f"hundred-x20:100:60:{args.hundred_rate * 20}:{args.hundred_seconds / 2}",
        ]
        lockstep = run_lines(
            [args.lockstep, "--redis", f"redis://127.0.0.1:{port}", "--entities", str(args.entities)]
            + scenario_args + [a for s in fast for a in ("--scenario", s)]
        )
        # Stampede: every key loaded at once with one TTL, requests across the expiry.
        stampede = run_lines(
            [args.lockstep, "--redis", f"redis://127.0.0.1:{port}", "--entities", str(args.stampede_keys),
             "--stampede-ttl", str(args.stampede_ttl),
             "--scenario", f"stampede:10:50:{args.stampede_rate}:{args.stampede_ttl + 12}"]
        )
    finally:
        redis.terminate()
        redis.wait()

    def ms(us):
        return f"{us / 1000:.2f}"

    print()
    print("| scenario | rate/s | system | requests | p50 ms | p99 ms | p999 ms | max ms | degraded |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in feast + lockstep:
        print(
            f"| {r['entities']}x{r['features']} ({r['scenario']}) | {r['rate']:.0f} | {r['system']} | {r['requests']} | "
            f"{ms(r['p50_us'])} | {ms(r['p99_us'])} | {ms(r['p999_us'])} | {ms(r['max_us'])} | {r.get('degraded', '-')} |"
        )
    print()
    for f in feast:
        l = next(x for x in lockstep if x["scenario"] == f["scenario"])
        print(
            f"{f['entities']}x{f['features']} at {f['rate']:.0f}/s: Feast / Lockstep = "
            f"{f['p50_us'] / l['p50_us']:.1f}x at p50, {f['p99_us'] / l['p99_us']:.1f}x at p99, "
            f"{f['p999_us'] / l['p999_us']:.1f}x at p999"
        )
    for r in stampede:
        print()
        print(
            f"Stampede: {args.stampede_keys} keys loaded with a {args.stampede_ttl} s TTL, "
            f"{r['rate']:.0f} requests/s of 10 random keys x 50 features across the expiry "
            f"({r['store_keys']} keys read from the store in all, {r['degraded']} degraded answers)"
        )
        print("| second | requests | p99 ms | max ms | store keys | degraded |")
        print("|---|---|---|---|---|---|")
        for sec in r["per_second"]:
            print(f"| {sec['second']} | {sec['requests']} | {ms(sec['p99_us'])} | {ms(sec['max_us'])} | {sec['store_keys']} | {sec['degraded']} |")
    print_deadline(args, deadline)
    print()
    bars = {"one": 2000, "hundred": 5000}
    for l in lockstep:
        bar = bars.get(l["scenario"].split("-")[0])
        if bar:
            verdict = "meets" if l["p99_us"] <= bar else "MISSES"
            print(f"Lockstep {l['entities']}x{l['features']} at {l['rate']:.0f}/s: p99 {ms(l['p99_us'])} ms {verdict} the {bar / 1000:.0f} ms bar")


if __name__ == "__main__":
    sys.exit(main())
