"""The import graph (senseflow.code_deps): the real-model core stays out of the toy world, no cycles."""

from senseflow.code_deps import ROOT, closure


def _files(module: str) -> set[str]:
    return {str(p.relative_to(ROOT)) for p in closure([module])}


def test_backbones_and_losses_do_not_import_the_world():
    # PromptEmbeds lives in senseflow/conditioning.py (world/text.py re-exports it)
    for module in ("senseflow.backbones", "senseflow.backbones.loading", "senseflow.losses"):
        assert not {f for f in _files(module) if f.startswith("senseflow/world/")}, module


def test_the_two_training_loops_do_not_import_each_other():
    # one dispatch (senseflow.stages.train) picks the loop: the SenseFlow loop never loads the
    # consistency loop, so editing LCM's code does not retrain the SenseFlow students
    assert "senseflow/consistency_run.py" not in _files("senseflow.distill_run")
    assert "senseflow/consistency.py" not in _files("senseflow.distill_run")
    assert "senseflow/distill_run.py" not in _files("senseflow.train")
