"""The one checkpoint policy (senseflow/checkpoint.py) every training loop resumes through."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from senseflow.checkpoint import (
    CHECKPOINT,
    ResumeError,
    check_same_run,
    read_run_state,
    resume,
    resume_file,
    run_fingerprint,
    save_checkpoint,
    write_run_state,
)
from senseflow.distributed import init_distributed


def _net(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    net = nn.Linear(3, 2)
    return net, torch.optim.SGD(net.parameters(), lr=0.1)


class _Sched:
    last_epoch = 0


def test_a_foreign_fingerprint_is_refused_naming_each_difference(tmp_path):
    saved = run_fingerprint({"lr": 1e-3, "anchors": (1.0, 0.5)})
    assert saved == {"anchors": [1.0, 0.5], "lr": 0.001}  # tuples compare as the JSON round trip
    check_same_run(tmp_path, saved, run_fingerprint({"lr": 1e-3, "anchors": [1.0, 0.5]}))
    check_same_run(tmp_path, None, saved)  # a checkpoint from before fingerprints resumes
    with pytest.raises(ResumeError, match=r"lr: 0.001 -> 0.002.*delete it to start over"):
        check_same_run(tmp_path, saved, {**saved, "lr": 0.002})


def test_one_file_checkpoint_resumes_refuses_or_restarts_when_stale(tmp_path):
    path = tmp_path / "checkpoint.pt"
    same = run_fingerprint({"steps": 3})
    assert resume_file(path, same) is None  # nothing to resume
    torch.save({"step": 2, "config": same}, path)
    assert resume_file(path, same)["step"] == 2
    other = run_fingerprint({"steps": 4})
    with pytest.raises(ResumeError, match="steps: 3 -> 4"):
        resume_file(path, other)
    assert path.exists()  # refused, not deleted
    assert resume_file(path, other, restart_stale=True) is None and not path.exists()
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ResumeError, match="corrupt or unreadable.*delete it"):
        resume_file(path, same)


def test_dcp_checkpoint_round_trip_and_refusal(tmp_path):
    info = init_distributed("cpu")
    net, opt = _net(0)
    fingerprint = run_fingerprint({"lr": 0.1})
    assert resume(tmp_path, {"g": (net, opt)}, None, _Sched(), fingerprint) == 0  # a fresh folder
    sched = _Sched()
    sched.last_epoch = 7
    save_checkpoint(tmp_path / CHECKPOINT, {"g": (net, opt)}, None, sched, 7, info)
    write_run_state(tmp_path, 7, fingerprint)
    assert read_run_state(tmp_path) == {"iteration": 7, "config": fingerprint}

    fresh, fresh_opt = _net(1)
    assert not torch.equal(fresh.weight, net.weight)
    into = _Sched()
    assert resume(tmp_path, {"g": (fresh, fresh_opt)}, None, into, fingerprint) == 7
    assert torch.equal(fresh.weight, net.weight) and into.last_epoch == 7
    with pytest.raises(ResumeError, match=r"lr: 0.1 -> 0.2"):
        resume(tmp_path, {"g": (fresh, fresh_opt)}, None, _Sched(), {"lr": 0.2})


def test_a_kill_between_the_renames_of_a_save_keeps_the_old_checkpoint(tmp_path):
    info = init_distributed("cpu")
    net, opt = _net(0)
    fingerprint = run_fingerprint({})
    save_checkpoint(tmp_path / CHECKPOINT, {"g": (net, opt)}, None, _Sched(), 3, info)
    write_run_state(tmp_path, 3, fingerprint)
    (tmp_path / CHECKPOINT).rename(tmp_path / f"{CHECKPOINT}.old")  # the state a kill leaves
    fresh, fresh_opt = _net(1)
    assert resume(tmp_path, {"g": (fresh, fresh_opt)}, None, _Sched(), fingerprint) == 3
    assert torch.equal(fresh.weight, net.weight)
