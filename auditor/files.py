"""Files on disk: content hashes, and writes that a crash never leaves half done.

Every output (results.json, report.html, compare.html, junit.xml, summary.md, a generated data
set) is written under a temporary name and renamed into place, so a reader sees the old file or
the new one, never a part of it. Model loaders and the zoo hash checkpoints with `sha256_of`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

CHUNK_BYTES = 1 << 20


def sha256_of(path: str | Path) -> str:
    """The hex SHA-256 of a file's bytes, read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write via a temporary file and a rename: a crash never leaves a half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_folder_once(root: str | Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` fills a temporary folder, which is then renamed to `root` with a `.complete` marker;
    a folder that has the marker already is kept as it is. An interrupted write never looks complete."""
    root = Path(root)
    if (root / ".complete").exists():
        return root
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    return root
