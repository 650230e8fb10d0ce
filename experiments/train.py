r"""Trains and evaluates a ranker from a config file.

  python -m experiments.train --config=configs/synthetic_listwise.py \
      --workdir=/tmp/rankjax/quickstart [--config.optim.learning_rate=1e-3 ...]
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rankjax import checkpoint, distributed, preemption, trainer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Output folder; rerunning with it resumes the run.")
flags.DEFINE_bool("traceback", False, "Show full tracebacks for input and config errors.")
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
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
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


if __name__ == "__main__":
    app.run(main)
