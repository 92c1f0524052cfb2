"""The exported student folder: its format, its recipe, and writing it (``senseflow export``).

``senseflow export`` writes a diffusers-format folder::

    student/
      transformer/            the generator (diffusers ``save_pretrained``)
      scheduler/              FlowMatchEulerDiscreteScheduler, shift 1, no dynamic shifting
      tokenizer/ text_encoder/ text_pooling.json   the prompt encoder (embedded world)
      recipe.json             sampler, anchors, guidance, dtype, resolution, text settings
      config.yaml             the resolved profile the student was trained with

Real families (SDXL: ``unet/`` and an LCM scheduler) instead link the teacher's text
encoders, tokenizers and VAE and its ``model_index.json``: a complete diffusers pipeline
(:mod:`senseflow.export_pipeline`).

Anchors are stored as the exact times the generator was trained at. The scheduler carries
shift 1.0 on purpose: diffusers' ``FlowMatchEulerDiscreteScheduler`` shifts user-passed
sigmas by its own ``shift``, so a scheduler with the teacher's shift 3.0 fed with the
already-shifted anchors would shift them twice (method.md section 6).

The distillation stages write this format and the generate stages read it
(:mod:`senseflow.student`), so an edit here reruns both; the loader lives apart so an edit of
it regenerates samples without retraining any student.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from senseflow.errors import UserError
from senseflow.io import atomic_folder, atomic_write_text

RECIPE = "recipe.json"
LORA_FILE = "pytorch_lora_weights.safetensors"


def anchors_for_steps(anchors: list[float], steps: int) -> list[float]:
    """The anchors a ``steps``-step run visits: all of them, or every k-th (the 4-step student at 2 steps).

    Fewer steps reuse the trained anchors (DMD2 / SenseFlow run 2 steps with the 4-step
    weights at anchors 1 and 3 of 4, i.e. times 1.0 and 0.5 for the uniform embedded
    anchors); a count that does not divide the anchors is refused.
    """
    n = len(anchors)
    if steps == n:
        return list(anchors)
    if steps < 1 or steps > n or n % steps:
        ok = [k for k in range(1, n + 1) if n % k == 0]
        raise UserError(f"this student was trained with {n} anchors; it samples at {ok} steps, not {steps}")
    return list(anchors[:: n // steps])


def student_scheduler(prediction: str, teacher_scheduler_config: dict | None = None):
    """The diffusers scheduler saved with a student, set so the trained anchors pass through unchanged.

    Flow: ``FlowMatchEulerDiscreteScheduler`` with shift 1 and no dynamic shifting (it would
    shift user sigmas again). Epsilon (SDXL): ``LCMScheduler`` on the teacher's DDPM betas,
    to be called with explicit ``timesteps`` (999, 749, 499, 249), as the paper samples SDXL.
    """
    if prediction == "flow":
        return FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False
        )
    from diffusers import LCMScheduler

    return LCMScheduler.from_config(teacher_scheduler_config or {})


def student_network(teacher, generator_state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The generator's network (``teacher.trainable_copy()``'s architecture) holding ``generator_state``.

    Built from the teacher network's *config* on the meta device, then given the state's
    tensors, never by copying the teacher's weights: under FSDP2 the teacher is sharded
    (:func:`senseflow.distributed.shard_frozen`), so no rank holds it whole, and an export
    gathers the generator's weights only. Cast to the teacher's dtype (training's float32
    master weights are saved in the dtype the teacher was loaded in). Buffers the state
    does not carry (non-persistent ones) come from the teacher's own, which FSDP2 never shards.
    """
    template = teacher.network
    # FSDP2 swaps in a subclass (FSDP<Name>) of the diffusers class: build the plain one
    cls = next(c for c in type(template).__mro__ if c.__module__.startswith("diffusers"))
    dtype = next(template.parameters()).dtype
    with torch.device("meta"):
        skeleton = cls.from_config(template.config)
    # the family's own trainable_copy (FLUX drops its guidance embedding), on meta: no memory
    net = teacher.with_network(skeleton).trainable_copy()
    net.load_state_dict(generator_state, strict=True, assign=True)
    buffers = dict(template.named_buffers())
    for name, buf in list(net.named_buffers()):
        if buf.is_meta:
            owner, _, leaf = name.rpartition(".")
            net.get_submodule(owner).register_buffer(leaf, buffers[name].detach().cpu(), persistent=False)
    return net.to(dtype)


def _network_folder(backbone) -> str:
    return "unet" if backbone.prediction == "epsilon" else "transformer"


def export_student(
    folder: str | Path,
    generator_state: dict[str, torch.Tensor],
    teacher,
    recipe: dict,
    *,
    config_yaml: str | None = None,
    base: dict | None = None,
    lora_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a student folder atomically (a temp folder renamed into place).

    ``generator_state`` holds the generator's full weights (``teacher.trainable_copy()``'s
    architecture: for FLUX without the guidance embedding). ``recipe`` must name
    ``anchors``, ``sampler`` and ``resolution``. The embedded world's text encoder is saved
    in the folder; real families record ``base`` (the teacher's ``teacher.pretrained``
    section: model id, revision, dtype, ...) and take text encoders and VAE from it; their
    folder is also a complete diffusers pipeline (the base's components linked, the stock
    call in ``recipe["diffusers_call"]``: :mod:`senseflow.export_pipeline`).
    ``lora_state`` (LoRA runs): also written as ``lora/pytorch_lora_weights.safetensors``
    with diffusers' ``<network folder>.`` key prefix, for ``load_lora_adapter`` on the base.
    """
    for key in ("anchors", "sampler", "resolution"):
        if key not in recipe:
            raise ValueError(f"student recipe is missing {key!r}")
    embedded = hasattr(teacher.text, "save")
    if not embedded and base is None:
        raise ValueError("a real-family student needs `base` (its teacher's pretrained settings)")
    with atomic_folder(folder) as tmp:
        net = student_network(teacher, generator_state)
        sub = _network_folder(teacher)
        net.save_pretrained(tmp / sub)
        if lora_state is not None:
            from safetensors.torch import save_file

            (tmp / "lora").mkdir()
            save_file({f"{sub}.{k}": v.contiguous() for k, v in lora_state.items()},
                      str(tmp / "lora" / LORA_FILE))  # fmt: skip
        if embedded:
            teacher.text.save(tmp)
        teacher_sched = getattr(teacher, "scheduler_config", None)
        student_scheduler(teacher.prediction, teacher_sched).save_pretrained(tmp / "scheduler")
        stock = {}
        if not embedded:  # a complete diffusers pipeline folder: the teacher's other parts, linked
            from senseflow.export_pipeline import complete_pipeline, diffusers_call

            stock = {"diffusers_pipeline": complete_pipeline(tmp, base, sub),
                     "diffusers_call": diffusers_call(teacher, list(recipe["anchors"]))}  # fmt: skip
        full = {
            "family": recipe.get("family", "embedded"),
            "prediction": teacher.prediction,
            "network": {"folder": sub, "class": type(net).__name__},
            "lora": None if lora_state is None else f"lora/{LORA_FILE}",
            "guidance": 1.0,  # CFG is distilled into the student: one network call per step
            # the dtype the weights were saved in (the teacher's: training's float32 masters are cast)
            "dtype": str(next(net.parameters()).dtype).removeprefix("torch."),
            "shift": teacher.shift,
            **({"text": {"encoder": "world", "max_length": teacher.text.tokenizer.model_max_length,
                         "pooling": teacher.text.pooling}} if embedded else {"base": base}),
            **stock,
            **recipe,
        }  # fmt: skip
        atomic_write_text(tmp / RECIPE, json.dumps(full, indent=2) + "\n")
        if config_yaml is not None:
            atomic_write_text(tmp / "config.yaml", config_yaml)
    return Path(folder)
