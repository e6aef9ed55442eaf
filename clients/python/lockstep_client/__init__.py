"""A client for `lockstep serve`: features for inference, with their sources.

`Client(url).get_online_features(features=[...], entity_rows=[...])` asks the server's
`POST /v1/features/batch` once, one request per feature group (read at once on the
server), and joins the answers per entity row, as Feast's `get_online_features` does. Values are the JSON the server sends, parsed
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

    #: The entity key column's name (from the entity rows), and the keys in order.
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

    def to_dict(self) -> Dict[str, List[Any]]:
        """`{key_name: keys, feature: values, ...}`, as Feast's `to_dict()`."""
        out: Dict[str, List[Any]] = {self.key_name: list(self.keys)}
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

    def __repr__(self) -> str:  # the token is never shown
        return f"Client({self.url!r}, timeout={self.timeout})"

    def get_online_features(
        self,
        features: Sequence[str],
        entity_rows: Sequence[Mapping[str, EntityKey]],
    ) -> OnlineResponse:
        """The `features` (`group:feature`) of each entity row (`{key_name: key}`).

        Every row must name the same one key column. One HTTP call for every group."""
        if not features:
            raise ValueError("no features asked for")
        if not entity_rows:
            raise ValueError("no entity rows")
        key_name, keys = _keys_of(entity_rows)
        refs = [_FeatureRef.parse(f) for f in features]
        groups: Dict[Tuple[str, Optional[str]], List[str]] = {}
        for ref in refs:
            groups.setdefault((ref.group, ref.version), []).append(ref.feature)
        values: Dict[str, List[Any]] = {}
        sources: List[Dict[str, str]] = [{} for _ in keys]
        event_times: List[Dict[str, Optional[str]]] = [{} for _ in keys]
        degraded = False
        request_ids: Dict[str, str] = {}
        requests: List[Dict[str, Any]] = []
        for (group, version), names in groups.items():
            body: Dict[str, Any] = {"group": group, "entities": keys, "features": names}
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
        )

    def _post(self, path: str, body: Mapping[str, Any]) -> Tuple[Dict[str, Any], Optional[str]]:
        data = json.dumps(body).encode()
        headers = {"content-type": "application/json"}
        if self._token is not None:
            headers["authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method="POST")
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


def _keys_of(rows: Iterable[Mapping[str, EntityKey]]) -> Tuple[str, List[EntityKey]]:
    key_name: Optional[str] = None
    keys: List[EntityKey] = []
    for i, row in enumerate(rows):
        if len(row) != 1:
            raise ValueError(
                f"entity row {i} has {len(row)} columns: name exactly one key, e.g. {{'card_id': 'c-1'}}"
            )
        ((name, key),) = row.items()
        if key_name is None:
            key_name = name
        elif name != key_name:
            raise ValueError(f"entity row {i} names {name!r}, the rows before {key_name!r}")
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise ValueError(f"entity row {i}: a key is text or an integer, not {key!r}")
        keys.append(key)
    assert key_name is not None
    return key_name, keys


def _error_text(e: "urllib.error.HTTPError") -> str:
    try:
        body = json.loads(e.read())
        if isinstance(body, dict) and "error" in body:
            return f"HTTP {e.code}: {body['error']}"
    except Exception:  # the body is not the server's error object
        pass
    return f"HTTP {e.code}: {e.reason}"
