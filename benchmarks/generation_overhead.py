"""Share of `senseflow generate` wall time spent outside model forward + decode (target: under 10%).

Usage::

    python benchmarks/generation_overhead.py [--world build/world --teacher build/teacher/teacher
        --student build/distill/senseflow/student] [--n 512] [--batch-size 64] [--profile smoke]

Without folders it builds, in a temporary directory, the profile's world and a teacher and a
4-anchor student with the profile's architecture (random weights: the cost of a forward does
not depend on the weights). Each candidate writes a fresh sample folder through
:func:`senseflow.samples.generate_to_folder`; the time inside ``Candidate.render`` (text
encoding, sampling, decoding, rounding to 8 bits) is the model time, the rest of the call's wall
time is overhead: PNG encoding, sha256, atomic writes, manifest rewrites, progress bar.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from senseflow.candidates import EmbeddedTeacher, StudentCandidate
from senseflow.config import load_profile
from senseflow.samples import generate_to_folder
from senseflow.world.prompts import load_prompt_file


def build_tiny(cfg, root: Path, n: int) -> tuple[Path, Path, Path]:
    """World, teacher and student folders with the profile's sizes and random weights."""
    from senseflow.backbones.flow import SD3FlowBackbone, tiny_sd3_transformer
    from senseflow.export import export_student
    from senseflow.world.build import build_world
    from senseflow.world.text import WorldTextEncoder

    w = cfg.world
    world = root / "world"
    build_world(
        world, digit_counts=dict(w.scenes.digit_counts), prompts_per_split={"train": 16, "val": 8, "test": n},
        text_hidden_size=w.text.hidden_size, text_num_layers=w.text.num_layers,
        text_num_heads=w.text.num_heads, text_max_length=w.text.max_length, text_seed=w.text.seed,
        text_pooling=w.text.pooling, seed=0,
    )  # fmt: skip
    text = WorldTextEncoder.load(world)
    m = cfg.teacher.model
    net = tiny_sd3_transformer(
        resolution=w.scenes.resolution, in_channels=3, patch_size=m.patch_size, num_layers=m.num_layers,
        num_attention_heads=m.num_attention_heads, attention_head_dim=m.attention_head_dim,
        text_dim=text.hidden_size, pooled_dim=text.pooled_size, qk_norm=m.qk_norm, seed=0,
    )  # fmt: skip
    teacher = root / "teacher"
    net.save_pretrained(teacher / "transformer")
    res = w.scenes.resolution
    recipe = {
        "steps": cfg.teacher.sample.steps,
        "cfg": cfg.teacher.sample.cfg,
        "channels": 3,
        "resolution": res,
    }
    (teacher / "recipe.json").write_text(json.dumps(recipe))
    backbone = SD3FlowBackbone(net, text)
    anchors = {"anchors": [1.0, 0.75, 0.5, 0.25], "sampler": "x0", "resolution": res}
    student = export_student(root / "student", net.state_dict(), backbone, anchors)
    return world, teacher, student


class Timed:
    """Wraps a candidate and adds up the seconds spent in ``render`` (model forward + decode)."""

    def __init__(self, cand):
        self.cand, self.model_seconds = cand, 0.0

    def __getattr__(self, name):
        return getattr(self.cand, name)

    def render(self, prompts, seeds):
        """The candidate's render, timed."""
        t0 = time.perf_counter()
        out = self.cand.render(prompts, seeds)
        self.model_seconds += time.perf_counter() - t0
        return out


def measure(cand, records, out: Path, batch_size: int) -> dict:
    """Generate into a fresh folder; return wall, model and overhead seconds."""
    timed = Timed(cand)
    t0 = time.perf_counter()
    generate_to_folder(timed, records, out, seed=0, batch_size=batch_size, progress=False)
    wall = time.perf_counter() - t0
    over = wall - timed.model_seconds
    return {"wall_s": wall, "model_s": timed.model_seconds, "overhead_s": over, "overhead": over / wall,
            "images": len(records), "ms_overhead_per_image": 1000 * over / len(records)}  # fmt: skip


def main() -> None:
    """Measure the teacher and the student at 4 and 1 steps; print the table and a JSON line."""
    from senseflow.student import load_student
    from senseflow.teacher import load_teacher

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=Path)
    ap.add_argument("--teacher", type=Path)
    ap.add_argument("--student", type=Path)
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_profile(args.profile)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.world and args.teacher and args.student:
            world, teacher_dir, student_dir = args.world, args.teacher, args.student
        else:
            world, teacher_dir, student_dir = build_tiny(cfg, root, args.n)
        records = load_prompt_file(world / "prompts" / "test.jsonl")[: args.n]
        backbone, recipe = load_teacher(teacher_dir, world)
        res = recipe["resolution"]
        s = cfg.teacher.sample
        student = load_student(student_dir)
        cands = {
            f"teacher_{s.steps} (CFG {s.cfg})": EmbeddedTeacher(
                backbone, (3, res, res), steps=s.steps, cfg=s.cfg
            ),
            "student_4": StudentCandidate(student, name="student", steps=4),
            "student_1": StudentCandidate(student, name="student", steps=1),
        }
        rows = {}
        with torch.inference_mode():
            for name, cand in cands.items():
                rows[name] = measure(cand, records, root / "out" / name.split()[0], args.batch_size)
    print(f"{len(records)} images at {res} px, batch {args.batch_size}, {args.threads} thread(s), CPU")
    print(f"{'candidate':24s} {'wall s':>8s} {'model s':>8s} {'other s':>8s} {'other %':>8s} {'ms/img':>7s}")
    for name, r in rows.items():
        print(f"{name:24s} {r['wall_s']:8.2f} {r['model_s']:8.2f} {r['overhead_s']:8.2f} "
              f"{100 * r['overhead']:7.1f}% {r['ms_overhead_per_image']:7.2f}")  # fmt: skip
    print(json.dumps({k: {m: round(v, 4) for m, v in r.items()} for k, r in rows.items()}))


if __name__ == "__main__":
    main()
