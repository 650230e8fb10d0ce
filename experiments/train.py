r"""Trains and evaluates a ranker from a config file (the checkout's name for `rankjax-train`).

  python -m experiments.train --config=configs/synthetic_listwise.py \
      --workdir=/tmp/rankjax/quickstart [--config.optim.learning_rate=1e-3 ...]
"""

from rankjax import cli

if __name__ == "__main__":
    cli.run()
