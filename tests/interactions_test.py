"""Interaction logs: RecBole atomic and SASRec user-item readers, leave-one-out and per-user
random splits (hand-computed), and the shared MovieLens/Beauty files' known sizes."""

import os

import numpy as np
import pytest

from rankjax.data import interactions as it
from rankjax.data.textio import FormatError


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "u1\ta\t5\t30\n"
    "u2\tb\t3\t10\n"
    "u1\tb\t4\t10\n"
    "u1\tc\t1\t20\n"
    "u2\ta\t2\t5\n"
    "u1\td\t2\t20\n"
)


def test_atomic_reader_orders_each_user_by_time_stably(tmp_path):
    log = it.read_atomic(write(tmp_path, "x.inter", INTER))
    assert list(log.user_ids) == ["u1", "u2"] and list(log.item_ids) == ["a", "b", "c", "d"]
    seqs = [list(log.item_ids[s]) for s in log.user_sequences()]
    # u1: b@10, then c and d both @20 in file order, then a@30.
    assert seqs == [["b", "c", "d", "a"], ["a", "b"]]
    np.testing.assert_array_equal(log.ratings[log.users == 0], [4, 1, 2, 5])


def test_atomic_side_features_are_coded_and_padded(tmp_path):
    item = write(
        tmp_path,
        "x.item",
        "item_id:token\ttitle:token_seq\tyear:float\tkind:token\n"
        "a\tToy Story\t1995\tfilm\nb\tHeat\t1995\tfilm\n"
        "z\tUnused\t2000\tshow\nc\tUp\t2009\tshort\n",
    )
    log = it.read_atomic(write(tmp_path, "x.inter", INTER), item_file=item)
    f = log.item_features
    assert f["title"].shape == (4, 2)  # d has no row: all zeros (unknown)
    vocab = log.vocabularies["item:title"]
    assert [vocab[c] for c in f["title"][0]] == ["Toy", "Story"]
    np.testing.assert_array_equal(f["title"][3], [0, 0])
    np.testing.assert_allclose(f["year"], [1995, 1995, 2009, 0])
    assert [log.vocabularies["item:kind"][c] for c in f["kind"]] == ["film", "film", "short", ""]


@pytest.mark.parametrize(
    "text, match",
    [
        ("user_id\titem_id:token\nu\ta\n", r"x.inter:1: header field 'user_id'"),
        ("user_id:token\titem_id:token\nu\ta\nu\n", r"x.inter:3: expected 2"),
        ("user_id:token\titem_id:token\ttimestamp:float\nu\ta\tnoon\n", r"x.inter:2: .*timestamp"),
        ("user:token\titem_id:token\nu\ta\n", r"missing column\(s\) \['user_id'\]"),
    ],
)
def test_bad_atomic_files_name_file_and_line(tmp_path, text, match):
    with pytest.raises(FormatError, match=match):
        it.read_atomic(write(tmp_path, "x.inter", text))


def test_user_item_file_keeps_line_order_and_rejects_bad_lines(tmp_path):
    log = it.read_user_item(write(tmp_path, "x.txt", "1 10\n2 7\n1 3\n\n1 10\n"))
    assert [list(log.item_ids[s]) for s in log.user_sequences()] == [["10", "3", "10"], ["7"]]
    with pytest.raises(FormatError, match=r"x.txt:2: expected 'user item', .*layout='sequences'"):
        it.read_user_item(write(tmp_path, "x.txt", "1 10\n1 2 3\n"), "pairs")
    with pytest.raises(FormatError, match=r"x.txt:2: expected 'user item \[item ...\]'"):
        it.read_user_item(write(tmp_path, "x.txt", "1 10\n7\n"))
    with pytest.raises(ValueError, match="data.layout='rows'"):
        it.read_user_item(write(tmp_path, "x.txt", "1 10\n"), "rows")


@pytest.mark.parametrize("layout", ["auto", "sequences"])
def test_one_history_per_line_reads_like_one_pair_per_line(tmp_path, layout):
    pairs = it.read_user_item(write(tmp_path, "p.txt", "1 10\n2 7\n1 3\n2 4\n1 10\n"))
    seqs = it.read_user_item(write(tmp_path, "s.txt", "1 10 3 10\n2 7 4\n"), layout)
    histories = [[list(g.item_ids[s]) for s in g.user_sequences()] for g in (pairs, seqs)]
    assert histories[0] == histories[1] == [["10", "3", "10"], ["7", "4"]]
    assert list(pairs.user_ids) == list(seqs.user_ids)


def test_leave_one_out_holds_out_the_last_two_of_users_with_three_or_more(tmp_path):
    log = it.read_user_item(
        write(tmp_path, "x.txt", "1 a\n1 b\n1 c\n1 d\n2 a\n2 b\n3 e\n3 f\n3 g\n")
    )
    parts = it.leave_one_out(log)

    def by_user(d):
        return {log.user_ids[u]: list(log.item_ids[s]) for u, s in enumerate(d.user_sequences())}

    assert by_user(parts["test"]) == {"1": ["d"], "2": [], "3": ["g"]}
    assert by_user(parts["valid"]) == {"1": ["c"], "2": [], "3": ["f"]}
    assert by_user(parts["train"]) == {"1": ["a", "b"], "2": ["a", "b"], "3": ["e"]}


def test_ratio_counts_follow_recbole_rounding():
    assert it._ratio_counts(20, (0.8, 0.1, 0.1)) == [16, 2, 2]
    assert it._ratio_counts(25, (0.8, 0.1, 0.1)) == [21, 2, 2]
    # Shares below one item get one each while train keeps more than one.
    assert it._ratio_counts(5, (0.8, 0.1, 0.1)) == [3, 1, 1]
    assert it._ratio_counts(2, (0.8, 0.1, 0.1)) == [1, 0, 1]
    assert it._ratio_counts(1, (0.8, 0.1, 0.1)) == [1, 0, 0]


def test_random_split_partitions_each_user_deterministically(tmp_path):
    lines = "".join(f"{u} {i}\n" for u in range(3) for i in range(10 + u))
    log = it.read_user_item(write(tmp_path, "x.txt", lines))
    parts = it.random_split(log, (0.8, 0.1, 0.1), seed=4)
    for u in range(3):
        held = [np.sort(p.items[p.users == u]) for p in parts.values()]
        assert [len(h) for h in held] == it._ratio_counts(10 + u, (0.8, 0.1, 0.1))
        np.testing.assert_array_equal(
            np.sort(np.concatenate(held)), np.sort(log.items[log.users == u])
        )
    again = it.random_split(log, (0.8, 0.1, 0.1), seed=4)
    np.testing.assert_array_equal(again["test"].items, parts["test"].items)
    other = it.random_split(log, (0.8, 0.1, 0.1), seed=5)
    assert not np.array_equal(other["test"].items, parts["test"].items)
    with pytest.raises(ValueError, match="sum"):
        it.random_split(log, (0.8, 0.1))


def test_shared_recsys_files_have_their_documented_sizes(shared_data):
    folder = os.path.join(shared_data, "recsys")
    ml = it.read_atomic(
        os.path.join(folder, "ml-100k.inter"),
        os.path.join(folder, "ml-100k.item"),
        os.path.join(folder, "ml-100k.user"),
    )
    assert (ml.num_users, ml.num_items, ml.num_interactions) == (943, 1682, 100000)
    assert "Comedy" in ml.vocabularies["item:class"]
    beauty = it.read_user_item(os.path.join(folder, "amazon_beauty.txt"))
    assert (beauty.num_users, beauty.num_items, beauty.num_interactions) == (40226, 54542, 353962)
    loo = it.leave_one_out(beauty)
    assert loo["test"].num_interactions == loo["valid"].num_interactions == 40226
    # S3-Rec's split of Beauty: one user's history per line, read as the layout says.
    s3rec = it.read_user_item(os.path.join(folder, "beauty_s3rec.txt"))
    assert (s3rec.num_users, s3rec.num_items, s3rec.num_interactions) == (22363, 12101, 198502)
    first = s3rec.user_sequences()[0]  # line 1: "1 1 2 3 4 5"
    assert s3rec.user_ids[0] == "1" and list(s3rec.item_ids[first]) == ["1", "2", "3", "4", "5"]


def test_synthetic_world_logs_cover_the_catalog():
    from rankjax.data import synthetic

    world = synthetic.make_world(num_users=20, events_per_user=5)
    log = it.from_synthetic(world)
    assert log.num_items == len(world.products["category"]) and log.num_users == 20
    assert log.num_interactions == len(world.interactions["user"])
    assert set(np.unique(log.ratings)) <= {1.0, 2.0, 3.0, 4.0}
    for seq_user in range(20):  # time order within each user
        t = log.timestamps[log.users == seq_user]
        assert (np.diff(t) >= 0).all()
    parts = it.leave_one_out(log)
    assert parts["test"].num_interactions == 20
