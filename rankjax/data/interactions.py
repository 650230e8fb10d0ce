"""User–item interaction logs for retrieval and recommendation, and their standard splits.

Readers:

* `read_atomic(inter_file, item_file=None, user_file=None)`: RecBole's atomic files — tab
  separated, with a typed header `name:type` (`token`, `token_seq`, `float`,
  `float_seq`); `.inter` rows are (user, item, [rating], [timestamp], ...), `.item` and
  `.user` rows carry side features (e.g. MovieLens titles, years and genres).
* `read_user_item(path)`: SASRec/BERT4Rec files — one `user item` pair per line, each
  user's lines in time order (the line order is the time).

`from_synthetic(world)` gives the embedded synthetic shop's users and event logs. All
return `Interactions`: dense user and item indices (`0..num_users-1`,
`0..num_items-1`, in order of first appearance) with the original ids kept, every user's
interactions in time order (stable for ties), and side features per item or user.

Splits, as the recommendation literature names them:

* `leave_one_out`: per user, the last interaction is test and the second-to-last valid
  (SASRec, BERT4Rec); users with fewer than 3 interactions keep them all in train.
* `random_split`: per user, interactions shuffled by a seed and cut 80/10/10 (RecBole's
  `RS` split with `group_by=user`; RecBole's rounding: each of valid and test gets at
  least one interaction when its share is below one, while train keeps at least one).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from rankjax.data.textio import FormatError, decoded_lines, excerpt, open_binary

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")


@dataclasses.dataclass(frozen=True)
class Interactions:
    """An interaction log with dense ids.

    Attributes:
      users: `[n]` int32 user index of each interaction.
      items: `[n]` int32 item index.
      timestamps: `[n]` float64 time (the line number when the file has none).
      ratings: `[n]` float32 (1 when the file has none).
      user_ids: `[num_users]` the original user ids (str).
      item_ids: `[num_items]` the original item ids (str).
      item_features: per-item side features `{name: [num_items, ...]}`: float columns as
        float32, token columns as int32 codes (0: unknown), token_seq columns as
        `[num_items, max_len]` int32 codes padded with 0; vocabularies in `vocabularies`.
      user_features: the same per user.
      vocabularies: `{"item:genre": ("", "Action", ...)}` code -> token (code 0 is "").
      source: the file(s), for messages.
    """

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    ratings: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_features: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    user_features: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    vocabularies: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    source: str = "<memory>"

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_interactions(self) -> int:
        return len(self.users)

    def take(self, rows: np.ndarray) -> Interactions:
        """The interactions `rows` (ids, features and vocabularies are kept)."""
        rows = np.asarray(rows, np.int64)
        return dataclasses.replace(
            self,
            users=self.users[rows],
            items=self.items[rows],
            timestamps=self.timestamps[rows],
            ratings=self.ratings[rows],
        )

    def item_texts(self, name: str) -> list[str]:
        """Each item's text feature `name` (a `token` or `token_seq` column) as a string:
        its tokens joined by spaces, as the file had them ("" when unknown)."""
        key = f"item:{name}"
        if key not in self.vocabularies or name not in self.item_features:
            texts = sorted(k.split(":", 1)[1] for k in self.vocabularies if k.startswith("item:"))
            raise ValueError(
                f"{self.source}: no item text feature {name!r}; text features: {texts}"
            )
        vocab = self.vocabularies[key]
        codes = np.asarray(self.item_features[name]).reshape(self.num_items, -1)
        return [" ".join(vocab[c] for c in row if c) for row in codes]

    def user_sequences(self) -> list[np.ndarray]:
        """Each user's items in time order: `num_users` int32 arrays."""
        order = np.lexsort((np.arange(len(self.users)), self.timestamps, self.users))
        counts = np.bincount(self.users, minlength=self.num_users)
        return np.split(self.items[order], np.cumsum(counts)[:-1])


def _time_ordered(
    users: np.ndarray, timestamps: np.ndarray
) -> np.ndarray:  # rows grouped by user, in time order, stable
    return np.lexsort((np.arange(len(users)), timestamps, users))


def _dense(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """`(codes [n], unique ids in order of first appearance)`."""
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(i, len(index)) for i in ids), np.int32, len(ids))
    return codes, np.asarray(list(index), dtype=object)


def _build(users, items, timestamps, ratings, source) -> Interactions:
    user_codes, user_ids = _dense(users)
    item_codes, item_ids = _dense(items)
    ts = np.asarray(timestamps, np.float64)
    order = _time_ordered(user_codes, ts)
    return Interactions(
        users=user_codes[order],
        items=item_codes[order],
        timestamps=ts[order],
        ratings=np.asarray(ratings, np.float32)[order],
        user_ids=user_ids,
        item_ids=item_ids,
        source=source,
    )


LAYOUTS = ("auto", "pairs", "sequences")


def read_user_item(path: str, layout: str = "auto") -> Interactions:
    """Reads a whitespace-separated interaction file in time order, one of two layouts:

    * `"pairs"`: `user item` per line (SASRec's and BERT4Rec's files), a user's lines in
      time order;
    * `"sequences"`: `user item item ...` per line, a user's whole history in time order
      (S3-Rec's and ICLRec's `beauty_s3rec.txt`);
    * `"auto"` (default): either, told apart by the lines themselves (a line of two
      fields reads the same in both layouts).

    Raises:
      FormatError: naming `path:line`: a line without a user and an item, or, with
        `layout="pairs"`, with more than one item.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"data.layout={layout!r}; valid: {list(LAYOUTS)}")
    users, items = [], []
    with open_binary(path) as f:
        for lineno, line in enumerate(decoded_lines(f, path, "utf-8"), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2 or (layout == "pairs" and len(fields) > 2):
                want = "'user item'" if layout == "pairs" else "'user item [item ...]'"
                shown = line.strip()[:80]
                raise FormatError(
                    f"{path}:{lineno}: expected {want}, got {len(fields)} field(s) {shown!r}"
                    + (
                        " (data.layout='sequences' reads one user's items per line)"
                        if layout == "pairs"
                        else ""
                    )
                )
            users += [fields[0]] * (len(fields) - 1)
            items += fields[1:]
    if not users:
        raise FormatError(f"{path}: no interactions")
    order = np.arange(len(users), dtype=np.float64)  # the file's order is the time
    return _build(users, items, order, np.ones(len(users)), path)


def _read_atomic_table(path: str) -> tuple[dict[str, str], list[list[str]]]:
    """`({column: type}, rows)` of an atomic file, with its header checked."""
    with open_binary(path) as f:
        lines = decoded_lines(f, path, "utf-8")
        header = next(lines, "").rstrip("\r\n")
        if not header:
            raise FormatError(f"{path}: empty file, expected a header of name:type columns")
        columns: dict[str, str] = {}
        for field in header.split("\t"):
            name, sep, kind = field.partition(":")
            if not sep or kind not in ATOMIC_TYPES:
                raise FormatError(
                    f"{path}:1: header field {field!r} must be name:type with type one of "
                    f"{list(ATOMIC_TYPES)}"
                )
            columns[name] = kind
        rows = []
        for lineno, line in enumerate(lines, 2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            row = line.split("\t")
            if len(row) != len(columns):
                raise FormatError(
                    f"{path}:{lineno}: expected {len(columns)} tab-separated fields "
                    f"({list(columns)}), got {len(row)}"
                )
            rows.append(row)
    return columns, rows


def _float(path: str, lineno: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):  # an infinite time or rating would order or weigh nothing
        raise FormatError(
            f"{path}:{lineno}: column {column!r} must be a finite number, got {excerpt(text)}"
        )
    return value


def _side_features(
    path: str,
    key: str,
    ids: np.ndarray,
    prefix: str,
    vocabularies: dict[str, tuple[str, ...]],
) -> dict[str, np.ndarray]:
    """Per-entity feature arrays aligned with `ids` from an `.item`/`.user` atomic file;
    entities absent from the file get zeros (unknown)."""
    columns, rows = _read_atomic_table(path)
    if key not in columns:
        raise FormatError(f"{path}:1: no {key!r} column; the header has {list(columns)}")
    position = {str(i): n for n, i in enumerate(ids)}
    names = [c for c in columns if c != key]
    col = {c: list(columns).index(c) for c in columns}
    out: dict[str, np.ndarray] = {}
    for name in names:
        kind = columns[name]
        if kind == "float":
            values = np.zeros(len(ids), np.float32)
        elif kind == "token":
            values = np.zeros(len(ids), np.int32)
        else:
            values = [[] for _ in ids]
        vocab: dict[str, int] = {"": 0}
        for lineno, row in enumerate(rows, 2):
            n = position.get(row[col[key]])
            if n is None:
                continue  # an entity without interactions
            text = row[col[name]]
            if kind == "float":
                values[n] = _float(path, lineno, name, text)
            elif kind == "token":
                values[n] = vocab.setdefault(text, len(vocab))
            elif kind == "token_seq":
                values[n] = [vocab.setdefault(t, len(vocab)) for t in text.split()]
            else:  # float_seq
                values[n] = [_float(path, lineno, name, t) for t in text.split()]
        if kind in ("token_seq", "float_seq"):
            width = max((len(v) for v in values), default=0)
            dtype = np.int32 if kind == "token_seq" else np.float32
            padded = np.zeros((len(ids), width), dtype)
            for n, v in enumerate(values):
                padded[n, : len(v)] = v
            values = padded
        if kind in ("token", "token_seq"):
            vocabularies[f"{prefix}:{name}"] = tuple(vocab)
        out[name] = values
    return out


def read_atomic(
    inter_file: str, item_file: str | None = None, user_file: str | None = None
) -> Interactions:
    """Reads RecBole atomic files (module docstring).

    Args:
      inter_file: the `.inter` file: `user_id:token`, `item_id:token` and optionally
        `rating:float` and `timestamp:float` columns (others are ignored).
      item_file: optional `.item` file with `item_id` and side features.
      user_file: optional `.user` file with `user_id` and side features.

    Raises:
      FormatError: a bad header, a short row or a non-numeric rating or timestamp, with
        `path:line`.
    """
    columns, rows = _read_atomic_table(inter_file)
    missing = [c for c in ("user_id", "item_id") if c not in columns]
    if missing:
        raise FormatError(
            f"{inter_file}:1: missing column(s) {missing}; header has {list(columns)}"
        )
    col = {c: list(columns).index(c) for c in columns}
    users = [r[col["user_id"]] for r in rows]
    items = [r[col["item_id"]] for r in rows]
    if "timestamp" in col:
        ts = [
            _float(inter_file, n, "timestamp", r[col["timestamp"]]) for n, r in enumerate(rows, 2)
        ]
    else:
        ts = list(range(len(rows)))
    if "rating" in col:
        ratings = [_float(inter_file, n, "rating", r[col["rating"]]) for n, r in enumerate(rows, 2)]
    else:
        ratings = [1.0] * len(rows)
    if not rows:
        raise FormatError(f"{inter_file}: no interactions")
    out = _build(users, items, ts, ratings, inter_file)
    vocabularies: dict[str, tuple[str, ...]] = {}
    item_features = (
        _side_features(item_file, "item_id", out.item_ids, "item", vocabularies)
        if item_file
        else {}
    )
    user_features = (
        _side_features(user_file, "user_id", out.user_ids, "user", vocabularies)
        if user_file
        else {}
    )
    return dataclasses.replace(
        out,
        item_features=item_features,
        user_features=user_features,
        vocabularies=vocabularies,
    )


EVENTS = ("view", "click", "cart", "purchase")


def from_synthetic(world) -> Interactions:
    """The synthetic world's users and their time-ordered event logs (`synthetic.World`).

    Every catalog product is an item (index = product id, interacted with or not); the
    rating is the event's strength (1 view, 2 click, 3 cart, 4 purchase). Item features:
    `category`, `brand`, `color` (codes + 1, 0 unknown), `price`, `popularity`, and for
    models `log_price` = ln(price) and `log_popularity` = ln(1 + popularity) (heavy-tailed
    raw values would swamp a dense layer); user features: `preferred_brand` (+ 1) and
    `price_sensitivity`.
    """
    inter, products, users = world.interactions, world.products, world.users
    num_items = len(products["category"])
    num_users = len(users["preferred_brand"])
    ts = np.asarray(inter["timestamp"], np.float64)
    user_codes = np.asarray(inter["user"], np.int32)
    order = _time_ordered(user_codes, ts)
    token = {k: np.asarray(products[k], np.int32) + 1 for k in ("category", "brand", "color")}
    return Interactions(
        users=user_codes[order],
        items=np.asarray(inter["item"], np.int32)[order],
        timestamps=ts[order],
        ratings=(np.asarray(inter["event"], np.float32) + 1)[order],
        user_ids=np.array([str(u) for u in range(num_users)], dtype=object),
        item_ids=np.array([str(i) for i in range(num_items)], dtype=object),
        item_features={
            **token,
            "price": np.asarray(products["price"], np.float32),
            "popularity": np.asarray(products["popularity"], np.float32),
            "log_price": np.log(np.asarray(products["price"], np.float64)).astype(np.float32),
            "log_popularity": np.log1p(np.asarray(products["popularity"], np.float64)).astype(
                np.float32
            ),
        },
        user_features={
            "preferred_brand": np.asarray(users["preferred_brand"], np.int32) + 1,
            "price_sensitivity": np.asarray(users["price_sensitivity"], np.float32),
        },
        source="synthetic world",
    )


def first_users(log: Interactions, n: int) -> Interactions:
    """The log of its first `n` users (in order of first appearance), for quick runs; the
    item catalog is kept whole."""
    if n <= 0 or n >= log.num_users:
        return log
    small = log.take(np.flatnonzero(log.users < n))
    return dataclasses.replace(
        small,
        user_ids=log.user_ids[:n],
        user_features={k: v[:n] for k, v in log.user_features.items()},
    )


# ----------------------------------------------------------------------------- splits


def leave_one_out(log: Interactions) -> dict[str, Interactions]:
    """Per user in time order: last -> test, second-to-last -> valid, the rest -> train;
    users with fewer than 3 interactions keep all of them in train (as SASRec does)."""
    order = _time_ordered(log.users, log.timestamps)
    users = log.users[order]
    counts = np.bincount(users, minlength=log.num_users)
    # Position of each interaction counted from its user's last one (0 = last).
    ends = np.cumsum(counts)
    from_end = ends[users] - 1 - np.arange(len(users))
    enough = counts[users] >= 3
    test = order[enough & (from_end == 0)]
    valid = order[enough & (from_end == 1)]
    train = order[~enough | (from_end >= 2)]
    return {"train": log.take(train), "valid": log.take(valid), "test": log.take(test)}


def _ratio_counts(total: int, ratios: Sequence[float]) -> list[int]:
    """RecBole's per-group split sizes: floor shares for the later parts, the rest to the
    first; a later part whose share is below one item gets one while the first keeps
    more than one."""
    counts = [int(r * total) for r in ratios]
    counts[0] = total - sum(counts[1:])
    for i in range(1, len(ratios)):
        if counts[0] <= 1:
            break
        if 0 < ratios[-i] * total < 1:
            counts[-i] += 1
            counts[0] -= 1
    return counts


def random_split(
    log: Interactions, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, Interactions]:
    """Per user, interactions in a seeded random order cut by `fractions` (module
    docstring); the same seed always gives the same split."""
    if len(fractions) != 3 or not np.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise ValueError(f"split fractions must be 3 values >= 0 summing to 1, got {fractions}")
    total = sum(fractions)
    ratios = [f / total for f in fractions]
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(log.num_interactions)
    # Group by user keeping the shuffled order inside each user.
    order = shuffled[np.argsort(log.users[shuffled], kind="stable")]
    counts = np.bincount(log.users, minlength=log.num_users)
    parts: dict[str, list[np.ndarray]] = {"train": [], "valid": [], "test": []}
    start = 0
    for count in counts:
        rows = order[start : start + count]
        start += count
        sizes = _ratio_counts(int(count), ratios)
        bounds = np.cumsum([0, *sizes])
        for name, lo, hi in zip(parts, bounds[:-1], bounds[1:], strict=True):
            parts[name].append(rows[lo:hi])
    return {
        name: log.take(np.sort(np.concatenate(rows)) if rows else np.zeros(0, np.int64))
        for name, rows in parts.items()
    }
