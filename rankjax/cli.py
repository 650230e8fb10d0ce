r"""The command line: trains and evaluates a ranker from a config.

  rankjax-train --config=synthetic_listwise --workdir=/tmp/rankjax/quickstart
  rankjax-train --config=letor_lightgbm:data_dir=/data/letor --workdir=/tmp/rankjax/letor
  rankjax-train --config=path/to/my_config.py:arg --workdir=... [--config.optim.learning_rate=1e-3]

`--config` takes a config shipped with the package by name (`rankjax.configs`, the
repository's `configs/` folder), or the path of any config file; `:arg` is handed to its
`get_config`. `python -m rankjax` and, in a checkout, `python -m experiments.train` are the
same command.
"""

import difflib
import importlib.util
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rankjax import checkpoint, config_args, distributed, preemption, trainer, workdir

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Output folder; rerunning with it resumes the run.")
flags.DEFINE_bool("traceback", False, "Show full tracebacks for input and config errors.")
flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Resume a workdir that was made by a different config (rankjax.workdir).",
)
flags.DEFINE_string("coordinator_address", "", "Multi-process: host:port of process 0.")
flags.DEFINE_integer("num_processes", 0, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", -1, "Multi-process: index of this process.")
flags.mark_flags_as_required(["config", "workdir"])

# Errors caused by the user's input: reported in one line, not as a traceback.
_USER_ERRORS = (
    ValueError,
    KeyError,
    FileNotFoundError,
    PermissionError,
    FloatingPointError,
    checkpoint.CheckpointError,
    workdir.WorkdirError,
)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a mistyped `--config.<key>` override (or a value of the
    wrong type) reported in one line naming the override and the closest keys, instead
    of a traceback from inside ml_collections."""
    try:
        return FLAGS(argv)
    except flags.Error as e:  # e.g. a value of the wrong type: absl names the flag
        print(f"rankjax: error: {e}", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        config = FLAGS["config"].value if "config" in FLAGS else None
        config = config if config is not None else _config_of(argv)
        missing = [m for m in (_missing_key(o, config) for o in overrides) if m]
        text = " ".join(str(e).replace("\\n", " ").split())
        print(f"rankjax: error: {missing[0] if missing else text}", file=sys.stderr)
        sys.exit(2)


def _config_of(argv: list[str]):
    """The config `--config=path[:arg]` names (None if it cannot be loaded)."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
    path, _, arg = spec.partition(":")
    try:
        module_spec = importlib.util.spec_from_file_location("_rankjax_config", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module.get_config(arg or None)
    except Exception:  # noqa: BLE001 - only to suggest keys; the error is reported anyway
        return None


def _missing_key(override: str, config) -> str:
    """`"--config.a.b: no key 'b' in a; closest: [...]"` when the override's path is not
    in `config`, else ""."""
    path = override.removeprefix("--config.").split(".")
    node = config
    for i, key in enumerate(path):
        if hasattr(node, "keys") and key in node:
            node = node[key]
            continue
        keys = sorted(node.keys()) if hasattr(node, "keys") else []
        close = difflib.get_close_matches(key, keys, n=3) or keys
        where = ".".join(path[:i]) or "the config"
        return f"{override}: no key {key!r} in {where}; closest: {close}"
    return ""


def _with_config_paths(argv: list[str]) -> list[str]:
    """`argv` with `--config=NAME` (or `--config NAME`) turned into the config's path."""
    out = list(argv)
    for i, a in enumerate(out):
        if a.startswith("--config="):
            out[i] = "--config=" + config_args.resolve(a.split("=", 1)[1])
        elif a == "--config" and i + 1 < len(out):
            out[i + 1] = config_args.resolve(out[i + 1])
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.allow_config_change)
    except preemption.Preempted as e:
        logging.warning("%s", e)
        print(f"rankjax: {e}", file=sys.stderr)
        sys.exit(143)  # 128 + SIGTERM, as if the signal had ended the process
    except _USER_ERRORS as e:
        if FLAGS.traceback:
            raise
        logging.error("%s: %s", type(e).__name__, e)
        print(f"rankjax: error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        if FLAGS.traceback or e.errno not in workdir.DISK_FULL:
            raise
        print(f"rankjax: error: {workdir.disk_full_message(e, FLAGS.workdir)}", file=sys.stderr)
        sys.exit(1)


def run() -> None:
    """The `rankjax-train` console script."""
    try:
        argv = _with_config_paths(sys.argv)
    except ValueError as e:
        print(f"rankjax: error: {e}", file=sys.stderr)
        sys.exit(2)
    app.run(main, argv=argv, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
