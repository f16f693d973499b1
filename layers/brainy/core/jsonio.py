"""Decoding JSON fast: orjson, with the standard decoder behind it."""

from __future__ import annotations

import json
from typing import Any

import orjson


def decode_json(data: bytes | str) -> Any:
    """orjson's parse (a segment header of 4,000 rows, a request body: several
    times faster than the standard decoder); what it refuses is parsed again by
    the standard decoder, which accepts what it always did (`NaN` literals,
    integers beyond 64 bits: validation names them) and words its errors as it
    always did."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
