"""Stratified splits that keep every patient (or other group) on one side."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

TEST_STREAM, VAL_STREAM = 1, 2  # purpose tags for the seeded split shuffles


def pick_groups(strata: list[str], groups: list[str], fraction: float, seed: int) -> np.ndarray:
    """A boolean mask choosing about `fraction` of the groups of each stratum, by a seeded shuffle.

    A group (e.g. a patient) is chosen or left whole; its stratum is the most common one among its
    items. Every stratum with at least two groups gives at least one.
    """
    group_stratum = {}
    for group, items in _items_by_group(groups).items():
        group_stratum[group] = Counter(strata[i] for i in items).most_common(1)[0][0]
    by_stratum = defaultdict(list)
    for group in sorted(group_stratum):
        by_stratum[group_stratum[group]].append(group)
    rng = np.random.default_rng(seed)
    chosen = set()
    for stratum in sorted(by_stratum):
        members = by_stratum[stratum]
        count = int(round(fraction * len(members)))
        if fraction > 0 and len(members) > 1:
            count = min(max(count, 1), len(members) - 1)
        order = rng.permutation(len(members))
        chosen.update(members[i] for i in order[:count])
    return np.array([group in chosen for group in groups], dtype=bool)


def _items_by_group(groups: list[str]) -> dict[str, list[int]]:
    items = defaultdict(list)
    for index, group in enumerate(groups):
        items[group].append(index)
    return items
