"""A client for `lockstep serve`: features for inference, with their sources.

`Client(url).get_online_features(features=[...], entity_rows=[...])` asks the server's
`POST /v1/features/batch` once, one request per feature group (read at once on the
server), and joins the answers per entity row, as Feast's `get_online_features` does.
An entity row may name several key columns (`{"card_id": "c-1", "user_id": "u-7"}`):
each group is then asked by its own entity key, which the client reads once from the
server's `GET /v1/groups`. Values are the JSON the server sends, parsed
(floats read back to their bits; a non-finite float arrives as the text "NaN",
"Infinity" or "-Infinity", left as text: the answer does not say which features are
floats). Each entity's source (cache, store, missing, default)
and whether the answer is degraded are kept, so a caller can tell a real value from a
default served because a read timed out.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = [
    "Client",
    "OnlineResponse",
    "LockstepError",
    "LockstepTimeout",
]

EntityKey = Union[str, int]


class LockstepError(Exception):
    """The server refused the request (its message is kept), or answered with
    something that is not a feature response."""

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status


class LockstepTimeout(LockstepError):
    """No answer within the client's timeout."""


@dataclass(frozen=True)
class _FeatureRef:
    group: str
    version: Optional[str]
    feature: str

    @staticmethod
    def parse(text: str) -> "_FeatureRef":
        group, sep, feature = text.partition(":")
        if not sep or not group or not feature:
            raise ValueError(
                f"feature {text!r} is not GROUP:FEATURE (or GROUP@VERSION:FEATURE)"
            )
        name, at, version = group.partition("@")
        if at and not version:
            raise ValueError(f"feature {text!r} names an empty version")
        return _FeatureRef(name, version or None, feature)


@dataclass
class OnlineResponse:
    """Features per entity row, in request order."""

    #: The first entity key column's name (from the entity rows), and its keys in order.
    key_name: str
    keys: List[EntityKey]
    #: Feature name → one value per entity row.
    values: Dict[str, List[Any]]
    #: Per entity row: group (name@version) → where its values came from
    #: ("cache", "store", "missing" or "default").
    sources: List[Dict[str, str]]
    #: Per entity row: group → the event time of the row served (RFC 3339), or None.
    event_times: List[Dict[str, Optional[str]]]
    #: Whether any value came from the default snapshot because a read did not make
    #: the server's deadline.
    degraded: bool
    #: Group → the request id the server logged the answer under (if it logs).
    request_ids: Dict[str, str] = field(default_factory=dict)
    #: Every entity key column of the rows → its keys in order (`key_name` first).
    entities: Dict[str, List[EntityKey]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, List[Any]]:
        """`{key column: keys, ..., feature: values, ...}`, as Feast's `to_dict()`."""
        out: Dict[str, List[Any]] = {self.key_name: list(self.keys)}
        out.update({name: list(keys) for name, keys in self.entities.items()})
        out.update({name: list(v) for name, v in self.values.items()})
        return out

    def to_df(self):  # -> pandas.DataFrame
        """The features as a pandas DataFrame (needs pandas installed)."""
        try:
            import pandas as pd
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                "to_df() needs pandas: pip install 'lockstep-client[pandas]'"
            ) from e
        return pd.DataFrame(self.to_dict())


class Client:
    """A `lockstep serve` endpoint.

    `timeout` (seconds) bounds each HTTP request; `token` is a tenant's bearer token
    when the server has tenants.
    """

    def __init__(self, url: str, timeout: float = 1.0, token: Optional[str] = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r} is not an http(s) URL")
        if not timeout > 0:
            raise ValueError("timeout must be more than zero seconds")
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self._token = token
        # Group → version → entity key, read from the server when first needed.
        self._entity_keys: Optional[Dict[str, Dict[str, str]]] = None

    def __repr__(self) -> str:  # the token is never shown
        return f"Client({self.url!r}, timeout={self.timeout})"

    def get_online_features(
        self,
        features: Sequence[str],
        entity_rows: Sequence[Mapping[str, EntityKey]],
    ) -> OnlineResponse:
        """The `features` (`group:feature`) of each entity row (`{key column: key}`).

        Every row names the same key columns. With one, its keys are asked of every
        group; with several, each group is asked by the column named as its entity key
        (as the server's `GET /v1/groups` says). One HTTP call for every group."""
        if not features:
            raise ValueError("no features asked for")
        if not entity_rows:
            raise ValueError("no entity rows")
        columns = _entity_columns(entity_rows)
        key_name, keys = next(iter(columns.items()))
        refs = [_FeatureRef.parse(f) for f in features]
        groups: Dict[Tuple[str, Optional[str]], List[str]] = {}
        for ref in refs:
            groups.setdefault((ref.group, ref.version), []).append(ref.feature)
        keys_of = {
            group: keys if len(columns) == 1 else columns[self._key_column(group, columns)]
            for group in groups
        }
        values: Dict[str, List[Any]] = {}
        sources: List[Dict[str, str]] = [{} for _ in keys]
        event_times: List[Dict[str, Optional[str]]] = [{} for _ in keys]
        degraded = False
        request_ids: Dict[str, str] = {}
        requests: List[Dict[str, Any]] = []
        for (group, version), names in groups.items():
            body: Dict[str, Any] = {
                "group": group,
                "entities": keys_of[(group, version)],
                "features": names,
            }
            if version is not None:
                body["version"] = version
            requests.append(body)
        batch, _ = self._post("/v1/features/batch", {"requests": requests})
        answers = batch.get("answers")
        ids = batch.get("request_ids")
        if not isinstance(answers, list) or len(answers) != len(requests):
            raise LockstepError("the answer has no answer per group")
        if not isinstance(ids, list) or len(ids) != len(requests):
            ids = [None] * len(requests)
        for ((group, version), names), answer, request_id in zip(groups.items(), answers, ids):
            if not isinstance(answer, dict):
                raise LockstepError(f"{group}: the answer is not a JSON object")
            served = f"{answer.get('group', group)}@{answer.get('version', version)}"
            if request_id:
                request_ids[served] = request_id
            degraded = degraded or bool(answer.get("degraded"))
            entities = answer.get("entities")
            order = answer.get("features")
            if not isinstance(entities, list) or len(entities) != len(keys):
                raise LockstepError(f"{served}: the answer has no entity per row")
            if order != names:
                raise LockstepError(f"{served}: features {order} answered for {names}")
            for name in names:
                if name in values:
                    raise ValueError(
                        f"feature {name!r} is asked of two groups: the columns would clash"
                    )
                values[name] = []
            for row, entity in enumerate(entities):
                sources[row][served] = entity["source"]
                event_times[row][served] = entity.get("event_time")
                for name, value in zip(names, entity["values"]):
                    values[name].append(value)
        # Columns in the order the features were asked for.
        ordered = {ref.feature: values[ref.feature] for ref in refs}
        return OnlineResponse(
            key_name=key_name,
            keys=keys,
            values=ordered,
            sources=sources,
            event_times=event_times,
            degraded=degraded,
            request_ids=request_ids,
            entities={name: list(column) for name, column in columns.items()},
        )

    def _key_column(
        self, group: Tuple[str, Optional[str]], columns: Mapping[str, List[EntityKey]]
    ) -> str:
        """The entity row column `group` (name, version) is keyed by."""
        name, version = group
        if self._entity_keys is None:
            listed, _ = self._request("GET", "/v1/groups", None)
            served: Dict[str, Dict[str, str]] = {}
            for g in listed.get("groups") or []:
                if isinstance(g, dict) and isinstance(g.get("entity_key"), str):
                    served.setdefault(str(g.get("name")), {})[str(g.get("version"))] = g[
                        "entity_key"
                    ]
            self._entity_keys = served
        versions = self._entity_keys.get(name, {})
        if version is not None:
            versions = {v: k for v, k in versions.items() if v == version}
        shown = name if version is None else f"{name}@{version}"
        found = sorted(set(versions.values()))
        if not found:
            raise LockstepError(f"{shown}: not served by {self.url} (GET /v1/groups)")
        if len(found) > 1:
            raise ValueError(
                f"{shown}: its versions are keyed by {found}: name the version "
                f"({name}@VERSION:feature)"
            )
        if found[0] not in columns:
            raise ValueError(
                f"{shown} is keyed by {found[0]!r}, which the entity rows do not name "
                f"(they name {list(columns)})"
            )
        return found[0]

    def _post(self, path: str, body: Mapping[str, Any]) -> Tuple[Dict[str, Any], Optional[str]]:
        return self._request("POST", path, body)

    def _request(
        self, method: str, path: str, body: Optional[Mapping[str, Any]]
    ) -> Tuple[Dict[str, Any], Optional[str]]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"}
        if self._token is not None:
            headers["authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read()
                request_id = response.headers.get("x-request-id")
        except urllib.error.HTTPError as e:
            raise LockstepError(_error_text(e), status=e.code) from None
        except (socket.timeout, TimeoutError) as e:
            raise LockstepTimeout(f"{self.url}{path}: no answer within {self.timeout}s") from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, (socket.timeout, TimeoutError)):
                raise LockstepTimeout(
                    f"{self.url}{path}: no answer within {self.timeout}s"
                ) from e
            raise LockstepError(f"{self.url}{path}: {e.reason}") from e
        try:
            answer = json.loads(text)
        except ValueError as e:
            raise LockstepError(f"{self.url}{path}: the answer is not JSON") from e
        if not isinstance(answer, dict):
            raise LockstepError(f"{self.url}{path}: the answer is not a JSON object")
        return answer, request_id


def _entity_columns(rows: Iterable[Mapping[str, EntityKey]]) -> Dict[str, List[EntityKey]]:
    """Key column → its key in each row; every row names the same columns."""
    columns: Dict[str, List[EntityKey]] = {}
    for i, row in enumerate(rows):
        if not row:
            raise ValueError(f"entity row {i} names no key, e.g. {{'card_id': 'c-1'}}")
        if i == 0:
            columns = {name: [] for name in row}
        elif set(row) != set(columns):
            raise ValueError(
                f"entity row {i} names {sorted(row)}, the rows before {sorted(columns)}"
            )
        for name, key in row.items():
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise ValueError(
                    f"entity row {i}, {name!r}: a key is text or an integer, not {key!r}"
                )
            columns[name].append(key)
    return columns


def _error_text(e: "urllib.error.HTTPError") -> str:
    try:
        body = json.loads(e.read())
        if isinstance(body, dict) and "error" in body:
            return f"HTTP {e.code}: {body['error']}"
    except Exception:  # the body is not the server's error object
        pass
    return f"HTTP {e.code}: {e.reason}"
