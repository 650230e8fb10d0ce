"""Bad input gets a one-line error naming the file and line or config key, or a documented,
logged cleaning policy (the random corruptions of `fuzz_test.py` complement these cases)."""

import os

import numpy as np
import pytest
from helpers import load_config

from rankjax import config_schema, trainer
from rankjax import data as data_lib
from rankjax.data import judgments, libsvm
from rankjax.data.dataset import describe, from_groups
from rankjax.data.libsvm import FormatError
from rankjax.data.transforms import FeatureTransform, fit_transform

LIBSVM = "2 qid:1 1:0.5 2:1\n0 qid:1 1:0.1 2:3\n1 qid:2 1:0.7 2:2\n0 qid:2 1:0.2 2:5\n"
CSV = "query,label,price\na,1,3.5\na,0,2\nb,2,7\nb,0,1\n"


def write(tmp_path, text, name="f.txt"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text)
    return str(path)


@pytest.mark.parametrize("value", ["NULL", "nan", "inf", "-Inf"])
def test_missing_libsvm_values_are_rejected_by_default(tmp_path, value):
    path = write(tmp_path, LIBSVM.replace("2:3", f"2:{value}"))
    with pytest.raises(FormatError, match=rf"f.txt:2: missing or non-finite .*'2:{value}'"):
        libsvm.read(path)


def test_missing_libsvm_values_can_be_imputed(tmp_path):
    path = write(tmp_path, LIBSVM.replace("2:3", "2:NULL"))
    d = libsvm.read(path, missing="impute")
    assert np.isnan(d.features[1, 1]) and np.isfinite(np.delete(d.features.ravel(), 3)).all()


@pytest.mark.parametrize(
    "text, match",
    [
        (LIBSVM.replace("1 qid:2", "7 qid:2"), r"f.txt:3: label 7 is outside data.label_range"),
        (LIBSVM.replace("1 qid:2", "nan qid:2"), r"f.txt:3: expected a numeric label"),
        (LIBSVM.replace("2:1\n", "2:1 1:4\n"), r"f.txt:1: a feature index appears twice"),
        (LIBSVM.replace("2:5", "2000000:5"), r"f.txt:4: feature index 2000000 exceeds"),
        (LIBSVM.replace("1:0.1", "1.5:0.1"), r"f.txt:2: expected 'index:value'"),
        # Indices that parse as floats but are no index: never cast into the last column.
        (LIBSVM.replace("1:0.1", "inf:0.1"), r"f.txt:2: expected 'index:value' .*'inf:0.1'"),
        (LIBSVM.replace("1:0.1", "1e400:0.1"), r"f.txt:2: expected 'index:value'"),
        (LIBSVM.replace("1:0.1", f"{2**63}:0.1"), rf"f.txt:2: feature index {2**63} exceeds"),
        (LIBSVM.replace("1:0.1", "-3:0.1"), r"f.txt:2: expected 'index:value'"),
    ],
)
def test_more_bad_libsvm_lines(tmp_path, text, match):
    with pytest.raises(FormatError, match=match):
        libsvm.read(write(tmp_path, text), label_range=(0, 4))


def test_data_narrower_than_the_configured_width_says_so(tmp_path, caplog):
    libsvm.read(write(tmp_path, LIBSVM), num_features=5)
    assert "feature indices reach 2 but data.num_features=5: features 3-5" in caplog.text


def test_negative_labels_are_refused_unless_the_config_allows_them(tmp_path):
    """Graded relevance is >= 0 by default: a negative label would make NDCG negative."""
    train = write(tmp_path, LIBSVM.replace("0 qid:1", "-1 qid:1"), "train.txt")
    test = write(tmp_path, LIBSVM, "test.txt")
    cfg = {"source": "libsvm", "train_file": train, "test_file": test}
    with pytest.raises(FormatError, match=r"train.txt:2: label -1 is outside .*>= 0"):
        data_lib.load(cfg)
    assert libsvm.read(train, label_range=(-1, 4)).labels.min() == -1  # declared: accepted
    path = write(tmp_path, CSV.replace("a,0,2", "a,-2,2"), "f.csv")
    csv_cfg = {"source": "judgments", "file": path, "query_column": "query",
               "label_column": "label"}  # fmt: skip
    with pytest.raises(FormatError, match=r"f.csv:3: label -2.0 in column 'label' is outside"):
        data_lib.load(csv_cfg)


def test_a_huge_bad_token_is_quoted_as_a_short_excerpt(tmp_path):
    token = "1:" + "x" * 5_000_000  # 5 MB of garbage in one token
    path = write(tmp_path, LIBSVM.replace("1:0.1", token))
    with pytest.raises(FormatError, match=r"f.txt:2: .*\.\.\. \(5,000,002 characters\)") as e:
        libsvm.read(path)
    assert len(str(e.value)) < 400


def test_a_giant_line_is_refused_before_it_is_read_whole(tmp_path, monkeypatch):
    from rankjax.data import textio

    monkeypatch.setattr(textio, "MAX_LINE_BYTES", 1000)  # the real bound is 64 MiB
    monkeypatch.setattr(textio.bounded_lines, "__defaults__", (1000, True))
    path = write(tmp_path, LIBSVM + "1 qid:3 " + " ".join(f"{i}:1" for i in range(1, 400)))
    with pytest.raises(FormatError, match=r"f.txt:5: a line longer than"):
        libsvm.read(path)
    csv = write(tmp_path, CSV + "c,1," + "9" * 2000 + "\n", "f.csv")
    with pytest.raises(FormatError, match=r"f.csv:6: a line longer than"):
        judgments.read(csv, query_column="query", label_column="label")


def test_csv_quoting_errors_are_errors(tmp_path):
    """A quote left open must not swallow the following rows into one field."""
    read = dict(query_column="query", label_column="label", feature_columns=("price",))
    at_end = write(tmp_path, CSV.replace("b,2,7", '"b,2,7'), "end.csv")
    with pytest.raises(FormatError, match=r"end.csv:4: malformed CSV .*quote left open"):
        judgments.read(at_end, **read)
    rows = "".join(f"c{i},0,{i}\n" for i in range(200))
    # The quote closes 200 lines later, before a delimiter: valid CSV, one absurd field.
    swallowing = write(tmp_path, CSV.replace("b,2,7", '"b,2,7') + rows + 'd",1,2\n', "mid.csv")
    with pytest.raises(FormatError, match=r"mid.csv:4: one row runs over \d+ lines"):
        judgments.read(swallowing, **read)
    quoted = CSV.replace("a,0,2", '"a",0,"2"')  # well-formed quoting reads as before
    assert judgments.read(write(tmp_path, quoted, "ok.csv"), **read).num_lists == 2


def test_a_pipe_or_device_is_refused_without_reading(tmp_path):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)  # reading it would wait for a writer forever
    with pytest.raises(FileNotFoundError, match="pipe.txt: not a regular file"):
        libsvm.read(str(fifo))
    with pytest.raises(FileNotFoundError, match="/dev/null: not a regular file"):
        judgments.read("/dev/null", query_column="q", label_column="l")


def test_csv_missing_features_reject_or_impute(tmp_path):
    path = write(tmp_path, CSV.replace("a,0,2", "a,0,"), "j.csv")
    kw = dict(query_column="query", label_column="label", feature_columns=("price",))
    with pytest.raises(FormatError, match=r"j.csv:3: column 'price' must be a finite number"):
        judgments.read(path, **kw)
    d = judgments.read(path, missing="impute", **kw)
    assert np.isnan(d.features[1, 0])


def test_csv_labels_outside_range(tmp_path):
    path = write(tmp_path, CSV.replace("b,2,7", "b,5,7"), "j.csv")
    with pytest.raises(FormatError, match=r"j.csv:4: label 5.0 in column 'label' is outside"):
        judgments.read(path, query_column="query", label_column="label", label_range=(0, 3))


def test_imputation_uses_train_means_and_adds_indicators():
    train = np.array([[1.0, np.nan], [3.0, 4.0], [5.0, 8.0]], np.float32)
    t = fit_transform(train, (), impute=True)
    assert t.indicators == (1,)
    out = t(np.array([[np.nan, np.nan], [2.0, 1.0]], np.float32))
    # Column 0 had no missing value in training: filled, but gets no indicator.
    np.testing.assert_allclose(out, [[3.0, 6.0, 1.0], [2.0, 1.0, 0.0]])
    assert t.feature_names(("a", "b")) == ("a", "b", "b_missing")
    assert FeatureTransform.from_json(t.to_json()).indicators == (1,)


def test_nan_without_imputation_is_an_error():
    with pytest.raises(ValueError, match="imputation is off"):
        fit_transform(np.ones((2, 1)), ())(np.array([[np.nan]]))


def test_load_imputes_and_logs_when_configured(tmp_path):
    train = write(tmp_path, LIBSVM.replace("2:3", "2:NULL") * 1, "train.txt")
    test = write(tmp_path, LIBSVM.replace("qid:1", "qid:8").replace("qid:2", "qid:9"), "test.txt")
    cfg = dict(
        source="libsvm",
        train_file=train,
        test_file=test,
        valid_file=test,
        list_size=2,
        missing="impute",
        transforms=(),
    )
    splits = data_lib.load(cfg)
    assert splits.train.feature_names == ("1", "2", "2_missing")
    # Feature 2 of line 2 was NULL: the training mean of 1, 2 and 5, flagged as missing.
    np.testing.assert_allclose(splits.train.features[1], [0.1, 8 / 3, 1.0], rtol=1e-6)
    assert splits.test.features[:, 2].tolist() == [0, 0, 0, 0]


def test_describe_counts_lists_that_need_a_policy():
    d = from_groups(np.zeros((6, 1)), np.array([0, 1, 0, 0, 0, 2.0]), [1, 2, 3])
    text = describe(d)
    assert "3 lists, 6 items (list size 1-3)" in text
    assert "1 single-item lists" in text and "1 lists without a relevant item" in text


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c.data.update(tranforms=()), r"unknown config key data.tranforms; valid"),
        (lambda c: c.optim.update(lr=0.1), r"unknown config key optim.lr; valid keys of optim"),
        (lambda c: c.train.update(steps=3), r"unknown config key train.steps"),
        (lambda c: c.data.world.update(num_query=3), r"unknown config key data.world.num_query"),
        (lambda c: c.update(extra=1), r"unknown config key config.extra"),
        (lambda c: c.train.__delattr__("batch_size"), r"config train is missing \['batch_size'\]"),
        (lambda c: c.data.update(source="parquet"), r"data.source='parquet'; valid"),
        (lambda c: c.evals.ranking.update(metrics=("ndgc@10",)), r"unknown metric 'ndgc@10'"),
        (lambda c: c.ckpt.update(best_metric="map@3"), r"ckpt.best_metric='map@3' is not in"),
        (lambda c: c.model.update(depth=3), r"unknown model.depth for model 'listwise'"),
    ],
)
def test_config_mistakes_name_the_key(edit, match, tmp_path):
    config = load_config("synthetic_listwise", "runlocal")
    edit(config)
    with pytest.raises(ValueError, match=match):
        trainer.train_and_evaluate(config, str(tmp_path))


def test_every_shipped_config_validates():
    for name in ("synthetic_listwise", "letor_lightgbm"):
        config_schema.validate(load_config(name))
        config_schema.validate(load_config(name, "runlocal"))
