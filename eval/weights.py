"""One weights directory for every pretrained artefact, described by ``eval/weights_manifest.yaml``.

Layout: ``<weights dir>/<artefact name>/<file>``. The directory is ``--weights-dir``, else
``$SENSEFLOW_WEIGHTS``, else ``~/.cache/senseflow/weights`` (:func:`weights_dir`, the one default
used everywhere). ``fetch`` downloads a selection of artefacts (a profile's, single artefacts by
name, or a metric set such as ``coco``; on a connected machine; resumable, hash-checked),
``check`` verifies presence and hashes, and :func:`require` is the one function every loader
calls (scorers, Inception, baselines, backbones): it never downloads and fails with the name, the
expected path and a command that provides exactly that artefact
(``senseflow weights fetch --artefact NAME``). A file the manifest pins no hash for has its sha256
recorded by its first ``fetch`` (``<artefact>/.sha256-recorded.json``); ``check`` compares against
that record, so a file swapped afterwards is a ``mismatch`` although no hash was ever invented.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from senseflow.errors import MissingArtefactError, UserError

MANIFEST_PATH = Path(__file__).with_name("weights_manifest.yaml")
ENV_VAR = "SENSEFLOW_WEIGHTS"


class WeightsError(UserError):
    """A weights manifest, profile name or download problem; the message names the fix."""


@dataclass(frozen=True)
class ArtefactFile:
    """One file of an artefact with its pinned hash (``None``: not pinned)."""

    path: str
    sha256: str | None = None
    sha256_prefix: str | None = None


@dataclass(frozen=True)
class Artefact:
    """One entry of the manifest: where it comes from, what it holds, under which licence."""

    name: str
    kind: str
    files: tuple[ArtefactFile, ...]
    licence: str
    repo: str | None = None
    revision: str = "main"
    url: str | None = None
    snapshot: bool = False
    allow_patterns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest: artefacts by name, per-profile lists, the evaluation list, metric sets."""

    artefacts: dict[str, Artefact]
    profiles: dict[str, tuple[str, ...]]
    evaluation: tuple[str, ...]
    metric_sets: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def for_profile(self, profile: str) -> list[Artefact]:
        """Artefacts of ``profile``: its own plus the evaluation models (none for embedded profiles)."""
        if profile not in self.profiles:
            known = ", ".join(sorted(self.profiles))
            raise WeightsError(f"unknown profile {profile!r} in {MANIFEST_PATH.name} (known: {known})")
        names = list(self.profiles[profile])
        if names:  # embedded profiles build their judges here and need no evaluation model either
            names += [n for n in self.evaluation if n not in names]
        return [self.artefacts[n] for n in names]

    def artefact(self, name: str) -> Artefact:
        """The entry ``name``; an unknown name raises :class:`WeightsError` listing the known ones."""
        if name not in self.artefacts:
            known = ", ".join(sorted(self.artefacts))
            raise WeightsError(f"unknown artefact {name!r}: not in {MANIFEST_PATH.name} (known: {known})")
        return self.artefacts[name]

    def for_metrics(self, metrics: str | list[str] | tuple[str, ...]) -> list[Artefact]:
        """Artefacts of metric sets or metric names (``coco``, ``compbench``, ``clip_score,hpsv2``)."""
        items = metrics.split(",") if isinstance(metrics, str) else metrics
        names = [m.strip() for m in items if m.strip()]
        out: list[str] = []
        for m in names:
            if m not in self.metric_sets:
                known = ", ".join(sorted(self.metric_sets))
                raise WeightsError(f"unknown metric set {m!r} in {MANIFEST_PATH.name} (known: {known})")
            out += [a for a in self.metric_sets[m] if a not in out]
        return [self.artefacts[n] for n in out]

    def select(
        self, profile: str | None = None, artefacts: tuple[str, ...] | list[str] = (), metrics=()
    ) -> list[Artefact]:
        """The union of a profile's artefacts, named artefacts and metric sets, without repeats."""
        chosen = self.for_profile(profile) if profile else []
        chosen += [self.artefact(n) for n in artefacts]
        chosen += self.for_metrics(metrics) if metrics else []
        if profile is None and not artefacts and not metrics:
            raise WeightsError(
                "nothing selected: name a PROFILE, --artefact NAME or --metrics SET "
                f"(sets: {', '.join(sorted(self.metric_sets))})"
            )
        return list({a.name: a for a in chosen}.values())


def load_manifest(path: str | Path = MANIFEST_PATH) -> Manifest:
    """Parse and validate the manifest; a bad entry raises :class:`WeightsError` naming it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
        artefacts = {}
        for name, entry in raw["artefacts"].items():
            if bool(entry.get("repo")) == bool(entry.get("url")):
                raise ValueError(f"artefact {name!r} needs exactly one of 'repo' and 'url'")
            files = tuple(ArtefactFile(**f) for f in entry["files"])
            artefacts[name] = Artefact(
                name=name,
                kind=entry["kind"],
                files=files,
                licence=entry["licence"],
                repo=entry.get("repo"),
                revision=entry.get("revision", "main"),
                url=entry.get("url"),
                snapshot=bool(entry.get("snapshot", False)),
                allow_patterns=tuple(entry.get("allow_patterns", ())),
            )
        profiles = {p: tuple(names) for p, names in raw["profiles"].items()}
        evaluation = tuple(raw.get("evaluation", ()))
        metric_sets = {m: tuple(names) for m, names in (raw.get("metric_sets") or {}).items()}
        for owner, names in [*profiles.items(), ("evaluation", evaluation), *metric_sets.items()]:
            unknown = [n for n in names if n not in artefacts]
            if unknown:
                raise ValueError(f"{owner} lists unknown artefact {unknown[0]!r}")
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise WeightsError(f"{path}: invalid weights manifest ({exc}); fix the entry") from exc
    return Manifest(artefacts, profiles, evaluation, metric_sets)


def weights_dir(explicit: str | Path | None = None) -> Path:
    """The weights directory: ``explicit``, else ``$SENSEFLOW_WEIGHTS``, else the user cache."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "senseflow" / "weights"


def artefact_path(art: Artefact, root: Path) -> Path:
    """Where ``art`` lives: its single file, or its folder when it has several files or is a snapshot."""
    folder = root / art.name
    if art.snapshot or len(art.files) > 1:
        return folder
    return folder / art.files[0].path


def fetch_command(name: str, root: Path | None = None) -> str:
    """The command that provides artefact ``name`` (into ``root`` when given)."""
    where = f" --weights-dir {root}" if root is not None else ""
    return f"`senseflow weights fetch --artefact {name}{where}`"


def missing_error(name: str, expected: Path, root: Path | None = None) -> MissingArtefactError:
    """The error of an absent artefact file: its name, the expected path and a command that works."""
    return MissingArtefactError(
        f"weights artefact {name!r} is missing: expected {expected}; provide it with "
        f"{fetch_command(name, root)} on a connected machine (or point --weights-dir / ${ENV_VAR} "
        "at a folder that holds it)"
    )


def require(
    name: str,
    root: str | Path | None = None,
    manifest: Manifest | None = None,
    *,
    file: str | None = None,
) -> Path:
    """Path of artefact ``name`` in the weights directory (or of its ``file``); never downloads.

    The one lookup of every pretrained file the suite loads. Raises
    :class:`MissingArtefactError` with the name, the expected path and the command that
    provides it when any of its files is absent (hashes are :func:`check`'s job: hashing tens
    of gigabytes on every load would be too slow).
    """
    manifest = manifest or load_manifest()
    art = manifest.artefact(name)
    root = weights_dir(root)
    for f in art.files:
        expected = root / art.name / f.path
        if not expected.is_file():
            raise missing_error(name, expected, root)
    if file is not None:
        path = root / art.name / file
        if not path.exists():
            raise missing_error(name, path, root)
        return path
    return artefact_path(art, root)


def require_path(path: str | Path | None, artefact: str, *, file: str | None = None) -> Path:
    """An explicit local path when given (it must exist), else artefact ``artefact`` via :func:`require`.

    Loaders take optional explicit paths (tests, private copies); the error of a missing one
    still names the artefact and the command that provides the default.
    """
    if path is None:
        return require(artefact, file=file)
    p = Path(path)
    if not p.exists():
        raise MissingArtefactError(
            f"{p.name} is missing: expected at {p}; {fetch_command(artefact)} provides the default copy"
        )
    return p


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class FileStatus:
    """Verdict on one file: ``ok``, ``unpinned`` (no hash to compare), ``missing`` or ``mismatch``."""

    artefact: str
    path: Path
    status: str
    detail: str = ""

    @property
    def failed(self) -> bool:
        """Missing or with a wrong hash."""
        return self.status in ("missing", "mismatch")


RECORD_FILE = ".sha256-recorded.json"


def recorded_hashes(art: Artefact, root: Path) -> dict[str, str]:
    """The sha256 of each unpinned file of ``art`` as recorded by its first ``fetch`` (path -> hex)."""
    path = root / art.name / RECORD_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def record_hashes(art: Artefact, root: Path) -> None:
    """Record the sha256 of every present, unpinned, not yet recorded file of ``art`` (atomic write).

    The manifest pins no hash nobody has measured; instead the first fetch records what it
    downloaded, so a file swapped or corrupted afterwards (another LoRA under the same name)
    is a ``mismatch`` on every later check, before anything is sampled with it.
    """
    known = recorded_hashes(art, root)
    todo = [
        f for f in art.files
        if not f.sha256 and f.path not in known and (root / art.name / f.path).is_file()
    ]  # fmt: skip
    if not todo:
        return
    known.update({f.path: sha256_file(root / art.name / f.path) for f in todo})
    from senseflow.io import atomic_write_text

    atomic_write_text(root / art.name / RECORD_FILE, json.dumps(known, indent=2, sort_keys=True) + "\n")


def verify_file(art: Artefact, f: ArtefactFile, root: Path) -> FileStatus:
    """Presence and hash of one file of an artefact (the manifest's pin, else the hash recorded at fetch)."""
    path = root / art.name / f.path
    if not path.is_file():
        return FileStatus(art.name, path, "missing", f"run {fetch_command(art.name, root)}")
    if not f.sha256 and not f.sha256_prefix:
        recorded = recorded_hashes(art, root).get(f.path)
        if recorded is None:
            return FileStatus(art.name, path, "unpinned", "no sha256 in the manifest, none recorded at fetch")
        digest = sha256_file(path)
        if digest != recorded:
            record = root / art.name / RECORD_FILE
            return FileStatus(
                art.name, path, "mismatch",
                f"sha256 {digest[:16]}..., recorded at its first fetch {recorded[:16]}... (a changed "
                f"file; if the publisher changed it on purpose, delete {record} and fetch again)",
            )  # fmt: skip
        return FileStatus(art.name, path, "unpinned", "matches the sha256 recorded at its first fetch")
    digest = sha256_file(path)
    if f.sha256 and digest != f.sha256:
        return FileStatus(art.name, path, "mismatch", f"sha256 {digest[:16]}..., expected {f.sha256[:16]}...")
    if not f.sha256 and not digest.startswith(f.sha256_prefix):
        return FileStatus(
            art.name, path, "mismatch", f"sha256 {digest[:16]}... lacks prefix {f.sha256_prefix}"
        )
    if not f.sha256:
        return FileStatus(art.name, path, "unpinned", f"prefix {f.sha256_prefix} ok, full hash not pinned")
    return FileStatus(art.name, path, "ok")


def check(
    profile: str | None = None,
    root: str | Path | None = None,
    manifest: Manifest | None = None,
    *,
    artefacts: tuple[str, ...] | list[str] = (),
    metrics=(),
) -> list[FileStatus]:
    """Verify every file of the selection (presence, then hash where one is pinned)."""
    manifest = manifest or load_manifest()
    root = weights_dir(root)
    selected = manifest.select(profile, artefacts, metrics)
    return [verify_file(art, f, root) for art in selected for f in art.files]


def selection_args(profile: str | None = None, artefacts=(), metrics=()) -> str:
    """The command-line words of a selection (``sdxl --artefact x --metrics coco``), for messages."""
    words = [profile] if profile else []
    words += [f"--artefact {a}" for a in artefacts]
    if metrics:
        words.append(f"--metrics {metrics if isinstance(metrics, str) else ','.join(metrics)}")
    return " ".join(words)


def render_check(rows: list[FileStatus], root: Path, profile: str) -> str:
    """The table ``senseflow weights check`` prints, with a closing verdict line.

    ``profile`` is the selection's command-line words (a profile name, or :func:`selection_args`).
    """
    lines = [f"weights directory: {root}", f"{'artefact':22s} {'status':9s} {'file':44s} detail"]
    for r in rows:
        rel = (
            str(r.path.relative_to(root / r.artefact)) if r.path.is_relative_to(root / r.artefact) else r.path
        )
        lines.append(f"{r.artefact:22s} {r.status:9s} {rel!s:44s} {r.detail}")
    failed = [r for r in rows if r.failed]
    unpinned = [r for r in rows if r.status == "unpinned"]
    if not rows:
        lines.append("nothing to check: this profile builds everything it needs")
    lines.append(
        f"{len(rows) - len(failed)}/{len(rows)} present and consistent, {len(unpinned)} unpinned, "
        f"{len(failed)} missing or wrong"
    )
    if failed:
        lines.append(f"fix: `senseflow weights fetch {profile} --weights-dir {root}` on a connected machine")
    return "\n".join(lines)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _download_url(url: str, dest: Path) -> None:
    """Plain HTTP download with resume: an interrupted ``.part`` file continues where it stopped."""
    import shutil
    import urllib.request

    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    with urllib.request.urlopen(request, timeout=60) as resp:
        # a server that ignores Range answers 200 with the whole file: start again
        mode = "ab" if start and resp.status == 206 else "wb"
        with open(part, mode) as fh:
            shutil.copyfileobj(resp, fh, 1 << 20)
    os.replace(part, dest)


def fetch_artefact(art: Artefact, root: Path) -> None:
    """Download one artefact into ``root/<name>/`` (huggingface_hub resumes partial files)."""
    folder = root / art.name
    if art.url:
        _download_url(art.url, folder / art.files[0].path)
        return
    from huggingface_hub import hf_hub_download, snapshot_download

    if art.snapshot:
        snapshot_download(
            art.repo, revision=art.revision, local_dir=folder, allow_patterns=list(art.allow_patterns) or None
        )
        return
    for f in art.files:
        hf_hub_download(art.repo, f.path, revision=art.revision, local_dir=folder)


def fetch(
    profile: str | None = None,
    root: str | Path | None = None,
    manifest: Manifest | None = None,
    *,
    artefacts: tuple[str, ...] | list[str] = (),
    metrics=(),
    label: str | None = None,
) -> list[FileStatus]:
    """Download a selection (profile, named artefacts, metric sets) and verify it.

    Raises :class:`WeightsError` on failure. Artefacts already present with matching hashes
    are skipped. A file whose hash is wrong after the download is deleted (so the next run
    fetches it again) and reported. Files the manifest pins no hash for get theirs recorded
    (:func:`record_hashes`). ``label`` is the selection as the user typed it (e.g. a profile
    whose artefacts the caller computed), for the messages.
    """
    manifest = manifest or load_manifest()
    root = weights_dir(root)
    selected = manifest.select(profile, artefacts, metrics)
    todo = [a for a in selected if any(verify_file(a, f, root).failed for f in a.files)]
    if todo and _offline():
        label = label or selection_args(profile, artefacts, metrics)
        raise WeightsError(
            f"cannot fetch {', '.join(a.name for a in todo)}: HF_HUB_OFFLINE is set (no network); run "
            f"`senseflow weights fetch {label}` on a connected "
            f"machine and copy {root} here"
        )
    for art in todo:
        try:
            fetch_artefact(art, root)
        except Exception as exc:  # network, auth (gated repos), disk: one line with the fix
            raise WeightsError(
                f"downloading {art.name} ({art.repo or art.url}) failed: {type(exc).__name__}: {exc}; "
                "check the network, `hf auth login` for gated repositories (accept the licence on the "
                "model page first), then rerun to resume"
            ) from exc
    for art in selected:
        record_hashes(art, root)
    rows = check(profile, root, manifest, artefacts=artefacts, metrics=metrics)
    for r in rows:
        if r.status == "mismatch":
            r.path.unlink(missing_ok=True)
    return rows
