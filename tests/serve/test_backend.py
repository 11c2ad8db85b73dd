"""cora.serve.backend.NameCache: the bounded names -> embeddings cache of the served models."""

import numpy as np
import pytest

from cora.serve.backend import NameCache


class CountingEncoder:
    """A deterministic names -> [K, 4] encoder that records every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, names):
        self.calls.append(list(names))
        return np.array([[len(n), ord(n[0]), ord(n[-1]), sum(map(ord, n)) % 97] for n in names], np.float32)


def test_equals_the_encoder_and_encodes_each_name_once():
    encoder = CountingEncoder()
    cache = NameCache(encoder, capacity=10)
    np.testing.assert_array_equal(cache(["cat", "dog", "cat"]), encoder(["cat", "dog", "cat"]))
    encoder.calls.clear()
    np.testing.assert_array_equal(cache(["dog", "zebra", "cat"]), encoder(["dog", "zebra", "cat"]))
    assert encoder.calls[0] == ["zebra"]  # one call for the missing name only (the second is the check above)
    assert cache.encoded == 3


def test_bounded_least_recently_used():
    encoder = CountingEncoder()
    cache = NameCache(encoder, capacity=3)
    for i in range(20):
        cache([f"n{i}", f"m{i}"])
        assert len(cache.entries) <= 3
    assert list(cache.entries) == ["m18", "n19", "m19"]
    cache(["a", "b", "c"])
    cache(["a"])                       # a is now the most recent
    cache(["d"])                       # evicts b, the least recent
    assert list(cache.entries) == ["c", "a", "d"]
    encoder.calls.clear()
    cache(["a", "b"])
    assert encoder.calls == [["b"]]    # negative control: the evicted name is encoded again, the kept one not
    # a vocabulary larger than the cache still comes back whole
    np.testing.assert_array_equal(cache([f"x{i}" for i in range(8)]), encoder([f"x{i}" for i in range(8)]))


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        NameCache(CountingEncoder(), capacity=0)
