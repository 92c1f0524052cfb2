import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def torchrun(port: int | None = None, nproc: int = 2) -> list[str]:
    """Launcher prefix for CPU processes under torchrun, on a free port unless one is given."""
    import sys

    from tests.helpers.ports import free_port

    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(port or free_port()), "-m"]  # fmt: skip


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory) -> Path:
    """A world folder built from the smoke profile (text encoder, tokenizer, prompt splits)."""
    from senseflow.config import load_profile
    from senseflow.world.build import build_world

    cfg = load_profile(str(ROOT / "experiments" / "smoke.yaml")).world
    out = tmp_path_factory.mktemp("world")
    build_world(
        out,
        digit_counts=dict(cfg.scenes.digit_counts),
        prompts_per_split={"train": 16, "val": 8, "test": 24},
        text_hidden_size=cfg.text.hidden_size,
        text_num_layers=cfg.text.num_layers,
        text_num_heads=cfg.text.num_heads,
        text_max_length=cfg.text.max_length,
        text_seed=cfg.text.seed,
        seed=0,
    )
    return out
