"""The real-profile path on tiny SDXL / SD 3.5 / FLUX.1 models: distill a few iterations, then generate.

Usage::

    PYTHONPATH=. python benchmarks/gpu_real_path.py [--device cuda|cpu] [--iterations 6]
        [--families sdxl,sd3,flux] [--precision bf16|fp32]

Needs no weights: each family's pipeline is built in-process at a tiny config
(tests/tiny_pipelines.py, the real diffusers classes) and saved to a temporary folder, with a
random tiny DINOv2 standing in for ``dinov2_vitl14`` and a folder of random 32 px images as the
training set. Each family's real profile (experiments/sdxl.yaml, sd35_medium.yaml,
flux_dev.yaml) is pointed at them and run through :func:`senseflow.real_run.distill_real`
(the code of ``dvc repro`` / ``senseflow pipeline distill``), with bf16 autocast by default;
the exported student is then loaded with :func:`senseflow.student.load_student` and samples
a few prompts at 4 steps.

The teacher is loaded in the profile's own dtype (bfloat16) and the profile's own learning
rates, precision and parallel settings are kept (issue 14): only the sizes shrink.

Prints, per family: ``weights moved: NN%`` (the share of the trainable generator weights the
run changed, read from its float32 checkpoint against the teacher), whether IDA moved the
fake score model (share of the elements where the two differ that IDA's update changed),
(under FSDP2 on rank 0's shards), seconds per iteration (the first, with its warm-up,
included), peak memory (CUDA allocator,
or the process's peak RSS on CPU), seconds per generated image and whether every loss and
image was finite. ``--nproc 2`` reruns the families under ``torchrun`` with two processes and
the profile's FSDP2 (gloo on CPU, NCCL on CUDA). The numbers measure the code path (device
placement, autocast, the loop's bookkeeping), not the cost of real models.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/tiny_pipelines.py and this checkout's senseflow

from senseflow.config import load_profile  # noqa: E402
from senseflow.real_run import distill_real, place_frozen_parts  # noqa: E402
from senseflow.student import load_student  # noqa: E402
from tests.tiny_pipelines import RESOLUTION, T5_LENGTH, save_tiny_pipeline  # noqa: E402

PROFILES = {"sdxl": "sdxl.yaml", "sd3": "sd35_medium.yaml", "flux": "flux_dev.yaml"}
PROMPTS = ["a red cat", "a blue dog on a photo", "the cat and the dog", "a photo of a red dog"]


def tiny_dinov2(folder: Path) -> None:
    """A random DINOv2 of tiny config saved where ``gan.backbone: dinov2_vitl14`` is looked up."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                       patch_size=8, image_size=RESOLUTION)  # fmt: skip
    Dinov2Model(cfg).save_pretrained(folder)


def image_folder(folder: Path, n: int = 8) -> None:
    """``n`` random images with captions.jsonl (the profile's ``format: folder`` layout)."""
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        pixels = rng.integers(0, 256, (RESOLUTION + 8, RESOLUTION, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"{i}.png")
        rows.append(
            json.dumps({"id": str(i), "file": f"images/{i}.png", "caption": PROMPTS[i % len(PROMPTS)]})
        )
    (folder / "captions.jsonl").write_text("\n".join(rows) + "\n")


def profile(family: str, root: Path, args) -> object:
    """The family's real profile, shrunk to the tiny pipeline and a few iterations."""
    sets = {
        "teacher.pretrained.model_id": str(root / family),
        # the teacher in the profile's own dtype: the 16-bit path is what is measured
        "teacher.pretrained.dtype": "bfloat16" if args.precision == "bf16" else "float32",
        "teacher.pretrained.resolution": str(RESOLUTION),
        "teacher.pretrained.max_sequence_length": str(T5_LENGTH),
        "distill.iterations": str(args.iterations),
        "distill.global_batch": "2",
        "distill.ttur": "1",  # every iteration trains the generator too: all terms timed
        "distill.checkpoint_every": str(args.iterations),
        "distill.log_every": "1",
        "distill.optimizer": "adamw",
        "distill.precision": args.precision,
        "distill.gan.blocks": "[0, 2]",
        "distill.gan.text_projection_dim": "8",
        "data": f"{{path: {root / 'data'}, format: folder, min_side: 16}}",
        "runtime": f"{{nproc_per_node: {args.nproc}, device: {args.device}, threads: 0, "
        f"parallel: {'fsdp' if args.nproc > 1 else 'auto'}}}",
    }
    if args.nproc > 1:
        sets["distill.grad_checkpointing"] = "true"
    return load_profile(str(ROOT / "experiments" / PROFILES[family]), [f"{k}={v}" for k, v in sets.items()])


def run_family(family: str, root: Path, args) -> dict:
    """Distil and sample one family; the row of the table."""
    import os

    os.environ["SENSEFLOW_WEIGHTS"] = str(root)
    if is_main_process():
        save_tiny_pipeline(family, root / family)
    from senseflow.distributed import barrier

    barrier()  # (torchrun) the other ranks read what rank 0 wrote
    cfg = profile(family, root, args)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    ida_moved: list[float] = []
    t0 = time.perf_counter()
    with _measure_ida(ida_moved):
        summary = distill_real(cfg, root / f"run_{family}", progress=False)
    train_s = time.perf_counter() - t0
    # every rank: reading the DCP checkpoint is a collective once a process group exists
    moved = generator_moved(cfg, family, root / f"run_{family}")
    if not is_main_process():
        return {}
    metrics = json.loads((root / f"run_{family}" / "dvclive" / "metrics.json").read_text())["train"]
    losses_finite = all(math.isfinite(float(v)) for v in metrics.values() if isinstance(v, int | float))

    student = load_student(root / f"run_{family}" / "student")
    student.backbone.network.to("cuda" if cuda else "cpu")
    place_frozen_parts(student.backbone, args.device)
    amp = torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    with amp:
        student.generate(PROMPTS[:1], [0])  # warm-up
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        images = student.generate(PROMPTS, list(range(len(PROMPTS))))
        if cuda:
            torch.cuda.synchronize()
    gen_s = (time.perf_counter() - t0) / len(PROMPTS)
    return {
        "family": family,
        "weights_moved": moved,
        "ida_moved_fake": ida_moved[0] if ida_moved else None,
        "s_per_iteration": train_s / summary["iterations"],
        "loop_s_per_iteration": summary["seconds"] / summary["iterations"],
        "peak_gib": (torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes()) / 2**30,
        "s_per_image": gen_s,
        "losses_finite": losses_finite,
        "images_finite": bool(torch.isfinite(images).all()),
        "image_shape": list(images.shape),
    }


def is_main_process() -> bool:
    """Rank 0 (or no torchrun) measures and prints."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports kilobytes)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _measure_ida:
    """Wraps the loop's IDA update: the share of differing (fake, generator) elements it changed."""

    def __init__(self, out: list[float]):
        self.out = out

    def __enter__(self):
        import senseflow.train as train

        self.train, self.real = train, train.ida_update

        def local(t: torch.Tensor) -> torch.Tensor:  # FSDP2: this rank's shard
            t = t.detach()
            return t.to_local() if isinstance(t, torch.distributed.tensor.DTensor) else t

        def measured(fake, generator, lam):
            before = {k: local(v).clone() for k, v in fake.named_parameters()}
            differs = {k: local(v) != before[k] for k, v in generator.named_parameters() if k in before}
            n = self.real(fake, generator, lam)
            after = dict(fake.named_parameters())
            changed = sum(int(((local(after[k]) != before[k]) & d).sum()) for k, d in differs.items())
            self.out.append(changed / max(1, sum(int(d.sum()) for d in differs.values())))
            return n

        train.ida_update = measured
        return self

    def __exit__(self, *exc):
        self.train.ida_update = self.real


def generator_moved(cfg, family: str, run_dir: Path) -> float:
    """Share of the trainable generator weights that differ from the teacher's (float32 checkpoint)."""
    from senseflow.backbones.loading import load_backbone
    from senseflow.train import load_generator_state

    teacher = load_backbone(family, cfg.teacher.pretrained)
    state = load_generator_state(run_dir, teacher)
    ref = teacher.network.state_dict()
    names = [k for k, p in teacher.trainable_copy().named_parameters() if p.requires_grad]
    changed = sum(int((state[k].float() != ref[k].float()).sum()) for k in names)
    return changed / sum(state[k].numel() for k in names)


def _torchrun(args) -> None:
    """Run this script again under torchrun with ``args.nproc`` processes (FSDP2)."""
    import os
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           __file__, "--device", args.device, "--iterations", str(args.iterations),
           "--families", args.families,
           # "--processes": torchrun's own parser would take "--nproc" for an ambiguous prefix
           "--precision", args.precision, "--processes", str(args.nproc), "--launched"]  # fmt: skip
    with tempfile.TemporaryDirectory() as shared:
        sys.exit(subprocess.call(cmd, env={**os.environ, "SENSEFLOW_BENCH_DIR": shared}))


def main() -> None:
    """Run every family and print one line each (and a JSON summary)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--families", default="sdxl,sd3,flux")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument(
        "--anomaly", action="store_true", help="autograd anomaly detection: name the op of a NaN gradient"
    )
    ap.add_argument("--nproc", "--processes", dest="nproc", type=int, default=1,
                    help="processes; > 1 runs FSDP2 under torchrun")  # fmt: skip
    ap.add_argument("--launched", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu")
    if args.nproc > 1 and not args.launched:
        _torchrun(args)
    rows = []
    t_all = time.perf_counter()
    # under torchrun every rank needs the same folder: rank 0 names it in the environment
    import os

    shared = Path(os.environ.get("SENSEFLOW_BENCH_DIR", "")) if args.launched else None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) if shared is None else shared
        if is_main_process() and not (root / "data").exists():
            tiny_dinov2(root / "dinov2_vitl14")
            image_folder(root / "data")
        if args.launched:
            from senseflow.distributed import barrier, init_distributed

            init_distributed(args.device)
            barrier()
        for family in args.families.split(","):
            with torch.autograd.set_detect_anomaly(args.anomaly):
                row = run_family(family, root, args)
            if not row:
                continue
            rows.append(row)
            ida = "-" if row["ida_moved_fake"] is None else f"{row['ida_moved_fake']:.0%}"
            print(f"{family:5s} weights moved: {row['weights_moved']:.0%}  IDA moved fake score: {ida}  "
                  f"{row['s_per_iteration']:.3f} s/it (loop {row['loop_s_per_iteration']:.3f})  "
                  f"peak {row['peak_gib']:.3f} GiB  {row['s_per_image']:.4f} s/image  "
                  f"losses finite {row['losses_finite']}  images finite {row['images_finite']}",
                  flush=True)  # fmt: skip
    if not is_main_process():
        return
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(json.dumps({"device": device, "precision": args.precision, "iterations": args.iterations,
                      "processes": args.nproc, "total_s": round(time.perf_counter() - t_all, 1),
                      "rows": rows}, indent=2))  # fmt: skip
    if not all(r["losses_finite"] and r["images_finite"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
