"""One checkpoint policy for every training loop: fingerprint, refusal, resume, stale runs, saving.

A run's *fingerprint* (:func:`run_fingerprint`) is the JSON-normal form of the settings that
shape its weights. Rerunning a loop in the same folder resumes from its checkpoint only when
the saved fingerprint equals the current one; otherwise it stops with :class:`ResumeError`
naming every differing setting (:func:`check_same_run`), because resuming would silently mix
two runs. A pipeline stage that DVC reruns *because* its settings changed treats such a
checkpoint as stale and starts over (:func:`resume_file` with ``restart_stale``; the
distillation stages catch :class:`ResumeError` in :mod:`senseflow.stages`).

Two storage formats, one policy:

- the teacher writes one ``torch.save`` file holding its state and ``config`` (its fingerprint):
  :func:`resume_file`;
- the distillation loops (SenseFlow: :mod:`senseflow.train`, LCM / Hyper-SD:
  :mod:`senseflow.consistency`) write a ``torch.distributed.checkpoint`` folder (any number of
  ranks) and ``state.json`` (iteration and fingerprint) beside it: :func:`resume`,
  :func:`save_checkpoint`, :func:`write_run_state`. A save goes to a fresh folder that is then
  swapped in, so a kill mid-save keeps the previous checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from senseflow.distributed import DistInfo, barrier
from senseflow.errors import UserError
from senseflow.io import atomic_write_text

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"  # the DCP folder of a distillation run
STATE = "state.json"  # beside it: {"iteration": n, "config": fingerprint}

# DCP warns on every single-process save/load; one process is a supported, intended mode here
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


class ResumeError(UserError, RuntimeError):
    """A checkpoint exists but belongs to other settings or cannot be read."""


def run_fingerprint(config: dict) -> dict:
    """JSON-normal form of a run's settings (tuples become lists, keys strings) for comparison."""
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def config_differences(saved: dict, current: dict) -> list[str]:
    """``"key: saved -> current"`` for every setting that differs (empty when it is the same run)."""
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in sorted(set(saved) | set(current))
            if saved.get(k) != current.get(k)]  # fmt: skip


def check_same_run(where: Path, saved: dict | None, current: dict) -> None:
    """Refuse to resume a checkpoint written under other settings (it would silently mix runs).

    ``saved`` None (a checkpoint from before fingerprints) is accepted as the same run.
    """
    diffs = config_differences(saved, current) if saved is not None else []
    if diffs:
        raise ResumeError(
            f"{where} holds a checkpoint of a different configuration ({'; '.join(diffs)}); "
            "use another output folder, delete it to start over, or restore those values to resume"
        )


def read_checkpoint_file(path: Path) -> dict:
    """Read a one-file (``torch.save``) checkpoint; a corrupt file is a clear error with the fix."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ResumeError(
            f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {exc}); "
            "delete it to restart training from scratch"
        ) from exc


def resume_file(path: Path, fingerprint: dict, *, restart_stale: bool = False) -> dict | None:
    """The saved state to resume from (a one-file checkpoint whose ``config`` is ``fingerprint``), or None.

    With ``restart_stale`` (a DVC stage: DVC reran it because its code or params changed) a
    checkpoint of other settings, or without a fingerprint, is deleted and the run starts over;
    without it, such a checkpoint is refused (:func:`check_same_run`).
    """
    if path.exists() and restart_stale:
        saved = read_checkpoint_file(path).get("config")
        if saved is None or config_differences(saved, fingerprint):
            log.warning("%s is from other settings or code: training from scratch", path)
            path.unlink()
    if not path.exists():
        return None
    state = read_checkpoint_file(path)
    check_same_run(path, state.get("config"), fingerprint)
    return state


def read_run_state(out_dir: Path) -> dict | None:
    """A distillation run's ``state.json`` (iteration, fingerprint), None before its first checkpoint."""
    path = Path(out_dir) / STATE
    return json.loads(path.read_text()) if path.exists() else None


def write_run_state(out_dir: Path, iteration: int, fingerprint: dict) -> None:
    """Record the checkpoint just saved: its iteration and the run's fingerprint (written after the save)."""
    state = {"iteration": iteration, "config": fingerprint}
    atomic_write_text(Path(out_dir) / STATE, json.dumps(state) + "\n")


def resume(out_dir: Path, nets: dict, ema, sched, fingerprint: dict) -> int:
    """Load a distillation run's checkpoint if it has one of the same settings; return the start iteration.

    ``nets``: name -> (module, optimiser or None). A run folder without ``state.json`` starts
    at 0; one of other settings is refused (:func:`check_same_run`).
    """
    saved = read_run_state(out_dir)
    if saved is None:
        return 0
    check_same_run(Path(out_dir), saved.get("config", {}), fingerprint)
    return load_checkpoint(Path(out_dir) / CHECKPOINT, nets, ema, sched, models_only=False)


def _state(nets: dict, ema, sched, iteration: int, *, models_only: bool) -> dict:
    state: dict = {"iteration": iteration}
    for name, (module, opt) in nets.items():
        if models_only or opt is None:
            msd = get_model_state_dict(module)
        else:
            msd, osd = get_state_dict(module, opt)
            state[f"{name}_optimizer"] = osd
        if name == "discriminator":  # the frozen VFM is not part of the run's state
            msd = {k: v for k, v in msd.items() if not k.startswith("taps.")}
        state[name] = msd
    if not models_only:
        if ema is not None:
            state["ema"] = {str(i): p for i, p in enumerate(ema.shadow_params)}
            state["ema_step"] = ema.optimization_step
        state["generator_scheduler"] = {"last_epoch": sched.last_epoch}
    return state


def save_checkpoint(ckpt: Path, nets: dict, ema, sched, iteration: int, info: DistInfo) -> None:
    """DCP save into a fresh folder, then swap it in: a kill mid-save leaves the old checkpoint intact."""
    tmp = ckpt.with_name(f"{ckpt.name}.tmp")
    if info.is_main and tmp.exists():
        shutil.rmtree(tmp)
    barrier()
    dcp.save(_state(nets, ema, sched, iteration, models_only=False), checkpoint_id=str(tmp))
    barrier()
    if info.is_main:
        old = ckpt.with_name(f"{ckpt.name}.old")
        if ckpt.exists():
            ckpt.rename(old)
        tmp.rename(ckpt)
        if old.exists():
            shutil.rmtree(old)
    barrier()


def load_checkpoint(ckpt: Path, nets: dict, ema, sched, *, models_only: bool) -> int:
    """Load a DCP checkpoint (any number of ranks wrote it) into the nets; return its iteration."""
    if not ckpt.exists() and ckpt.with_name(f"{ckpt.name}.old").exists():
        ckpt = ckpt.with_name(f"{ckpt.name}.old")  # killed between the two renames of a save
    if not (ckpt / ".metadata").exists():
        raise ResumeError(
            f"no checkpoint at {ckpt}: "
            + (
                "point init_from at a finished distill folder"
                if models_only
                else "the run state says there is one; delete state.json to start over"
            )  # fmt: skip
        )
    state = _state(nets, ema, sched, 0, models_only=models_only)
    try:
        dcp.load(state, checkpoint_id=str(ckpt))
    except Exception as exc:
        raise ResumeError(f"checkpoint {ckpt} does not fit this run ({type(exc).__name__}: {exc})") from exc
    for name, (module, opt) in nets.items():
        opts = StateDictOptions(strict=name != "discriminator")
        if models_only or opt is None:
            set_state_dict(module, [], model_state_dict=state[name], optim_state_dict={}, options=opts)
        else:
            set_state_dict(
                module, opt, model_state_dict=state[name], optim_state_dict=state[f"{name}_optimizer"],
                options=opts,
            )  # fmt: skip
    if models_only:
        return 0
    if ema is not None:
        for i, p in enumerate(ema.shadow_params):
            p.copy_(state["ema"][str(i)])
        ema.optimization_step = int(state["ema_step"])
    sched.last_epoch = int(state["generator_scheduler"]["last_epoch"])
    return int(state["iteration"])
