"""Deletion files: masked rows round-trip in whichever encoding is smaller, and a
damaged file is refused rather than misread."""

from __future__ import annotations

import numpy as np
import pytest

from brainy.format.deletes import (
    ARRAY,
    BITMAP,
    CorruptDeletionFile,
    decode_mask,
    deletion_key,
    encode_mask,
)


@pytest.mark.parametrize(
    ("rows", "count", "kind"),
    [
        ([], 10, ARRAY),
        ([3], 1_000_000, ARRAY),  # one row of a million: 4 bytes, not a 125 kB bitmap
        (list(range(0, 1000, 2)), 1000, BITMAP),  # half the rows: the bitmap is smaller
        ([0, 9], 10, BITMAP),  # 2 bytes of bitmap beat 8 of array
    ],
)
def test_masks_round_trip_in_the_smaller_encoding(rows, count, kind):
    data = encode_mask(np.asarray(rows, dtype=np.int64), count)
    assert data[24] == kind
    decoded, n = decode_mask(data, "k")
    assert n == count and decoded.tolist() == rows


def test_a_flipped_byte_or_a_truncated_file_is_refused():
    data = bytearray(encode_mask(np.arange(0, 100, 3), 100))
    data[-1] ^= 0x01
    with pytest.raises(CorruptDeletionFile, match="checksum"):
        decode_mask(bytes(data), "k")
    with pytest.raises(CorruptDeletionFile, match="not a Brainy deletion file"):
        decode_mask(b"BRAINYD1" + b"\0" * 5, "k")


@pytest.mark.parametrize("rows", [[5, 5], [7, 3], [-1], [10]])
def test_rows_must_be_sorted_unique_and_in_range(rows):
    with pytest.raises(ValueError, match="sorted, unique and in"):
        encode_mask(np.asarray(rows), 10)


def test_every_deletion_file_gets_a_key_of_its_own():
    assert deletion_key("docs", "abc") != deletion_key("docs", "abc")
    assert deletion_key("docs", "abc").startswith("docs/deletes/abc/")
