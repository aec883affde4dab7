"""Replay: regenerate logged versions from their rows and compare each with its stored image, bit for bit.

A row holds everything that made its image: the parameters, the model hash, the backend; an inpaint (or a reweight
of an inpaint) also names its source image (the parent's, or the grandparent's for a reweight of an inpaint) and its
mask file. Each version is replayed on its own from those stored inputs, so one damaged version does not spoil the
others. The goal is 0 as the max abs pixel difference on the same machine and backend; where a version cannot be
replayed the entry says why (a missing image or mask, an unknown model hash, an outside image with no parameters, a
malformed row: broken JSON, a seed that is not a number, a missing field), and the other versions still replay.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from engine.defaults import INPAINT_DEFAULTS
from engine.errors import AttuneError
from engine.study.log import version_from_row
from engine.model.preflight import BUILTIN_MODEL_ID
from engine.study.versions import KINDS, Version

IDENTICAL, DIFFERENT, NOT_REPLAYED = "identical", "different", "not replayed"
# What a regeneration reads from its row; NULL in any of them (a hand-edited or damaged row) cannot be replayed.
REGENERATION_FIELDS = ("prompt", "negative_prompt", "seed", "steps", "guidance", "scheduler", "width", "height",
                       "syntax", "weights")


@dataclass
class ReplayEntry:
    id: str
    number: int
    kind: str
    session_id: str
    status: str  # identical | different | not replayed
    max_abs_diff: int | None = None  # over the RGB pixels (0-255); None when not replayed
    backend: str = ""  # the backend the replay ran on
    reason: str | None = None  # why it was not replayed, or what differed

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ReplayReport:
    results: list[ReplayEntry] = field(default_factory=list)

    @property
    def versions(self) -> int:
        """How many versions were regenerated (the ones that could not be are not counted)."""
        return sum(entry.max_abs_diff is not None for entry in self.results)

    @property
    def identical(self) -> int:
        return sum(entry.status == IDENTICAL for entry in self.results)

    @property
    def all_identical(self) -> bool:
        return bool(self.results) and self.identical == len(self.results)

    def to_dict(self) -> dict:
        return {"versions": self.versions, "identical": self.identical,
                "results": [entry.to_dict() for entry in self.results]}


class Engines:
    """One engine per (model, backend, device), loaded on first use; a load failure is remembered as its reason."""

    def __init__(self, model_override: str | None = None, seed: list | None = None):
        self.model_override = model_override
        self._engines: dict[tuple[str, str, str], object] = {}
        self._made: list = []  # the engines this pool loaded (the seeded ones belong to the caller)
        for engine in seed or []:  # e.g. the app's shared engine: no second copy of the model
            self._engines[(str(engine.model_id), engine.backend_name, str(engine.device))] = engine

    def get(self, version: Version):
        backend = version.backend or "torch"
        if backend not in ("torch", "onnx"):
            raise AttuneError(f"it was made on the backend '{backend}', which this engine does not have")
        model = self.model_override or version.model_id or None
        if model == BUILTIN_MODEL_ID and not Path(model).is_dir():
            model = None  # rows name the built-in model by its id, not by a folder
        device = version.device or "cpu"
        key = (str(model or ""), backend, device)
        if key not in self._engines:
            try:
                from engine.pipeline.attune import Attune

                self._engines[key] = Attune(model, backend=backend, device=device)
                self._made.append(self._engines[key])
            except AttuneError as error:
                self._engines[key] = AttuneError(f"its model cannot be loaded here ({error})")
            except Exception as error:  # a device that is not here (cuda), a broken folder deep in diffusers
                self._engines[key] = AttuneError(f"its model cannot be loaded here ({type(error).__name__}: {error})")
        engine = self._engines[key]
        if isinstance(engine, AttuneError):
            raise engine
        if not version.model_hash:
            raise AttuneError("no model hash is recorded, so the model that made it is unknown")
        if engine.weights_hash != version.model_hash:
            raise AttuneError(f"unknown model hash {version.model_hash}: the model at '{model or 'built-in'}' is "
                              f"{engine.weights_hash} (pass the right folder with --model)")
        return engine

    def close(self) -> None:
        for engine in self._made:
            engine.close()


def _rgb(path: str | None, what: str) -> np.ndarray:
    if not path or not Path(path).is_file():
        raise AttuneError(f"{what} is missing: {path or '(none recorded)'}")
    try:
        with Image.open(path) as opened:
            return np.asarray(opened.convert("RGB"))
    except (OSError, Image.DecompressionBombError) as error:
        raise AttuneError(f"{what} cannot be read: {path} ({type(error).__name__})") from None


def _inpaint_source(version: Version, lookup: Callable[[str], Version | None]) -> Version | None:
    """The version whose image was inpainted, or None when this version is a plain generation."""
    parent = lookup(version.parent_id) if version.parent_id else None
    if version.kind == "inpaint":
        if parent is None:
            raise AttuneError(f"its parent version {version.parent_id} (the image it inpainted) is not in the log")
        return parent
    if version.kind == "reweight":
        if parent is None:
            raise AttuneError(f"its parent version {version.parent_id} is not in the log")
        if parent.kind != "inpaint":
            return None  # a reweight of a generation regenerates the whole image
        source = lookup(parent.parent_id) if parent.parent_id else None
        if source is None:
            raise AttuneError(f"the image its inpaint started from (version {parent.parent_id}) is not in the log")
        return source
    if version.kind == "restore":
        if version.inpaint_prompt or version.mask_path:
            raise AttuneError("it is an imported inpaint result; the image it was inpainted from is not in the log")
        if not version.model_hash:
            raise AttuneError("it is an outside image with no generation parameters (no model hash)")
        return None  # an imported generation: its recorded parameters regenerate it
    return None


def _run_spec(version: Version, lookup: Callable[[str], Version | None]):
    """How the engine reproduces a version's run; a blended reweight carries its parent's run (engine.sampling.layout)."""
    from engine.sampling.layout import RunSpec
    from engine.study.studio import version_params

    layout = version.layout or "free"
    if version.kind == "reweight" and layout != "free" and version.parent_id:
        parent = lookup(version.parent_id)
        if parent is None:
            raise AttuneError(f"its parent version {version.parent_id} (the run it was blended with) is not in the log")
        if parent.kind != "inpaint":
            return RunSpec(version_params(version), layout, _run_spec(parent, lookup))
    return RunSpec(version_params(version))


def _regenerate(version: Version, engine, source: Version | None,
                lookup: Callable[[str], Version | None]) -> tuple[Image.Image, dict]:
    """The image for the version's stored inputs, and the run's info ({} for a fill, which runs no model)."""
    from engine.pipeline.params import InpaintParams
    from engine.sampling.masks import mask_array
    from engine.study.studio import version_params

    params = version_params(version)
    if source is None:
        spec = _run_spec(version, lookup)
        if spec.parent is not None:  # a layout-keeping reweight: an edit of its parent's run
            return _image_and_info(engine.reweight(spec.parent, params.weights, params.weight_mode, spec.layout))
        return _image_and_info(engine.generate(params))
    image = Image.fromarray(_rgb(source.image_path, f"the source image (version {source.number})"))
    if not version.mask_path or not Path(version.mask_path).is_file():
        raise AttuneError(f"its mask file is missing: {version.mask_path or '(none recorded)'}")
    mask_bytes = Path(version.mask_path).read_bytes()
    if version.mask_hash and hashlib.sha256(mask_bytes).hexdigest() != version.mask_hash:
        raise AttuneError(f"its mask file was changed after it was logged: {version.mask_path}")
    if version.unet == "fill":  # an erase that filled the mask from its surroundings: no model ran
        from engine.sampling.masks import erase_by_fill

        return Image.fromarray(erase_by_fill(np.asarray(image), mask_array(mask_bytes, image.size))), {}
    inpaint = InpaintParams(
        base=dataclasses.replace(params, prompt=version.inpaint_prompt or version.prompt),
        image=image,
        mask=mask_array(mask_bytes, image.size),
        mask_blur=INPAINT_DEFAULTS.mask_blur if version.mask_blur is None else int(version.mask_blur),
        only_masked=bool(version.only_masked),
        padding=INPAINT_DEFAULTS.padding if version.padding is None else int(version.padding),
        auto_crop=version.auto_crop is not False,
    )
    return _image_and_info(engine.inpaint(inpaint))


def _image_and_info(result) -> tuple[Image.Image, dict]:
    return result.image, dict(result.info)


def _check_parameters(version: Version) -> None:
    """The row's parameters as the engine would check them, before a model is loaded for it."""
    from engine.pipeline.params import validate_generate
    from engine.study.studio import version_params

    missing = [name for name in REGENERATION_FIELDS if getattr(version, name) is None]
    if missing:
        raise AttuneError(f"its row has no {', '.join(missing)}")
    params = version_params(version)
    if version.kind == "inpaint" and version.inpaint_prompt:
        params = dataclasses.replace(params, prompt=version.inpaint_prompt)
    try:
        validate_generate(params, vae_scale_factor=1)  # the size against the model's factor comes with the model
    except AttuneError as error:
        raise AttuneError(f"its parameters are not valid ({error})") from None


def replay_version(version: Version, lookup: Callable[[str], Version | None], engines: Engines) -> ReplayEntry:
    entry = ReplayEntry(id=version.id, number=version.number, kind=version.kind, session_id=version.session_id,
                        status=NOT_REPLAYED, backend=version.backend)
    try:
        if version.kind not in KINDS:
            raise AttuneError(f"unknown kind '{version.kind}'")
        stored = _rgb(version.image_path, "its stored image")
        source = _inpaint_source(version, lookup)
        _check_parameters(version)
        engine = None if version.unet == "fill" else engines.get(version)  # a fill runs no model
        image, info = _regenerate(version, engine, source, lookup)
        regenerated = np.asarray(image.convert("RGB"))
    except AttuneError as error:
        entry.reason = str(error)
        return entry
    except Exception as error:  # one broken version must not stop the others
        entry.reason = f"{type(error).__name__}: {error}"
        return entry
    entry.backend = getattr(engine, "backend_name", entry.backend)
    if regenerated.shape != stored.shape:
        entry.status = DIFFERENT
        entry.max_abs_diff = 255
        entry.reason = f"the replay is {regenerated.shape[1]}x{regenerated.shape[0]}, the stored image " \
                       f"{stored.shape[1]}x{stored.shape[0]}"
        return entry
    entry.max_abs_diff = int(np.abs(regenerated.astype(np.int16) - stored.astype(np.int16)).max(initial=0))
    entry.status = IDENTICAL if entry.max_abs_diff == 0 else DIFFERENT
    if entry.status == DIFFERENT:
        entry.reason = _graph_change(version, info)
    return entry


def _graph_change(version: Version, info: dict) -> str | None:
    """Why a replay may differ: the ONNX UNet graph it ran on is not the one the version was made with (a
    re-shipped or re-exported graph). None when both are known and equal, or either is unknown."""
    now = str(info.get("unet_graph", ""))
    if version.unet_graph and now and now != version.unet_graph:
        return f"made with another graph (UNet graph {version.unet_graph}, now {now})"
    return None


def _malformed_entry(row: dict, reason: str) -> ReplayEntry:
    """The entry of a row that is not a version (whatever it holds, the entry's own fields are well-typed)."""
    try:
        number = int(row.get("number") or 0)
    except (TypeError, ValueError, OverflowError):
        number = 0
    return ReplayEntry(id=str(row.get("id") or ""), number=number, kind=str(row.get("kind") or ""),
                       session_id=str(row.get("session_id") or ""), status=NOT_REPLAYED,
                       backend=str(row.get("backend") or ""), reason=f"its row is malformed: {reason}")


def replay_log(log, *, version_id: str | None = None, session_id: str | None = None, study_id: str | None = None,
               model: str | None = None, engines: list | None = None,
               progress: Callable[[int, int], None] | None = None) -> ReplayReport:
    """Replay the versions of a StudyLog (one version, a session, a study, or all), oldest first.

    model: a folder to use instead of the recorded model_id (its hash must still match). engines: loaded
    engines to reuse (the app's). progress(done, total) after each version. A malformed row is "not replayed", with
    the reason, and the others still replay."""
    rows: list[tuple[dict, Version | None, str | None]] = []  # (row, its version, why it is not one)
    for row in log.version_rows():
        try:
            rows.append((row, version_from_row(row), None))
        except AttuneError as error:
            rows.append((row, None, str(error)))
    by_id = {version.id: version for _, version, _ in rows if version is not None}
    malformed = {str(row.get("id")): reason for row, version, reason in rows if version is None}

    def lookup(parent_id: str) -> Version | None:
        if parent_id in malformed:
            raise AttuneError(f"the row of version {parent_id}, which it was made from, is malformed "
                              f"({malformed[parent_id]})")
        return by_id.get(parent_id)

    if version_id is not None:
        targets = [item for item in rows if str(item[0].get("id")) == version_id]
        if not targets:
            raise AttuneError(f"No version with id '{version_id}' in the log {log.db_path}.")
    else:
        targets = [item for item in rows
                   if (session_id is None or item[0].get("session_id") == session_id)
                   and (study_id is None or item[0].get("study_id") == study_id)]
    pool = Engines(model, engines)
    report = ReplayReport()
    try:
        for done, (row, version, reason) in enumerate(targets, start=1):
            if version is None:
                report.results.append(_malformed_entry(row, reason))
            else:
                report.results.append(replay_version(version, lookup, pool))
            if progress is not None:
                progress(done, len(targets))
    finally:
        pool.close()
    return report
