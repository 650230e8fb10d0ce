"""What `import rankjax` offers a researcher's own code."""

import os
import subprocess
import sys

import pytest


def test_stable_modules_are_attributes_of_the_package():
    import rankjax
    from rankjax import incremental, serving, text

    assert rankjax.serving is serving and rankjax.text is text
    assert rankjax.incremental.IncrementalScorer is incremental.IncrementalScorer
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        rankjax.nope  # noqa: B018


def test_import_alone_stays_light():
    # The lazily reached modules load on first use, not with the package.
    code = (
        "import sys, rankjax; print(sorted(m for m in ('orbax', 'tokenizers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_progress_is_a_bar_in_notebooks_only():
    from rankjax import progress

    assert not progress.in_notebook()  # pytest is no kernel
    quiet = progress.bar(10)
    quiet.update(3), quiet.set_postfix(loss="1.0"), quiet.close()  # a no-op, not a bar
    assert not hasattr(quiet, "n")
    shown = progress.bar(10, initial=4, enabled=True)
    shown.update(2)
    assert (shown.n, shown.total) == (6, 10)
    shown.close()
    assert not hasattr(progress.bar(10, lead=False, enabled=True), "n")  # other processes


def test_configs_resolve_by_name_or_path(tmp_path):
    from rankjax import config_args

    path = config_args.resolve("synthetic_listwise:runlocal")
    assert path.endswith(os.path.join("configs", "synthetic_listwise.py:runlocal"))
    assert config_args.load("synthetic_listwise:runlocal").train.num_steps == 2
    mine = tmp_path / "mine.py"
    assert config_args.resolve(f"{mine}:x") == f"{mine}:x"  # paths pass through
    with pytest.raises(ValueError, match=r"closest: \['synthetic_listwise'"):
        config_args.resolve("synthetic_listwis")
