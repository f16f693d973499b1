"""`brainy.Client`'s retries and error mapping, fast, through its transport seam (the
same client against the real functions: tests/functions/test_fn_client.py)."""

from __future__ import annotations

import json
import urllib.error
from collections.abc import Mapping
from typing import Any

import pytest

import brainy
from brainy.core.errors import error_body
from brainy.entry.client import Answer, retry_after


class Script:
    """A transport answering from a list, recording what was sent."""

    def __init__(self, *answers: Answer | Exception) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[str, dict[str, Any], dict[str, str]]] = []

    def __call__(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> Answer:
        self.sent.append((url, json.loads(body), dict(headers)))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def ok(body: Any, status: int = 200) -> Answer:
    return Answer(status, {"Content-Type": "application/json"}, json.dumps(body).encode())


def error(status: int, code: str, field: str, reason: str, **headers: str) -> Answer:
    return Answer(status, headers, json.dumps(error_body(code, field, reason)).encode())


SEARCHED = ok({"results": [{"id": "a", "score": 0.5, "metadata": {"x": 1}}], "version": 4})


def client(script: Script, sleeps: list[float], **kw: Any) -> brainy.Client:
    return brainy.Client("http://brainy.test/", token="t0k", transport=script,
                         sleep=sleeps.append, **kw)  # fmt: skip


def test_search_answers_typed_hits_and_sends_the_token() -> None:
    script, sleeps = Script(SEARCHED), []
    result = client(script, sleeps).collection("docs").search(vector=[1, 2], k=1)
    assert result.version == 4 and result[0] == brainy.Hit("a", 0.5, {"x": 1})
    url, body, headers = script.sent[0]
    assert url == "http://brainy.test/search"
    assert body == {"collection": "docs", "k": 1, "vector": [1, 2]}
    assert headers["Authorization"] == "Bearer t0k"


def test_5xx_and_429_are_retried_honouring_retry_after() -> None:
    script = Script(
        error(503, "storage", "storage", "Transient: SlowDown", **{"Retry-After": "7"}),
        error(429, "too_many", "server", "slow down", **{"retry-after": "2"}),
        urllib.error.URLError(ConnectionResetError("reset")),
        SEARCHED,
    )
    sleeps: list[float] = []
    result = client(script, sleeps, backoff=0.01).collection("docs").search(vector=[1.0])
    assert result.ids == ["a"]
    assert len(script.sent) == 4
    assert sleeps[0] >= 7 and sleeps[1] >= 2 and sleeps[2] <= 0.04


def test_retries_stop_and_raise_the_servers_error_as_the_embedded_type() -> None:
    failing = [error(503, "version_not_visible", "min_version", "not visible")] * 3
    script, sleeps = Script(*failing), []
    with pytest.raises(brainy.VersionNotVisible) as err:
        client(script, sleeps, retries=2).collection("docs").search(vector=[1.0])
    assert (err.value.field, err.value.reason) == ("min_version", "not visible")
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    ("answer", "kind", "field"),
    [
        (error(404, "unknown_collection", "collection", "unknown collection 'x'"),
         brainy.UnknownCollection, "collection"),
        (error(400, "invalid", "vector", "expected 8 numbers"), brainy.InvalidInput, "vector"),
        (error(403, "forbidden", "mode", "write-only"), brainy.Forbidden, "mode"),
        (error(400, "config", "collections.x.dimension", "changed"), brainy.ConfigError, None),
        (Answer(404, {}, b"<html>no</html>"), brainy.RemoteError, "server"),
    ],
)  # fmt: skip
def test_error_answers_map_to_types(answer: Answer, kind: type, field: str | None) -> None:
    with pytest.raises(kind) as err:
        client(Script(answer), []).collection("x").search(vector=[1.0])
    if field is None:  # a ConfigError carries its key in its message, as embedded
        assert str(err.value) == "collections.x.dimension: changed"
    else:
        assert err.value.field == field


def test_upsert_batches_carry_their_own_idempotency_keys_kept_across_retries() -> None:
    accepted = [ok({"batch": f"docs/wal/keyed/{i}", "accepted": 2, "deleted": 0}, 202)
                for i in range(2)]  # fmt: skip
    script = Script(accepted[0], error(502, "internal", "server", "gateway"), accepted[1])
    rows = [[float(i), 1.0] for i in range(4)]
    written = (
        client(script, [])
        .collection("docs")
        .upsert(["a", "b", "c", "d"], rows, batch_size=2, idempotency_key="job-7")
    )
    assert written == brainy.WriteResult(["docs/wal/keyed/0", "docs/wal/keyed/1"], 4, 0, None)
    keys = [headers["Idempotency-Key"] for _, _, headers in script.sent]
    assert keys == ["job-7:0-2", "job-7:2-4", "job-7:2-4"]
    assert script.sent[1][1] == script.sent[2][1]  # the retry is the same request
    assert script.sent[0][1]["records"][1] == {"id": "b", "vector": [1.0, 1.0]}


def test_a_batch_too_large_is_split_and_row_errors_name_the_call() -> None:
    script = Script(
        error(413, "too_large", "body", "more than 64 bytes"),
        ok({"batch": "k1", "accepted": 1, "deleted": 0}, 202),
        error(400, "invalid", "records[0].vector", "expected 2 numbers"),
    )
    with pytest.raises(brainy.InvalidInput) as err:
        client(script, []).collection("docs").upsert(["a", "b"], [[1.0, 2.0], [3.0]])
    assert err.value.field == "records[1].vector"
    assert [len(body["records"]) for _, body, _ in script.sent] == [2, 1, 1]


def test_a_client_needs_a_url() -> None:
    with pytest.raises(brainy.InvalidInput):
        brainy.Client()
    only_search = brainy.Client(search_url="http://s.test", transport=Script())
    with pytest.raises(brainy.InvalidInput) as err:
        only_search.collection("docs").delete(["a"])
    assert err.value.field == "ingest_url"


def test_retry_after_accepts_seconds_and_dates() -> None:
    assert retry_after("3") == 3.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert retry_after(None) == retry_after("soon") == 0.0
