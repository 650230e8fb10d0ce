"""Multi-process training through jax.distributed: 2 processes x 2 CPU devices on
localhost, each reading only its shard of the data (3 steps a compiled call), give the
results of 1 process x 4 devices reading both shards (one step a call)."""

import json
import os
import socket

import pytest
from helpers import start_training

from rankjax import distributed

ARGS = [
    "--config=configs/synthetic_listwise.py:runlocal,steps=6",
    "--config.train.batch_size=8",
    "--config.evals.ranking.batch_size=16",
    "--config.train.eval_every=3",
    # The periodic and the best checkpoint both save steps 3 and 6. Their orbax barriers
    # shared names once and hung a 2-process LETOR run when both saves overlapped; these
    # saves are too quick to overlap reliably, so this exercises the path, not the race.
    "--config.ckpt.every=3",
    # Fitted from every process's items: moments are summed, quantiles drawn from all.
    "--config.data.transforms=('quantile', 'standardize')",
    "--config.train.log_every=3",
]
# The two-process runs take 3 steps a call (their stacked batches placed from each
# process's rows); the one-process runs one step a call.
MULTI_STEP = "--config.train.steps_per_call=3"


def launch(workdir, devices, *extra):
    return start_training(*ARGS, f"--workdir={workdir}", *extra, devices=devices)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_with_as_many_devices(tmp_path):
    port = free_port()
    procs = [launch(tmp_path / "single", 4, "--config.data.shards=2")] + [
        launch(
            tmp_path / "multi",
            2,
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={i}",
            MULTI_STEP,
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    assert "process 1 of 2, 2 local / 4 global devices" in err
    assert "this process's shards [1] of 2" in err
    single = json.loads((tmp_path / "single" / "results.json").read_text())
    multi = json.loads((tmp_path / "multi" / "results.json").read_text())
    for split in ("valid", "test"):
        assert multi[split] == pytest.approx(single[split], rel=1e-5)
    # Orbax wrote the checkpoints of both processes into one folder.
    assert sorted(os.listdir(tmp_path / "multi" / "checkpoints")) == ["3", "6"]
    assert os.listdir(tmp_path / "multi" / "best")  # the best checkpoint, beside them


def test_retrieval_on_two_processes_matches_one_process(tmp_path):
    """The two-tower model on 2 processes x 2 CPU devices, each building its devices' rows
    of the same global batches, trains and scores as 1 process x 4 devices."""
    port = free_port()
    args = [
        "--config=configs/synthetic_retrieval.py:runlocal,steps=6",
        "--config.train.eval_every=3",
        "--config.ckpt.every=3",
        "--config.train.log_every=3",
    ]
    single = f"--workdir={tmp_path / 'single'}"
    procs = [start_training(*args, single, "--config.mesh.num_devices=4", devices=4)]
    procs += [
        start_training(
            *args,
            f"--workdir={tmp_path / 'multi'}",
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={i}",
            MULTI_STEP,
            devices=2,
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    single = json.loads((tmp_path / "single" / "results.json").read_text())
    multi = json.loads((tmp_path / "multi" / "results.json").read_text())
    assert single["mesh"] == multi["mesh"] == {"data": 4}
    for split in ("valid", "test"):
        assert multi[split] == pytest.approx(single[split], rel=1e-5)


def test_incomplete_explicit_setup_names_what_is_missing(monkeypatch):
    for var in ("RANKJAX_COORDINATOR_ADDRESS", "RANKJAX_NUM_PROCESSES", "RANKJAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match=r"missing \['process_id'\]"):
        distributed.initialize("127.0.0.1:1234", 2)


def test_single_process_without_launcher_does_nothing(monkeypatch):
    for var in (
        "SLURM_NTASKS",
        "OMPI_COMM_WORLD_SIZE",
        "TPU_WORKER_HOSTNAMES",
        "RANKJAX_COORDINATOR_ADDRESS",
        "RANKJAX_NUM_PROCESSES",
        "RANKJAX_PROCESS_ID",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    distributed.initialize()  # no exception, no connection attempt
