"""What `import rankjax` offers a researcher's own code."""

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
