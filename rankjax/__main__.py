"""`python -m rankjax --config=NAME --workdir=DIR`: the `rankjax-train` command."""

from rankjax import cli

if __name__ == "__main__":
    cli.run()
