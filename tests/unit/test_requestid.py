"""Request ids: a sane client id is kept, anything else replaced by a new, unique one."""

from __future__ import annotations

import re

import pytest

from inference_engine.requestid import RequestIds, valid_request_id


def test_new_ids_are_unique_32_hex_digits_per_process_and_across_instances() -> None:
    first, second = RequestIds(), RequestIds()
    ids = [first.new() for _ in range(10_000)] + [second.new() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert ids[0][:16] != ids[-1][:16]  # each instance draws its own random prefix


@pytest.mark.parametrize("candidate", ["abc-1.2:3_x", "x" * 128, "  padded  "])
def test_a_sane_client_id_is_kept(candidate: str) -> None:
    assert RequestIds().accept(candidate) == candidate.strip()


@pytest.mark.parametrize("candidate", [None, "", "has space", "x" * 129, "new\nline", "é"])
def test_anything_else_gets_a_new_id(candidate: str | None) -> None:
    accepted = RequestIds().accept(candidate)
    assert accepted != candidate and valid_request_id(accepted) and len(accepted) == 32
