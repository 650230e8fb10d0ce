"""Checksums that catch corrupted checkpoints and artifacts before they are used.

A saved folder (a checkpoint step, a served model) is *sealed* once its files are final: a
manifest `rankjax_checksums.json` lists the SHA-256 of every file in it. `verify` recomputes
them and names the first file that is missing or differs, so a bit flip on disk is found
at load instead of silently changing a model's scores. A folder without a manifest (written
by an older rankjax, or a run killed between saving and sealing) is not verified.
"""

from __future__ import annotations

import hashlib
import json
import os

from rankjax import files

MANIFEST = "rankjax_checksums.json"


def sha256_file(path: str) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: str) -> list[str]:
    out = []
    for root, _, names in os.walk(folder):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), folder)
            if rel != MANIFEST and not os.path.islink(os.path.join(folder, rel)):
                out.append(rel)
    return sorted(out)


def is_sealed(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, MANIFEST))


def seal(folder: str) -> None:
    """Writes `folder`'s manifest: the SHA-256 of every file in it (atomically)."""
    digests = {rel: sha256_file(os.path.join(folder, rel)) for rel in _files(folder)}
    files.write_atomic(os.path.join(folder, MANIFEST), json.dumps({"sha256": digests}, indent=1))


def verify(folder: str) -> str | None:
    """None when `folder` matches its manifest (or has none), else what is wrong, naming
    the file."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            digests = json.load(f)["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{path}: unreadable checksum manifest ({e})"
    for rel, expected in sorted(digests.items()):
        full = os.path.join(folder, rel)
        if not os.path.isfile(full):
            return f"{full}: missing (listed in {MANIFEST})"
        if sha256_file(full) != expected:
            return f"{full}: checksum mismatch (the file changed after it was saved)"
    return None
