"""notebooks/quickstart.ipynb runs top to bottom on CPU with `runlocal` sizes."""

import json
import os

from helpers import ROOT

NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")


def code_cells(path: str) -> list[str]:
    """The notebook's code cells, without shell (`!`) and magic (`%`) lines."""
    with open(path) as f:
        cells = json.load(f)["cells"]
    return [
        "".join(line for line in c["source"] if not line.lstrip().startswith(("!", "%")))
        for c in cells
        if c["cell_type"] == "code"
    ]


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("RANKJAX_NOTEBOOK_RUNLOCAL", "1")
    monkeypatch.setenv("RANKJAX_NOTEBOOK_WORKDIR", str(tmp_path))
    namespace: dict = {"__name__": "__notebook__"}
    for i, source in enumerate(code_cells(NOTEBOOK)):
        exec(compile(source, f"{NOTEBOOK}#cell{i}", "exec"), namespace)
    # Every variant trained and was compared; the plot and the exported ranker exist.
    assert set(namespace["results"]) == {"float32", "int8", "2:4", "2:4 + int8"}
    for results in namespace["results"].values():  # configs_test leaves these runs to us
        assert results["step"] == 2
        assert results["test"] and all(v == v for v in results["test"].values())  # no NaN
    sizes = {name: size for name, _, _, size in namespace["rows"]}
    assert sizes["2:4 + int8"] < sizes["int8"] < sizes["float32"]
    assert (tmp_path / "quality_vs_bytes.png").stat().st_size > 1000
    assert (tmp_path / "ranker.jaxexport").exists()
