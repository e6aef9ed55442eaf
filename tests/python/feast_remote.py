"""Reads features from `lockstep serve` with Feast's stock SDK, as a Feast user would.

  feast_remote.py --url http://HOST:PORT --view GROUP --key COLUMN
                  --feature NAME:TYPE ... --entity VALUE ...

A Feast repository whose online store is `type: remote` pointed at `--url` declares one
feature view named like the Lockstep group, with the entity's join key and the features
(TYPE: Int64, Float64, String or Bool). `FeatureStore.get_online_features` then reads
the entities through Feast's own client code; the answer is printed as one JSON object
{feature: [value per entity]}. Nothing here speaks Lockstep's API.
"""

import argparse
import json
import os
import tempfile
from datetime import timedelta

import pandas as pd
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.types import Bool, Float64, Int64, String

TYPES = {"Int64": Int64, "Float64": Float64, "String": String, "Bool": Bool}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--view", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--feature", action="append", required=True)
    parser.add_argument("--entity", action="append", required=True)
    args = parser.parse_args()
    features = [f.split(":") for f in args.feature]

    repo = tempfile.mkdtemp(prefix="lockstep-feast-remote-")
    with open(os.path.join(repo, "feature_store.yaml"), "w") as f:
        f.write(
            f"""project: lockstep_remote
provider: local
registry: {repo}/registry.db
online_store:
  type: remote
  path: {args.url}
offline_store:
  type: file
entity_key_serialization_version: 3
"""
        )
    # The offline source is never read here; Feast wants one declared.
    source_path = os.path.join(repo, "source.parquet")
    pd.DataFrame(
        {args.key: ["x"], "event_time": [pd.Timestamp("2024-01-01", tz="UTC")]}
    ).to_parquet(source_path)
    entity = Entity(name=args.key, join_keys=[args.key], value_type=ValueType.STRING)
    view = FeatureView(
        name=args.view,
        entities=[entity],
        ttl=timedelta(days=3650),
        schema=[Field(name=name, dtype=TYPES[ty]) for name, ty in features],
        source=FileSource(path=source_path, timestamp_field="event_time"),
        online=True,
    )
    store = FeatureStore(repo_path=repo)
    store.apply([entity, view])
    answer = store.get_online_features(
        features=[f"{args.view}:{name}" for name, _ in features],
        entity_rows=[{args.key: e} for e in args.entity],
    ).to_dict()
    print(json.dumps({name: answer[name] for name, _ in features}))


if __name__ == "__main__":
    main()
