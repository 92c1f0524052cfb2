"""Evaluation prompt sets, each identified by a content hash, loaded from local files only.

A set's hash is the sha256 of its ``id<TAB>prompt`` lines in order: two runs that report the
same hash used the same prompts under the same ids (hence the same noise seeds). Nothing is
downloaded here; a missing file fails with the command that provides it.

- ``coco10k`` / ``coco5k``: DMD2's COCO-2014 protocol, one caption per image of
  ``captions_val2014.json``; see :func:`coco_prompts` for the exact selection.
- ``coco2017_5k``: the other reading of the paper's "COCO-5K": all 5,000 images of COCO-2017
  val (``captions_val2017.json``), one caption each (:func:`coco2017_prompts`). Which of the two
  a number used is in its card (the set's name and hash); :func:`compare_published` checks a
  set against DMD2's published prompt list when the user has that file.
- ``hpsv2``: the HPSv2 benchmark styles (``anime``, ``concept-art``, ``paintings``, ``photo``).
- ``parti``: PartiPrompts (``PartiPrompts.tsv``).
- ``world_test``: the embedded world's test split (``world_dir/prompts/test.jsonl``).
- ``t2i_compbench``: T2I-CompBench's validation prompts, ``{category}_val.txt`` of a local
  checkout's ``examples/dataset/`` (300 per category), ids ``<category>-000``; every file's
  sha256 is kept in :attr:`PromptSet.files` (colour_val.txt changed on 2025-09-03: the hash
  says which version a number used). :func:`check_t2i_compbench` (the ``preflight`` stage) checks
  the files against the published counts and hashes (:data:`COMPBENCH_SHA256`).
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from senseflow.errors import MissingArtefactError, UserError
from senseflow.world.prompts import PromptRecord, load_prompt_file

COCO_SEED = 123
HPS_STYLES = ("anime", "concept-art", "paintings", "photo")

FETCH = {
    "coco": "curl -LO http://images.cocodataset.org/annotations/annotations_trainval2014.zip && "
    "unzip -j annotations_trainval2014.zip annotations/captions_val2014.json",
    "coco2017": "curl -LO http://images.cocodataset.org/annotations/annotations_trainval2017.zip && "
    "unzip -j annotations_trainval2017.zip annotations/captions_val2017.json",
    "hpsv2": "python -c \"import hpsv2, json; [json.dump(v, open(k + '.json', 'w')) for k, v in "
    "hpsv2.benchmark_prompts('all').items()]\" (benchmark prompts of the dataset zhwang/HPDv2)",
    "parti": "curl -LO https://raw.githubusercontent.com/google-research/parti/main/PartiPrompts.tsv",
    "world": "senseflow world build --out WORLD_DIR",
    "t2i_compbench": "git clone https://github.com/Karine-Huang/T2I-CompBench (the prompt files are in "
    "its examples/dataset/ folder; pass that folder)",
}
COMPBENCH_CATEGORIES = ("color", "shape", "texture", "spatial", "non_spatial", "complex")
# the complex category's sub-lists that decide the 3-in-1 mix (eval.compbench.three_in_one)
COMPBENCH_COMPLEX_FILES = {"spatial": "complex_val_spatial.txt", "action": "complex_val_action.txt"}
COMPBENCH_VAL_PROMPTS = 300  # prompts of every {category}_val.txt (Readme.md; design t2i-compbench.md §2)
# sha256 of each published file (Karine-Huang/T2I-CompBench, CRLF as in the repository) -> its version.
# colour_val.txt has two: 3310c2f (2025-09-03) replaced 5 of its 300 lines; the others never changed
# in content since 7710d05 (non_spatial_val.txt was action_val.txt before 41388b8, same bytes).
COMPBENCH_SHA256 = {
    "color_val.txt": {
        "1634259756dbc77d13093d907d414480080ec9790a8c97ad09efaea7b2534f2d": "3310c2f (2025-09-03)",
        "1e37a12c1861bf6b11623eaffb0bf6d6eeea9702caf45b95d040f1721bba7f4f": "7710d05 (before 2025-09-03)",
    },
    "shape_val.txt": {"37e1a276906c7ea9516cbd7ac8501be896006c0c17ca7344f260562834455bae": "7710d05"},
    "texture_val.txt": {"fbb5363515b4a28009e360afaaaf389d2dd2289e50dbb0c6ef4ea0c7fe4f3d4f": "7710d05"},
    "spatial_val.txt": {"8707a1d7e42ce3002d95363cf55f74bd043c843ae27108f5125aaaa7840ca988": "7710d05"},
    "non_spatial_val.txt": {"04c56cc9ac441dc9ea6c5157652058bd1635b5308526dd31bb29a1caab9a758d": "41388b8"},
    "complex_val.txt": {"1b808018b8d9916db3d47d5aa2ef18377a3549a56901a474156f799824cdf3b4": "7710d05"},
    "complex_val_spatial.txt": {
        "6c7ac0ab75c7c9080cfc7b421fb059b9b0febb98471707aeedf58771088abc02": "7710d05"
    },
    "complex_val_action.txt": {"d49ee4c7f99e3f3379fb8704a54ff5288b83bb412971edf616a4721c2473308e": "7710d05"},
}


def compbench_prompt_key(prompt: str) -> str:
    """3_in_1.py's key of a prompt: its lowercased text before the first '.'."""
    return prompt.split(".")[0].strip().lower()


class PromptSetError(UserError, ValueError):
    """A prompt-set source file is malformed; the message names the file and the fix."""


@dataclass(frozen=True)
class PromptSet:
    """Named prompts with stable ids, the file they came from and their content hash."""

    name: str
    records: tuple[PromptRecord, ...]
    source: Path
    files: tuple[tuple[str, str], ...] = ()  # (file name, sha256) of each source file read, in order

    @property
    def sha256(self) -> str:
        """Content hash of the set (ids and prompts, in order)."""
        return prompt_set_hash((r.id, r.prompt) for r in self.records)

    def to_jsonl(self) -> str:
        """The set as a ``.jsonl`` prompt file that ``senseflow sample --prompts`` reads."""
        rows = []
        for r in self.records:
            obj = {"id": r.id, "prompt": r.prompt}
            if r.scene is not None:
                obj["scene"] = r.scene.to_dict()
            rows.append(json.dumps(obj) + "\n")
        return "".join(rows)


def prompt_set_hash(pairs) -> str:
    """sha256 of ``id<TAB>prompt`` lines for an iterable of ``(id, prompt)`` pairs."""
    h = hashlib.sha256()
    for pid, prompt in pairs:
        h.update(f"{pid}\t{prompt}\n".encode())
    return h.hexdigest()


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise MissingArtefactError(f"{what} file {path} is missing: get it with `{FETCH[what]}`")
    return path


def _lines(path: Path) -> tuple[list[str], str]:
    """Non-empty stripped lines of a text file and the file's sha256."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PromptSetError(
            f"{path}: not UTF-8 text ({exc}); use the benchmark's file as published"
        ) from exc
    return [line.strip() for line in text.splitlines() if line.strip()], hashlib.sha256(data).hexdigest()


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PromptSetError(f"{path}: not valid JSON ({exc}); download it again") from exc


def coco_prompts(captions_json: str | Path, n: int = 10_000) -> PromptSet:
    """DMD2's COCO-2014 validation prompts: ``n`` images, one caption each.

    Selection, stated exactly so that the hash can be compared with another implementation:
    image ids of ``images`` sorted ascending, shuffled by ``np.random.RandomState(123).shuffle``,
    the first ``n`` kept in shuffled order; each image's caption is its annotation of lowest
    ``id``, stripped. ``coco5k`` is the first 5,000 of the same order. Ids are ``coco-<image id>``.
    """
    path = _need(Path(captions_json), "coco")
    image_ids, first = _first_captions(path, _read_json(path))
    order = np.array(image_ids)
    np.random.RandomState(COCO_SEED).shuffle(order)
    chosen = [int(i) for i in order if int(i) in first][:n]
    if len(chosen) < n:
        raise PromptSetError(f"{path}: {len(chosen)} captioned images, {n} needed; use captions_val2014.json")
    records = tuple(PromptRecord(f"coco-{i}", first[i]) for i in chosen)
    return PromptSet(f"coco{n // 1000}k", records, path)


def _first_captions(path: Path, raw: dict) -> tuple[list[int], dict[int, str]]:
    """Image ids (ascending) and each image's caption of lowest annotation id, stripped."""
    try:
        image_ids = sorted(int(im["id"]) for im in raw["images"])
        first: dict[int, tuple[int, str]] = {}
        for a in raw["annotations"]:
            key = int(a["image_id"])
            if key not in first or int(a["id"]) < first[key][0]:
                first[key] = (int(a["id"]), str(a["caption"]).strip())
    except (KeyError, TypeError, ValueError) as exc:
        raise PromptSetError(
            f"{path}: not a COCO captions file (missing {exc}); use captions_val20XX.json"
        ) from exc
    return image_ids, {k: v[1] for k, v in first.items()}


def coco2017_prompts(captions_json: str | Path) -> PromptSet:
    """COCO-2017 val: all 5,000 images in ascending image id, each its caption of lowest annotation id.

    Ids are ``coco2017-<image id>`` (the image file is ``<image id:012d>.jpg``).
    """
    path = _need(Path(captions_json), "coco2017")
    image_ids, first = _first_captions(path, _read_json(path))
    chosen = [i for i in image_ids if i in first]
    if len(chosen) != 5000:
        raise PromptSetError(
            f"{path}: {len(chosen)} captioned images, COCO-2017 val has 5,000; use captions_val2017.json"
        )
    return PromptSet("coco2017_5k", tuple(PromptRecord(f"coco2017-{i}", first[i]) for i in chosen), path)


def coco_image_file(prompt_id: str) -> str | None:
    """The COCO image file of a COCO prompt id (``coco-N``: 2014 val, ``coco2017-N``: 2017 val)."""
    kind, _, num = prompt_id.partition("-")
    if not num.isdigit():
        return None
    return {"coco": f"COCO_val2014_{int(num):012d}.jpg", "coco2017": f"{int(num):012d}.jpg"}.get(kind)


def read_published_list(path: str | Path) -> list[str]:
    """Captions of a published prompt list, in order.

    ``.txt``: one per line; ``.json``: a list of strings, or of rows with ``caption`` / ``prompt`` /
    ``text`` (optionally under a top-level ``captions`` or ``prompts`` key).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingArtefactError(f"published prompt list {path} is missing")
    if path.suffix == ".json":
        raw = _read_json(path)
        rows = raw if isinstance(raw, list) else raw.get("captions", raw.get("prompts"))
        if not isinstance(rows, list):
            raise PromptSetError(f"{path}: expected a JSON list of captions")
        out = []
        for r in rows:
            text = (
                r
                if isinstance(r, str)
                else next((r[k] for k in ("caption", "prompt", "text") if k in r), None)
            )
            if not isinstance(text, str):
                raise PromptSetError(f"{path}: a row has no caption / prompt / text string: {r!r}")
            out.append(text)
        return [t.strip() for t in out]
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def compare_published(ps: PromptSet, published: str | Path) -> dict:
    """How a reconstructed set matches a published list: counts, matches in order and as sets."""
    theirs = read_published_list(published)
    ours = [r.prompt for r in ps.records]
    in_order = sum(a == b for a, b in zip(ours, theirs, strict=False))
    first = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
    report = {
        "set": ps.name,
        "sha256": ps.sha256,
        "published": str(published),
        "published_sha256": hashlib.sha256("\n".join(theirs).encode()).hexdigest(),
        "ours": len(ours),
        "theirs": len(theirs),
        "same_position": in_order,
        "shared_as_sets": len(set(ours) & set(theirs)),
        "identical": ours == theirs,
        "first_difference": None
        if first is None
        else {"index": first, "ours": ours[first], "theirs": theirs[first]},
    }
    return report


def hpsv2_prompts(folder: str | Path, styles: tuple[str, ...] = HPS_STYLES) -> PromptSet:
    """HPSv2 benchmark prompts: ``<style>.json`` (a list of strings) per style; ids ``<style>-00000``."""
    folder = Path(folder)
    records = []
    for style in styles:
        path = _need(folder / f"{style}.json", "hpsv2")
        prompts = _read_json(path)
        if not isinstance(prompts, list) or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise PromptSetError(f"{path}: expected a JSON list of non-empty strings")
        records += [PromptRecord(f"{style}-{i:05d}", p.strip()) for i, p in enumerate(prompts)]
    return PromptSet("hpsv2", tuple(records), folder)


def parti_prompts(tsv: str | Path) -> PromptSet:
    """PartiPrompts: the ``Prompt`` column of ``PartiPrompts.tsv`` in file order; ids ``parti-00000``."""
    path = _need(Path(tsv), "parti")
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        if not reader.fieldnames or "Prompt" not in reader.fieldnames:
            raise PromptSetError(f"{path}: no 'Prompt' column; use PartiPrompts.tsv ({FETCH['parti']})")
        rows = [row["Prompt"] for row in reader]
    for no, p in enumerate(rows, start=2):
        if not (p or "").strip():
            raise PromptSetError(f"{path}:{no}: empty prompt")
    return PromptSet(
        "parti", tuple(PromptRecord(f"parti-{i:05d}", p.strip()) for i, p in enumerate(rows)), path
    )


def world_test_prompts(world_dir: str | Path) -> PromptSet:
    """The embedded world's test split, with scenes (written by ``senseflow world build``)."""
    path = _need(Path(world_dir) / "prompts" / "test.jsonl", "world")
    return PromptSet("world_test", tuple(load_prompt_file(path)), path)


def t2i_compbench_prompts(folder: str | Path, categories=COMPBENCH_CATEGORIES) -> PromptSet:
    """T2I-CompBench's ``{category}_val.txt`` prompts of a local ``examples/dataset/`` folder, in file order.

    Ids are ``<category>-<line:03d>`` (prompt ``i`` of a category owns images ``10 i .. 10 i + 9``
    once sampled at the benchmark's seeds, :func:`senseflow.samples.per_seed_records`). Every
    file read and its sha256 is in :attr:`PromptSet.files`. A missing file is named with the
    place to get it; nothing is downloaded.
    """
    folder = Path(folder)
    unknown = [c for c in categories if c not in COMPBENCH_CATEGORIES]
    if unknown:
        raise PromptSetError(
            f"unknown T2I-CompBench category {unknown[0]!r} (known: {', '.join(COMPBENCH_CATEGORIES)})"
        )
    records, files = [], []
    for cat in categories:
        path = _need(folder / f"{cat}_val.txt", "t2i_compbench")
        prompts, digest = _lines(path)
        if not prompts:
            raise PromptSetError(
                f"{path} holds no prompt; use the benchmark's file ({FETCH['t2i_compbench']})"
            )
        records += [PromptRecord(f"{cat}-{i:03d}", p) for i, p in enumerate(prompts)]
        files.append((path.name, digest))
    return PromptSet("t2i_compbench", tuple(records), folder, tuple(files))


def t2i_compbench_complex_kinds(folder: str | Path) -> tuple[dict[str, str], tuple[tuple[str, str], ...]]:
    """The 3-in-1 kind of each complex prompt (keyed as 3_in_1.py keys it) and the files' hashes.

    ``complex_val_spatial.txt`` prompts are ``spatial``, ``complex_val_action.txt`` ones ``action``;
    any other complex prompt is ``spatialaction`` (:func:`eval.compbench.complex_kind`).
    """
    kinds, files = {}, []
    for kind, name in COMPBENCH_COMPLEX_FILES.items():
        prompts, digest = _lines(_need(Path(folder) / name, "t2i_compbench"))
        kinds.update({compbench_prompt_key(p): kind for p in prompts})
        files.append((name, digest))
    return kinds, tuple(files)


def check_t2i_compbench(
    folder: str | Path, categories=COMPBENCH_CATEGORIES, n_prompts: int | None = None
) -> list[str]:
    """One line per problem of the benchmark's prompt files in ``folder``; empty when all are usable.

    Reads each category through :func:`t2i_compbench_prompts` (and the complex sub-lists through
    :func:`t2i_compbench_complex_kinds`), the readers the generate stage uses, so that the first
    stage finds what that stage would fail on hours later: a missing or unreadable file, a count
    other than :data:`COMPBENCH_VAL_PROMPTS` (fewer than ``n_prompts`` when the profile keeps only
    the first N), a sha256 that is none of the published versions (:data:`COMPBENCH_SHA256`).
    Each line names the file, its category, the problem and the fix.
    """
    folder = Path(folder)
    problems = []

    def pinned(cat: str, name: str, digest: str) -> None:
        known = COMPBENCH_SHA256.get(name, {})
        if known and digest not in known:
            problems.append(
                f"category {cat}: {folder / name}: sha256 {digest} is none of the benchmark's published "
                f"versions ({', '.join(f'{h[:12]}… = {v}' for h, v in known.items())}); use the published "
                f"file unchanged: {FETCH['t2i_compbench']}. A copy with other line endings hashes "
                "differently; for a newer published version add its hash to eval.prompts.COMPBENCH_SHA256"
            )

    for cat in categories:
        name = f"{cat}_val.txt"
        try:
            ps = t2i_compbench_prompts(folder, [cat])
        except (MissingArtefactError, PromptSetError) as exc:
            problems.append(f"category {cat}: {exc}")  # the reader's message names the file
            continue
        n, want = len(ps.records), n_prompts or COMPBENCH_VAL_PROMPTS
        if n < want or (n_prompts is None and n != want):
            need = f"at least {want} (pipeline.compbench.n_prompts)" if n_prompts else f"{want}"
            problems.append(
                f"category {cat}: {folder / name}: {n} non-empty lines, the benchmark's validation file has "
                f"{need}; put the benchmark's own file there: {FETCH['t2i_compbench']}"
            )
        else:  # a wrong count is already a file other than the published one: one line per file
            pinned(cat, *ps.files[0])
        if cat == "complex":
            try:
                _, files = t2i_compbench_complex_kinds(folder)
            except (MissingArtefactError, PromptSetError) as exc:
                problems.append(f"category complex (3-in-1 sub-lists): {exc}")
                continue
            for sub, digest in files:
                pinned(cat, sub, digest)
    return problems


def load_prompt_set(name: str, source: str | Path) -> PromptSet:
    """A prompt set by name: coco10k, coco5k, coco2017_5k, hpsv2, parti, world_test or t2i_compbench."""
    loaders = {
        "coco10k": lambda s: coco_prompts(s, 10_000),
        "coco5k": lambda s: coco_prompts(s, 5_000),
        "coco2017_5k": coco2017_prompts,
        "hpsv2": hpsv2_prompts,
        "parti": parti_prompts,
        "world_test": world_test_prompts,
        "t2i_compbench": t2i_compbench_prompts,
    }
    if name not in loaders:
        raise PromptSetError(f"unknown prompt set {name!r} (known: {', '.join(loaders)})")
    return loaders[name](source)
