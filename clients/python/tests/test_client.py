"""The Python client against a live `lockstep serve`.

The server and what it must answer come from the environment (the Rust test
`hosts/cli/tests/repository.rs` starts the server and writes what the Rust client read):
LOCKSTEP_URL, LOCKSTEP_GROUP, LOCKSTEP_KEY (the entity key column) and LOCKSTEP_EXPECTED
(a JSON file: {"features": [...], "entities": {key: {"source": ..., "values": [...]}}}).
"""

import json
import os
import socket
import threading

import pytest

from lockstep_client import Client, LockstepError, LockstepTimeout

URL = os.environ.get("LOCKSTEP_URL")
pytestmark = pytest.mark.skipif(URL is None, reason="needs a live lockstep serve (LOCKSTEP_URL)")


@pytest.fixture(scope="module")
def expected():
    with open(os.environ["LOCKSTEP_EXPECTED"]) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def group():
    return os.environ["LOCKSTEP_GROUP"]


@pytest.fixture(scope="module")
def key():
    return os.environ["LOCKSTEP_KEY"]


def test_values_equal_the_rust_clients(expected, group, key):
    client = Client(URL, timeout=5)
    entities = list(expected["entities"])
    features = expected["features"]
    resp = client.get_online_features(
        features=[f"{group}:{f}" for f in features],
        entity_rows=[{key: e} for e in entities],
    )
    assert resp.keys == entities
    assert not resp.degraded
    served = f"{group}@{expected['version']}"
    for row, entity in enumerate(entities):
        want = expected["entities"][entity]
        got = [resp.values[f][row] for f in features]
        assert got == want["values"], entity
        assert resp.sources[row] == {served: want["source"]}, entity
    table = resp.to_dict()
    assert list(table) == [key, *features]
    assert table[key] == entities


def test_rows_with_several_key_columns_ask_each_group_by_its_own(expected, group, key):
    client = Client(URL, timeout=5)
    entities = list(expected["entities"])
    features = expected["features"]
    # The group's key column is not the first one named: the client finds it.
    rows = [{"session": f"s-{i}", key: e} for i, e in enumerate(entities)]
    for version in (None, expected["version"]):
        ref = group if version is None else f"{group}@{version}"
        resp = client.get_online_features(features=[f"{ref}:{f}" for f in features], entity_rows=rows)
        for row, entity in enumerate(entities):
            assert [resp.values[f][row] for f in features] == expected["entities"][entity]["values"]
        table = resp.to_dict()
        assert list(table) == ["session", key, *features]
        assert table[key] == entities
        assert table["session"] == [f"s-{i}" for i in range(len(entities))]
    with pytest.raises(LockstepError, match="not served"):
        client.get_online_features(features=[f"{group}@9.9.9:{features[0]}"], entity_rows=rows)


def test_a_subset_in_another_order_and_a_pinned_version(expected, group, key):
    features = list(reversed(expected["features"]))
    entity = next(iter(expected["entities"]))
    resp = Client(URL, timeout=5).get_online_features(
        features=[f"{group}@{expected['version']}:{f}" for f in features],
        entity_rows=[{key: entity}, {key: entity}],
    )
    assert list(resp.values) == features
    want = dict(zip(expected["features"], expected["entities"][entity]["values"]))
    for f in features:
        assert resp.values[f] == [want[f], want[f]]


def test_a_dataframe_on_request(expected, group, key):
    pd = pytest.importorskip("pandas")
    entities = list(expected["entities"])[:5]
    resp = Client(URL, timeout=5).get_online_features(
        features=[f"{group}:{f}" for f in expected["features"]],
        entity_rows=[{key: e} for e in entities],
    )
    df = resp.to_df()
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == [key, *expected["features"]]
    assert list(df[key]) == entities


def test_errors_the_server_names_are_raised_with_its_message(group, key):
    client = Client(URL, timeout=5)
    with pytest.raises(LockstepError) as e:
        client.get_online_features(features=["no_such_group:x"], entity_rows=[{key: "a"}])
    assert e.value.status == 404
    assert "no_such_group" in str(e.value)
    with pytest.raises(LockstepError) as e:
        client.get_online_features(features=[f"{group}:no_such_feature"], entity_rows=[{key: "a"}])
    assert e.value.status == 400
    assert "no_such_feature" in str(e.value)


def test_bad_requests_are_refused_before_anything_is_sent(group, key):
    client = Client(URL, timeout=5)
    for features in (["nogroup"], [":f"], ["g:"], ["g@:f"]):
        with pytest.raises(ValueError):
            client.get_online_features(features=features, entity_rows=[{key: "a"}])
    with pytest.raises(ValueError, match="names no key"):
        client.get_online_features(features=[f"{group}:x"], entity_rows=[{}])
    # With several key columns each group is asked by its own: one the rows lack is
    # named, and so is a group the server does not serve.
    with pytest.raises(ValueError, match=f"keyed by '{key}', which the entity rows do not name"):
        client.get_online_features(features=[f"{group}:x"], entity_rows=[{"b": "a", "c": 1}])
    with pytest.raises(LockstepError, match="nogroup: not served"):
        client.get_online_features(features=["nogroup:x"], entity_rows=[{"b": "a", "c": 1}])
    with pytest.raises(ValueError, match="names"):
        client.get_online_features(features=[f"{group}:x"], entity_rows=[{key: "a"}, {"other": "b"}])
    with pytest.raises(ValueError, match="text or an integer"):
        client.get_online_features(features=[f"{group}:x"], entity_rows=[{key: 1.5}])
    with pytest.raises(ValueError):
        Client("ftp://x")
    with pytest.raises(ValueError):
        Client(URL, timeout=0)
    assert "token" not in repr(Client(URL, token="s3cret")) and "s3cret" not in repr(
        Client(URL, token="s3cret")
    )


def test_a_server_that_does_not_answer_in_time_is_a_timeout():
    # A listener that accepts and never answers.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                held.append(conn)
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        with pytest.raises(LockstepTimeout):
            Client(f"http://127.0.0.1:{port}", timeout=0.2).get_online_features(
                features=["g:f"], entity_rows=[{"k": "a"}]
            )
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def test_a_server_that_is_gone_is_an_error_naming_it():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(LockstepError) as e:
        Client(f"http://127.0.0.1:{port}", timeout=1).get_online_features(
            features=["g:f"], entity_rows=[{"k": "a"}]
        )
    assert str(port) in str(e.value)
