"""A request's vectors are converted and checked together, yet an error still names
the first bad field in record order, and the columns of `brainy ingest X.npy`
make the same batch as the same records sent as JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from brainy.core.config import CollectionSchema, Settings
from brainy.core.errors import InvalidInput
from brainy.write.ingest import validate, validate_vectors

SCHEMA = CollectionSchema("docs", dimension=4)
GOOD = [0.5, -0.25, 1.0, 2.0]


def _validate(records: list, deletes: list | None = None):
    payload = {"collection": "docs", "records": records, "deletes": deletes or []}
    # Through JSON, as a request body arrives (NaN and Infinity as Python's json reads them).
    return validate(json.loads(json.dumps(payload)), Settings(), {"docs": SCHEMA}.get)


def _error(records: list) -> str:
    with pytest.raises(InvalidInput) as e:
        _validate(records)
    return f"{e.value.field}: {e.value.reason}"


def _records(n: int) -> list[dict]:
    rng = np.random.default_rng(n)
    return [{"id": f"r{i}", "vector": rng.normal(size=4).tolist()} for i in range(n)]


@pytest.mark.parametrize(
    ("row", "vector", "message"),
    [
        (7, [0.5, float("nan"), 1.0, 2.0], "records[7].vector[1]: NaN and Infinity"),
        (30, [0.5, 1.0, 1.0, float("inf")], "records[30].vector[3]: NaN and Infinity"),
        (2, [1e39, 1.0, 1.0, 1.0], "records[2].vector: a value overflows float32"),
        (11, [0, 0, 0, 0], "records[11].vector: a zero vector has no direction"),
        (4, [1.0, 2.0], "records[4].vector: expected 4 numbers"),
        (5, [1.0, "2", 3.0, 4.0], "records[5].vector[1]: expected a number, got '2'"),
        (6, [True, False, True, True], "records[6].vector[0]: expected a number, got True"),
        (8, [1.0, None, 3.0, 4.0], "records[8].vector[1]: expected a number, got None"),
        (9, [[1.0], [2.0], [3.0], [4.0]], "records[9].vector[0]: expected a number, got [1.0]"),
        (12, "1, 2, 3, 4", "records[12].vector: expected a list of 4 numbers"),
    ],
)
def test_one_bad_vector_among_many_is_named(row: int, vector, message: str) -> None:
    records = _records(40)
    records[row]["vector"] = vector
    assert _error(records).startswith(message)


def test_errors_come_in_record_order_whichever_check_finds_them() -> None:
    records = _records(10)
    records[3]["vector"] = [float("nan")] * 4
    records[6]["id"] = ""
    assert _error(records).startswith("records[3].vector[0]")  # the vector comes first

    records = _records(10)
    records[2]["id"] = "a\nb"
    records[6]["vector"] = [1.0]
    assert _error(records).startswith("records[2].id")  # the id comes first

    records = _records(10)
    records[4]["vector"] = [0, 0, 0, 0]
    records[4]["metadata"] = "not an object"
    assert _error(records).startswith("records[4].vector")  # a record's vector, then metadata


def test_text_and_vector_records_mix_in_record_order() -> None:
    records = [
        {"id": "a", "vector": GOOD},
        {"id": "b", "text": "some words here"},
        {"id": "c", "vector": [1, 2, 3, 4]},  # integers are numbers too
    ]
    request = _validate(records, deletes=["z"])
    assert request.ids == ["a", "b", "c", "z"] and request.ops == ["u", "u", "u", "d"]
    assert request.vectors.dtype == np.float32 and request.vectors.shape == (3, 4)
    assert request.vectors[0].tolist() == GOOD
    assert request.vectors[2].tolist() == [1, 2, 3, 4]
    assert np.any(request.vectors[1])  # the text's embedding


def test_columns_make_the_request_the_same_records_as_json_make() -> None:
    """So a retry of `brainy ingest` rows sent as JSON would find its batch (same hash)."""
    vectors = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    ids = [f"row-{i}" for i in range(20)]
    columns = validate_vectors("docs", ids, vectors, Settings(), {"docs": SCHEMA}.get)
    records = _validate(
        [{"id": i, "vector": v} for i, v in zip(ids, vectors.tolist(), strict=True)]
    )
    assert columns.ids == records.ids and columns.ops == records.ops
    assert np.array_equal(columns.vectors, records.vectors)
    assert columns.request_hash == records.request_hash


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (["a", "", "c"], "records[1].id: expected a non-empty string"),
        (["a", "b\x00", "c"], "records[1].id: contains control characters"),
        (["a", "b", "é" * 300], "records[2].id: longer than 512 bytes"),
        (["a", 7, "c"], "records[1].id: expected a non-empty string, got 7"),
    ],
)
def test_bad_ids_in_columns_are_named(ids: list, message: str) -> None:
    vectors = np.ones((3, 4), dtype=np.float32)
    with pytest.raises(InvalidInput) as e:
        validate_vectors("docs", ids, vectors, Settings(), {"docs": SCHEMA}.get)
    assert f"{e.value.field}: {e.value.reason}".startswith(message)
