"""Reproducible, well-spread training seeds (the reporting protocol of "Revisiting BN")."""

from __future__ import annotations

import hashlib


def md5_seed(k: int) -> int:
    """The k-th seed: the MD5 digest of the decimal string of k, as a 31-bit integer."""
    digest = hashlib.md5(str(k).encode(), usedforsecurity=False).hexdigest()
    return int(digest, 16) % (2**31 - 1)


def md5_seeds(count: int) -> list[int]:
    """Seeds for k = 1..count."""
    return [md5_seed(k) for k in range(1, count + 1)]
