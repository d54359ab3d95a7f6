"""Deterministic seeds from integer keys: splitmix64, independent of Python's ``hash`` (whose value
for a tuple is an implementation detail, and salted for str/bytes) and of the process."""
from __future__ import annotations

_MASK64 = 0xFFFFFFFFFFFFFFFF
_GOLDEN = 0x9E3779B97F4A7C15


def splitmix_hash(*key: int) -> int:
    """A deterministic 64-bit hash of integers (the splitmix64 finaliser chained over the key)."""
    z = _GOLDEN
    for k in key:
        z = (z + (k & _MASK64) * 0xBF58476D1CE4E5B9 + _GOLDEN) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
    return z


def seed_from(*key: int) -> int:
    """A non-negative 63-bit seed of the integer key (what ``torch.Generator.manual_seed`` takes)."""
    return splitmix_hash(*key) & 0x7FFFFFFFFFFFFFFF
