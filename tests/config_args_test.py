"""big_vision-style config arguments."""

import pytest

from rankjax.config_args import parse_arg


def test_defaults_values_and_flags():
    c = parse_arg("data_dir=/x,runlocal,steps=5", data_dir="d", runlocal=False, steps=0, lr=0.1)
    assert (c.data_dir, c.runlocal, c.steps, c.lr) == ("/x", True, 5, 0.1)
    assert parse_arg(None, runlocal=False).runlocal is False


@pytest.mark.parametrize(
    "arg, match",
    [
        ("stepz=3", r"unknown config argument 'stepz'; valid: \['runlocal', 'steps'\]"),
        ("steps=many", "expected int"),
        ("steps", "needs a value"),
        ("runlocal=maybe", "expected a boolean"),
    ],
)
def test_bad_arguments_raise(arg, match):
    with pytest.raises(ValueError, match=match):
        parse_arg(arg, runlocal=False, steps=0)
