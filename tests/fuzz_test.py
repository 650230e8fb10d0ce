"""A standing fuzz corpus over what users hand rankjax: config values, input files and
workdirs. Every case must end in a clear error (one line, naming the key or the file) or in
a run that finishes with sound numbers (a cleaning policy logged where one applied): never
a traceback from inside a library, never a hang (each case is bounded in time), never exit
0 with wrong numbers."""

import contextlib
import copy
import fcntl
import glob
import math
import os
import shutil
import signal

import ml_collections
import numpy as np
import pytest
from configs_test import CONFIGS
from helpers import load_config

from rankjax import checkpoint, config_args, trainer, workdir
from rankjax.data import interactions, judgments, libsvm
from rankjax.data.libsvm import FormatError

# The errors the command line reports in one line (rankjax.cli), besides FormatError.
USER_ERRORS = (
    ValueError,
    KeyError,
    FileNotFoundError,
    PermissionError,
    checkpoint.CheckpointError,
    workdir.WorkdirError,
)
HOSTILE_NUMBERS = (-1, 0, float("nan"), float("inf"), 1e300, "x", True, -(2**63))
HOSTILE_STRINGS = ("x-bogus", "")
HOSTILE_BOOLS = ("x", 2)
# String keys whose values are free: paths, regexes, names checked where they are used
# (a missing file or column is an error naming the file there).
FREE_STRINGS = (
    "file",
    "checkpoint",
    "teacher",
    "init_from",
    "init_embeddings",
    "exclude",
    "layers",
    "params",
    "column",
    "best_metric",
)


@contextlib.contextmanager
def bounded(seconds: int):
    """Fails the case when it runs longer than `seconds` (a hang)."""

    def expire(*_):
        raise TimeoutError(f"case ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _config(name: str) -> ml_collections.ConfigDict:
    try:
        return load_config(name, "runlocal")
    except ValueError:  # a config without a runlocal argument
        return load_config(name)


def _with(plain: dict, key: str, value) -> ml_collections.ConfigDict:
    """A copy of the plain config `plain` with the dotted `key` set to `value` (no type
    checks: a config file is Python and can hold anything)."""
    out = copy.deepcopy(plain)
    node, parts = out, key.split(".")
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value
    return ml_collections.ConfigDict(out)


def _hostile(value) -> tuple:
    if isinstance(value, bool):
        return HOSTILE_BOOLS
    if isinstance(value, (int, float)):
        return HOSTILE_NUMBERS
    if isinstance(value, str):
        return HOSTILE_STRINGS
    return ()


def _cases(name: str):
    """`(key, value)` of every hostile value for every leaf of config `name`."""
    plain = _config(name).to_dict()
    for key, value in config_args.flatten(plain).items():
        if key.startswith("provenance"):
            continue
        for bad in _hostile(value):
            yield plain, key, value, bad


def _check(config) -> str | None:
    """None when the up-front checks accept `config`, else their one-line message."""
    try:
        trainer.check(config)
    except ValueError as e:
        return str(e)
    return None


@pytest.mark.parametrize("name", CONFIGS)
def test_hostile_config_values_are_refused_naming_the_key_or_are_valid(name):
    accepted = []
    for plain, key, original, bad in _cases(name):
        message = _check(_with(plain, key, bad))
        if message is None:
            accepted.append((key, original, bad))
            continue
        assert "\n" not in message, (key, bad, message)
        assert key.rsplit(".", 1)[-1] in message, (key, bad, message)
    for key, original, bad in accepted:
        if isinstance(original, bool) or (
            isinstance(original, (int, float)) and bad in ("x", True)
        ):
            pytest.fail(f"{name}: {key}={bad!r} of the wrong type was accepted")
        if isinstance(bad, float) and not math.isfinite(bad):
            pytest.fail(f"{name}: {key}={bad!r} was accepted")
        if isinstance(original, str) and not any(key.endswith(s) for s in FREE_STRINGS):
            pytest.fail(f"{name}: {key}={bad!r} was accepted")


def _accepted_changes(name: str) -> list[tuple[str, object]]:
    """The hostile values config `name`'s checks accept, where they change the config."""
    out = []
    for plain, key, original, bad in _cases(name):
        if isinstance(original, (bool, str)) or bad == original or bad is True:
            continue
        if _check(_with(plain, key, bad)) is None:
            out.append((key, bad))
    return out


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
@pytest.mark.parametrize("key, value", _accepted_changes("synthetic_listwise"))
def test_accepted_values_train_to_sound_numbers_or_a_clear_error(key, value, tmp_path):
    """What the checks let through must run: finite metrics in range, or an error
    that names what went wrong (e.g. a learning rate of 1e300 diverges)."""
    config = _with(_config("synthetic_listwise").to_dict(), key, value)
    with bounded(240):
        try:
            results = trainer.train_and_evaluate(config, str(tmp_path / "run"))
        except USER_ERRORS + (FloatingPointError,) as e:
            assert "\n" not in str(e), str(e)
            return
    for metric, v in results["test"].items():
        assert math.isfinite(v) and 0 <= v <= 1, (key, value, metric, v)


# --- Readers: random corruptions of a valid file -----------------------------------------

PIECES = (
    b":",
    b" ",
    b"#",
    b"\n",
    b"qid:",
    b"x",
    b"-",
    b"1e9",
    b"NULL",
    b"nan",
    b"\xff",
    b"0:",
    b"99999999:1",
    b"",
    b"\t",
    b"3:3:3",
    b"+",
    b".",
    b'"',
    b",",
)


def corrupt(text: bytes, rng: np.random.Generator) -> bytes:
    """One random edit: delete, insert, replace a byte or a token, duplicate or swap lines."""
    kind = rng.integers(6)
    i = int(rng.integers(len(text) + 1))
    if kind == 0 and text:
        return text[:i] + text[i + 1 :]
    if kind in (1, 2):
        piece = PIECES[rng.integers(len(PIECES))]
        return text[:i] + piece + text[i + (kind == 2) :]
    lines = text.split(b"\n")
    j, k = rng.integers(len(lines), size=2)
    if kind == 3:
        lines.insert(int(j), lines[int(k)])
    elif kind == 4:
        lines[j], lines[k] = lines[k], lines[j]
    else:
        lines = lines[: int(j)]
    return b"\n".join(lines)


def fuzz(tmp_path, text: bytes, read, sound, rounds: int, seed: int) -> None:
    """Reads `rounds` corrupted copies of `text`: each is refused with a one-line
    FormatError naming the file, or read into data that `sound(data)` accepts."""
    rng = np.random.default_rng(seed)
    outcomes = {"parsed": 0, "rejected": 0}
    for r in range(rounds):
        data = text
        for _ in range(int(rng.integers(1, 4))):
            data = corrupt(data, rng)
        path = tmp_path / f"fuzz{r}"
        path.write_bytes(data)
        with bounded(30):
            try:
                read_data = read(str(path))
            except FormatError as e:
                assert str(e).startswith(str(path)), e  # names the file
                assert "\n" not in str(e)  # one line
                outcomes["rejected"] += 1
                continue
        sound(read_data)
        outcomes["parsed"] += 1
    assert outcomes["parsed"] > 0 and outcomes["rejected"] > 0, outcomes


def _sound_lists(d) -> None:
    assert np.isfinite(d.labels).all() and np.isfinite(d.features).all()
    assert d.list_offsets[-1] == d.num_items


def test_fuzz_libsvm_reader(tmp_path):
    text = "2 qid:1 1:0.5 2:1\n0 qid:1 1:0.1 2:3\n1 qid:2 1:0.7 2:2\n0 qid:2 1:0.2 2:5\n" * 3
    text = text.replace("qid:1", "qid:a").encode()
    text = b"".join(
        line.replace(b"qid:2", b"qid:%d" % i) + b"\n" for i, line in enumerate(text.splitlines())
    )
    read = lambda p: libsvm.read(p, label_range=(0, 4))  # noqa: E731
    fuzz(tmp_path, text, read, _sound_lists, rounds=400, seed=0)


def test_fuzz_judgments_reader(tmp_path):
    text = (
        "id,query,label,price,title\n"
        + "".join(f'{i},q{i % 5},{i % 4},{i * 1.5},"item, {i}"\n' for i in range(30))
    ).encode()

    def read(p):
        return judgments.read(
            p,
            query_column="query",
            label_column="label",
            feature_columns=("price",),
            text_columns=("title",),
            label_range=(0, 3),
        )

    fuzz(tmp_path, text, read, _sound_lists, rounds=400, seed=1)


def _sound_log(log: interactions.Interactions) -> None:
    n = log.num_interactions
    assert n > 0 and len(log.items) == n and len(log.timestamps) == n
    assert 0 <= log.users.min() and log.users.max() < log.num_users
    assert 0 <= log.items.min() and log.items.max() < log.num_items
    assert np.isfinite(log.timestamps).all() and np.isfinite(log.ratings).all()
    assert sum(len(s) for s in log.user_sequences()) == n


@pytest.mark.parametrize("layout", ["pairs", "sequences", "auto"])
def test_fuzz_interaction_readers(tmp_path, layout):
    if layout == "pairs":
        text = "".join(f"u{i % 7} i{(i * 5) % 11}\n" for i in range(40))
    else:
        text = "".join(
            f"u{u} " + " ".join(f"i{(u + j) % 9}" for j in range(5)) + "\n" for u in range(8)
        )
    read = lambda p: interactions.read_user_item(p, layout=layout)  # noqa: E731
    fuzz(tmp_path, text.encode(), read, _sound_log, rounds=300, seed=2)


def test_fuzz_atomic_reader(tmp_path):
    text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        f"{i % 6}\t{(i * 3) % 10}\t{1 + i % 5}\t{1000 + i}\n" for i in range(40)
    )
    fuzz(tmp_path, text.encode(), interactions.read_atomic, _sound_log, rounds=300, seed=3)


# --- Workdirs: a finished run's folder, damaged, then rerun --------------------------------


def _run_config():
    return load_config("synthetic_listwise", "runlocal,steps=2")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    path = tmp_path_factory.mktemp("finished") / "run"
    trainer.train_and_evaluate(_run_config(), str(path))
    return path


def _garbage(path):
    with open(path, "wb") as f:
        f.write(b"\x00garbage{")


def _flip_data(folder):
    for name in glob.glob(os.path.join(folder, "**", "d", "*"), recursive=True):
        data = bytearray(open(name, "rb").read())
        if data:
            data[len(data) // 2] ^= 1
            with open(name, "wb") as f:
                f.write(bytes(data))


def _replace_by_file(folder):
    shutil.rmtree(folder)
    _garbage(folder)


def _step(w, sub="checkpoints"):
    folder = os.path.join(w, sub)
    return os.path.join(folder, max((n for n in os.listdir(folder) if n.isdigit()), key=int))


def _link_out(path):
    os.remove(path)
    os.symlink(os.path.join(os.path.dirname(os.path.dirname(path)), "outside"), path)


# state -> (damage(workdir), what the rerun must do: "ok", or a text its one-line error has)
STATES = {
    "config unreadable": (lambda w: _garbage(f"{w}/config.json"), "config.json cannot be read"),
    "config a folder": (
        lambda w: (os.remove(f"{w}/config.json"), os.mkdir(f"{w}/config.json")),
        "config.json cannot be read",
    ),
    "config a link out": (lambda w: _link_out(f"{w}/config.json"), "ok"),
    "metrics.jsonl garbage": (lambda w: _garbage(f"{w}/metrics.jsonl"), "ok"),
    "results.json garbage": (lambda w: _garbage(f"{w}/results.json"), "ok"),
    "transform garbage": (lambda w: _garbage(f"{w}/feature_transform.json"), "ok"),
    "tensorboard garbage": (
        lambda w: _garbage(glob.glob(f"{w}/tensorboard/events*")[0]),
        "ok",
    ),
    "checkpoint bits flipped": (lambda w: _flip_data(f"{w}/checkpoints"), "checksum mismatch"),
    "best bits flipped": (lambda w: _flip_data(f"{w}/best"), "ok"),
    "checksums garbage": (
        lambda w: _garbage(f"{_step(w)}/rankjax_checksums.json"),
        "unreadable checksum manifest",
    ),
    "checksums removed": (lambda w: os.remove(f"{_step(w)}/rankjax_checksums.json"), "ok"),
    "step metadata garbage": (lambda w: _garbage(f"{_step(w)}/_CHECKPOINT_METADATA"), "checksum"),
    "checkpoints a file": (lambda w: _replace_by_file(f"{w}/checkpoints"), "is not a folder"),
    "best a file": (lambda w: _replace_by_file(f"{w}/best"), "is not a folder"),
    "empty step folder": (lambda w: os.mkdir(f"{w}/checkpoints/7"), "ok"),
    "orbax temporary folder": (
        lambda w: os.mkdir(f"{w}/checkpoints/9.orbax-checkpoint-tmp-1"),
        "ok",
    ),
    "best removed": (lambda w: shutil.rmtree(f"{w}/best"), "ok"),
    "checkpoints removed": (lambda w: shutil.rmtree(f"{w}/checkpoints"), "ok"),
}


@pytest.mark.parametrize("state", sorted(STATES))
def test_a_damaged_workdir_resumes_soundly_or_is_refused_naming_the_file(finished, tmp_path, state):
    damage, want = STATES[state]
    w = str(tmp_path / "run")
    shutil.copytree(finished, w, symlinks=True)
    damage(w)
    with bounded(240):
        try:
            results = trainer.train_and_evaluate(_run_config(), w)
        except USER_ERRORS as e:
            message = str(e)
            assert want != "ok", f"{state}: {message}"
            assert want in message and "\n" not in message, message
            assert w in message, message  # names the file or the folder
            return
    assert want == "ok", f"{state}: the rerun finished; expected an error with {want!r}"
    for metric, v in results["test"].items():
        assert math.isfinite(v) and 0 <= v <= 1, (metric, v)
    assert not os.path.exists(tmp_path / "outside")  # nothing written through a link


def test_a_workdir_held_by_another_process_is_refused(finished, tmp_path):
    w = str(tmp_path / "run")
    shutil.copytree(finished, w)
    fd = os.open(os.path.join(w, workdir.LOCK), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(workdir.WorkdirError, match="in use by another run"):
            trainer.train_and_evaluate(_run_config(), w)
    finally:
        os.close(fd)


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "run"
    path.write_text("x")
    with pytest.raises(workdir.WorkdirError, match="is a file, not a folder"):
        trainer.train_and_evaluate(_run_config(), str(path))


def test_a_run_that_stopped_before_saving_anything_takes_a_corrected_config(tmp_path):
    w = str(tmp_path / "run")
    bad = _run_config()
    bad.data.world.num_products = 1  # fewer products than a list holds
    with pytest.raises(ValueError, match="data.world.num_products=1"):
        trainer.train_and_evaluate(bad, w)
    trainer.train_and_evaluate(_run_config(), w)  # not refused as "another config"
