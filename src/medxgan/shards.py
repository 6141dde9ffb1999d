"""Sharding: inversion and explanation split the positive test images into contiguous chunks.

Each chunk is a separate job (on a cluster, a separate SLURM job); a gather step concatenates the
chunks into exactly the files an unsharded run writes. Two facts make the result identical:
every image's inversion is seeded by its own manifest row, and a chunk's size is a multiple of
the step's batch size, so every chunk is cut into the same batches as the whole test set.

This module imports no torch: the Snakefile uses it while it builds the DAG.
"""

from __future__ import annotations

import re

from medxgan.config import ConfigError

CHUNK_PATTERN = re.compile(r"^(\d+):(\d+)$")


class ShardError(ValueError):
    """Chunk files that do not join into the whole test set; the message names the file."""


def chunk_size(settings: dict, section: str) -> int:
    """The section's `chunk_size` (0 = unsharded), checked to be a whole number of batches."""
    cfg = settings[section]
    size = cfg.get("chunk_size") or 0
    if size and size % cfg["batch_size"]:
        raise ConfigError(f"{section}.chunk_size ({size}) must be a multiple of {section}.batch_size "
                          f"({cfg['batch_size']}), so each chunk is cut into the batches an unsharded run uses")
    return size


def chunk_ranges(total: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) positions of the chunks covering `total` images, `size` at a time (0: one chunk)."""
    if total < 1:
        raise ValueError(f"nothing to split: {total} images")
    size = size or total
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def parse_chunk(text: str) -> tuple[int, int]:
    """'START:STOP' -> (start, stop), as `--chunk` takes it."""
    match = CHUNK_PATTERN.match(text)
    if not match or int(match[1]) >= int(match[2]):
        raise ConfigError(f"{text!r}: expected START:STOP with 0 <= START < STOP, e.g. 0:128")
    return int(match[1]), int(match[2])


def check_chunk(start: int, stop: int, total: int, batch_size: int, section: str) -> None:
    """A chunk must lie inside the test set and start and end on batch boundaries (or at the end)."""
    if stop > total:
        raise ConfigError(f"chunk {start}:{stop} reaches past the {total} positive test images")
    if start % batch_size or (stop % batch_size and stop != total):
        raise ConfigError(f"chunk {start}:{stop} does not start and end on a multiple of {section}.batch_size "
                          f"({batch_size}); its batches would differ from an unsharded run's")
