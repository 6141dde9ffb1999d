"""Finding a source's folders inside whatever an archive unpacked to."""

from __future__ import annotations

from pathlib import Path

from medxgan.data.download import DataSourceError
from medxgan.data.manifest import is_image_name

JUNK_PREFIXES = ("__MACOSX", "._")  # resource forks that macOS zips add beside every file


def is_junk(path: Path) -> bool:
    return any(part.startswith(JUNK_PREFIXES) for part in path.parts)


def find_folder(root: Path, name: str, marker: str | None = None) -> Path:
    """The folder called `name` at or under root: the shallowest one holding `marker` if any does,
    else the shallowest one (archives nest their folders to different depths)."""
    candidates = [p for p in [root, *root.rglob(name)] if p.name == name and p.is_dir() and not is_junk(p)]
    if not candidates:
        raise DataSourceError(f"{root}: no folder named {name!r} in the downloaded files")
    candidates.sort(key=lambda p: (len(p.parts), str(p)))
    marked = [p for p in candidates if marker and (p / marker).is_dir()]
    return (marked or candidates)[0]


def require_folders(folder: Path, names) -> None:
    """Every one of `names` must be a subfolder of `folder`; the error names the first one missing."""
    for name in names:
        if not (folder / name).is_dir():
            present = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
            raise DataSourceError(f"{folder}: class folder {name!r} not found (found: {', '.join(present) or 'nothing'})")


def image_files(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and is_image_name(p) and not is_junk(p.relative_to(folder)))


def subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not is_junk(p.relative_to(folder)))
