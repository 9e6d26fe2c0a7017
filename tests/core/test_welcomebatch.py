"""Many welcomes under one signature (SPEC 4, version 3): every path folds its own leaf into
the one root, and nothing else does."""

from __future__ import annotations

import hashlib
import os

import pytest

from lanlic.core import welcomebatch as wb


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 100])
def test_every_path_folds_its_leaf_into_the_root(n: int) -> None:
    leaves = [wb.leaf(os.urandom(40)) for _ in range(n)]
    root, paths = wb.build(leaves)
    assert len(paths) == n
    for leaf, path in zip(leaves, paths, strict=True):
        assert wb.root_of(leaf, path) == root
        assert len(path) % wb.STEP == 0 and len(path) // wb.STEP <= (n - 1).bit_length()
    # No leaf folds into the root along another's path (when the two paths differ).
    for i in range(n - 1):
        if paths[i] != paths[i + 1]:
            assert wb.root_of(leaves[i], paths[i + 1]) != root


def test_a_batch_of_one_is_its_leaf() -> None:
    leaf = wb.leaf(b"handshake")
    assert wb.build([leaf]) == (leaf, [b""])
    assert leaf == hashlib.sha256(b"\x00handshake").digest()


def test_a_node_is_not_a_leaf() -> None:
    """Domain separation: the root of two leaves is not the leaf of their concatenation."""
    a, b = wb.leaf(b"a"), wb.leaf(b"b")
    root, _ = wb.build([a, b])
    assert root == hashlib.sha256(b"\x01" + a + b).digest()
    assert root != wb.leaf(a + b)


def test_an_edited_path_or_leaf_leads_elsewhere() -> None:
    leaves = [wb.leaf(bytes([i])) for i in range(6)]
    root, paths = wb.build(leaves)
    path = paths[2]
    for at in range(len(path)):
        edited = bytearray(path)
        edited[at] ^= 1
        assert wb.root_of(leaves[2], bytes(edited)) != root
    assert wb.root_of(wb.leaf(b"another nonce"), path) != root


@pytest.mark.parametrize(
    "path",
    [
        b"\x00" * 32,  # not whole steps
        b"\x02" + bytes(32),  # a side byte that is neither 0 nor 1
        (b"\x00" + bytes(32)) * (wb.MAX_STEPS + 1),  # longer than any batch's
    ],
)
def test_a_path_that_is_not_one_is_refused(path: bytes) -> None:
    assert wb.root_of(wb.leaf(b"x"), path) is None


def test_a_batch_is_one_to_max_batch_leaves() -> None:
    with pytest.raises(ValueError):
        wb.build([])
