"""Experiment configs, each a module with `get_config(arg)`; installed with the package as
`rankjax.configs`, so `rankjax-train --config=NAME` finds them without a checkout."""
