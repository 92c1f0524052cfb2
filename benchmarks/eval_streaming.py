"""Peak host memory and images/s of `senseflow-eval evaluate --metrics fid` on 1024 px folders.

Issue 15 item 5: the evaluation used to decode whole folders into RAM (63 GB per rank for
FID-T at 5k x 1024 px); it now streams. This script measures both on the CPU with a tiny
Inception stand-in (so the figures are about reading, checking, preparing and memory, not
about the network): FID of a sample folder against a reference folder of N images each at
1024x1024, i.e. 2N images read.

    python benchmarks/eval_streaming.py                      # new code, N = 250, 500, 1000 (2N read)
    python benchmarks/eval_streaming.py --old-tree /tmp/old  # also the code at another tree

``--old-tree`` is a checkout of the earlier code (e.g. ``git archive 9008fc4 eval senseflow |
tar -x -C /tmp/old``); each measurement runs in its own process (peak RSS of that process
and its data workers), with the same folders. Prints one line per run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_folder(path: Path, n: int, seed: int) -> Path:
    """N records of 1024 px PNGs (one smooth image, hard-linked N times: distinct files to read)."""
    from PIL import Image

    path.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:1024, 0:1024]
    rng = np.random.default_rng(seed)
    img = np.stack([np.sin(xx / (30 + 10 * c) + seed) * np.cos(yy / 47) for c in range(3)], 2)
    img = ((img + 1) * 110 + rng.normal(0, 4, img.shape)).clip(0, 255).astype(np.uint8)
    master = path / "_master.bin"
    Image.fromarray(img).save(master, format="PNG")
    data = master.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    rows = []
    for i in range(n):
        name = f"{i:06d}.png"
        if not (path / name).exists():
            os.link(master, path / name)
        rows.append({"id": f"p{i}", "prompt": f"prompt {i}", "seed": i, "file": name, "sha256": sha})
    (path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _tiny_inception_class():
    """A stand-in for eval.metrics.fid.InceptionFeatures with the interface of both code versions."""
    import torch

    import eval.metrics.fid as fid

    class TinyInception:
        dim = 128

        def __init__(self, weights_path, *, resize="clean", device=None, batch_size=32):
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(
                torch.nn.Conv2d(3, 8, 8, stride=8), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
                torch.nn.Flatten(),
            ).eval()  # fmt: skip
            self.resize, self.batch_size = resize, batch_size
            self.weights_sha256 = "0" * 64
            self.id = "tiny:0"

        # the earlier code: uint8 batches in, the extractor resizes
        @torch.no_grad()
        def __call__(self, images):
            return self.net(fid.clean_resize(images).float()).double()

        # the streaming code: workers prepare, the extractor only runs the network
        def prepare(self, pixels):
            return fid.inception_input(pixels, self.resize)

        @torch.no_grad()
        def forward_prepared(self, x):
            return self.net(x.float()).double()

    return TinyInception


def run_one(samples: Path, reference: Path, protocol: str | None) -> dict:
    """One evaluation in this process; returns images/s and peak RSS (this process + workers)."""
    import eval.metrics.fid as fid
    from eval.evaluate import evaluate

    fid.InceptionFeatures = _tiny_inception_class()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "weights" / "inception_fid"
        root.mkdir(parents=True)
        (root / fid.INCEPTION_WEIGHTS_FILE).write_bytes(b"tiny")
        os.environ["SENSEFLOW_WEIGHTS"] = str(root.parent)
        kwargs = {"protocol": protocol} if protocol else {}
        start = time.perf_counter()
        summary = evaluate(samples, ["fid"], Path(tmp) / "out", reference=reference, n_boot_set=10, **kwargs)
        seconds = time.perf_counter() - start
    images = 2 * summary["n_images"]  # the samples and the reference, of the same size
    kib = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    return {
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "peak_rss_mib": kib / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="250,500,1000", help="images per folder (2N are read per run)")
    ap.add_argument("--old-tree", type=Path, help="checkout of the earlier code to measure too")
    ap.add_argument("--protocols", default="dmd2,clean", help="protocols of the new code to measure")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "senseflow-eval-streaming")
    ap.add_argument("--child", nargs=3, metavar=("SAMPLES", "REFERENCE", "PROTOCOL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        protocol = None if args.child[2] == "-" else args.child[2]
        print(json.dumps(run_one(Path(args.child[0]), Path(args.child[1]), protocol)))
        return
    runs = [("new", ROOT, p) for p in args.protocols.split(",") if p]
    if args.old_tree:
        runs.append(("old", args.old_tree.resolve(), "-"))
    for n in (int(x) for x in args.sizes.split(",")):
        samples = make_folder(args.work / f"s{n}", n, 0)
        reference = make_folder(args.work / f"r{n}", n, 1)
        for label, tree, protocol in runs:
            env = {**os.environ, "PYTHONPATH": f"{tree}:{ROOT}", "HF_HUB_OFFLINE": "1"}
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child",
                str(samples),
                str(reference),
                protocol,
            ]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree)
            if out.returncode:
                print(f"{label} n={n}: failed\n{out.stderr[-2000:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            name = "clean (uint8)" if protocol == "-" else protocol
            print(
                f"{label:3s} protocol={name:13s} images={r['images']:5d} {r['images_per_s']:6.1f} images/s  "
                f"peak RSS {r['peak_rss_mib']:8.0f} MiB  ({r['seconds']:.0f} s)"
            )


if __name__ == "__main__":
    main()
