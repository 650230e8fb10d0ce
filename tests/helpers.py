"""Shared test helpers: loading configs from configs/ by file name."""

import importlib.util
import os

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load_config(name: str, arg: str | None = None):
    """`configs/<name>.py:get_config(arg)`, unlocked so tests can override fields."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIG_DIR, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)
