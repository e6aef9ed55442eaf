"""Feast's Python SDK `get_online_features` over Redis, at a fixed request rate.

The same features as the Lockstep side (one feature view of 60 float features, the
same entities and values), written with Feast's own `write_to_online_store` into the
same redis-server, then read in-process with the SDK, open loop: request i is due at
start + i / rate and its latency counts from then, so a slow call delays the next ones
and they count it (no coordinated omission). Prints one JSON object per scenario.

usage: feast_latency.py --redis HOST:PORT --entities N --scenario NAME:ENTITIES:FEATURES:RATE:SECONDS ...
"""

import argparse
import json
import os
import random
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

import pandas as pd
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.types import Float64

FEATURES = [f"f{i:02}" for i in range(60)]


def value(entity: int, feature: int) -> float:
    """The value both sides store: a function of the entity and the feature."""
    return entity * 0.001 + feature * 1.5 + 0.25


def setup(redis: str, entities: int) -> FeatureStore:
    repo = tempfile.mkdtemp(prefix="lockstep-feast-")
    with open(os.path.join(repo, "feature_store.yaml"), "w") as f:
        f.write(
            f"""project: lockstep_bench
provider: local
registry: {repo}/registry.db
online_store:
  type: redis
  connection_string: "{redis}"
offline_store:
  type: file
entity_key_serialization_version: 3
"""
        )
    now = datetime.now(timezone.utc).replace(microsecond=0)
    frame = pd.DataFrame(
        {
            "card": [f"card-{e}" for e in range(entities)],
            "event_timestamp": [now - timedelta(seconds=e % 3600) for e in range(entities)],
            **{name: [value(e, i) for e in range(entities)] for i, name in enumerate(FEATURES)},
        }
    )
    parquet = os.path.join(repo, "bench.parquet")
    frame.to_parquet(parquet)
    card = Entity(name="card", join_keys=["card"], value_type=ValueType.STRING)
    view = FeatureView(
        name="bench_stats",
        entities=[card],
        ttl=timedelta(days=365),
        schema=[Field(name=n, dtype=Float64) for n in FEATURES],
        source=FileSource(path=parquet, timestamp_field="event_timestamp"),
        online=True,
    )
    store = FeatureStore(repo_path=repo)
    store.apply([card, view])
    store.write_to_online_store("bench_stats", frame)
    return store


def percentile(sorted_values, p):
    if not sorted_values:
        return 0.0
    i = max(1, min(len(sorted_values), int(-(-len(sorted_values) * p // 100)))) - 1
    return sorted_values[i]


def run(store, name, entities_per_request, features, rate, seconds, entities):
    refs = [f"bench_stats:{f}" for f in FEATURES[:features]]
    rng = random.Random(7)
    # Warm-up: connections, the registry cache, code paths.
    for _ in range(50):
        store.get_online_features(features=refs, entity_rows=[{"card": "card-0"}]).to_dict()
    total = int(rate * seconds)
    latencies = []
    checked = 0
    start = time.perf_counter()
    for i in range(total):
        due = start + i / rate
        now = time.perf_counter()
        if now < due:
            time.sleep(due - now)
        rows = [rng.randrange(entities) for _ in range(entities_per_request)]
        answer = store.get_online_features(
            features=refs, entity_rows=[{"card": f"card-{e}"} for e in rows]
        ).to_dict()
        latencies.append((time.perf_counter() - due) * 1e6)
        if i % 97 == 0:
            # The values are the ones written.
            for j, e in enumerate(rows):
                for k in (0, features - 1):
                    got = answer[FEATURES[k]][j]
                    if got != value(e, k):
                        sys.exit(f"feast returned {got} for card-{e} {FEATURES[k]}, wrote {value(e, k)}")
            checked += 1
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "system": "feast",
        "scenario": name,
        "entities": entities_per_request,
        "features": features,
        "rate": rate,
        "requests": total,
        "achieved_rate": total / elapsed,
        "p50_us": percentile(latencies, 50),
        "p99_us": percentile(latencies, 99),
        "p999_us": percentile(latencies, 99.9),
        "max_us": latencies[-1],
        "checked": checked,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True)
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--scenario", action="append", required=True)
    args = parser.parse_args()
    store = setup(args.redis, args.entities)
    for spec in args.scenario:
        name, ents, feats, rate, seconds = spec.split(":")
        print(json.dumps(run(store, name, int(ents), int(feats), float(rate), float(seconds), args.entities)), flush=True)


if __name__ == "__main__":
    main()
