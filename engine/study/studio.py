"""Studio: one user's session. Runs the engine, writes the files, records the Version, keeps the History tree.

Write order (so a failure leaves neither files nor a row): the files first, each one atomically (tmp + rename):
mask PNG, attention maps (compressed npz), image PNG with its metadata; then the versions row. If any step fails,
the files already written are removed, so readers of the log never meet a row without its image.
"""
from __future__ import annotations

import hashlib
import io
import os
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

from engine.defaults import INPAINT_DEFAULTS
from engine.errors import AttuneError
from engine.protocols import Engine
from engine.attention.maps import AttentionMaps
from engine.study.log import StudyLog, atomic_write_bytes
from engine.sampling.masks import mask_array
from engine.study.pngmeta import png_bytes, read_png
from engine.study.versions import History, Version, new_id, utc_now

MAPS_CACHE_SIZE = 8  # recent versions' maps kept in memory (Inspect and Refine redraw them often)
_LIBRARIES = ("torch", "diffusers", "transformers", "tokenizers", "onnxruntime", "onnxruntime-gpu", "numpy", "pillow")
_library_versions: dict[str, str] | None = None


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape an image (read from package metadata, no imports)."""
    global _library_versions
    if _library_versions is None:
        found = {}
        for name in _LIBRARIES:
            try:
                found[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                pass
        import platform

        found["python"] = platform.python_version()
        _library_versions = found
    return dict(_library_versions)


def version_params(version: Version):
    """The GenerateParams recorded in a version (its whole-image prompt; seed, steps, weights...)."""
    from engine.pipeline.params import GenerateParams

    return GenerateParams(
        prompt=version.prompt, negative_prompt=version.negative_prompt, seed=version.seed, steps=version.steps,
        guidance=version.guidance, width=version.width, height=version.height, scheduler=version.scheduler,
        syntax=version.syntax, weights=dict(version.weights or {}), weight_mode=version.weight_mode or "score",
    )


class Studio:
    def __init__(self, engine: Engine, log: StudyLog, out_dir, participant_id: str = "anonymous",
                 session_id: str | None = None, study_id: str = "", condition: str = "", *, save_maps: bool = True):
        self.engine = engine
        self.log = log
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.participant_id = str(participant_id or "anonymous")
        self.session_id = str(session_id or uuid.uuid4().hex)
        self.study_id = str(study_id or "")
        self.condition = str(condition or "")
        self.save_maps = save_maps
        self.history = History()
        self._lock = threading.RLock()
        self._maps_cache: OrderedDict[str, AttentionMaps] = OrderedDict()
        self._tokens_cache: dict[tuple[str, str], object] = {}

    # ---- state -----------------------------------------------------------------------------------------------

    @property
    def current(self) -> Version | None:
        return self.history.current

    def resume(self) -> int:
        """Reload this participant's session from the log (after a page refresh); returns the number of versions."""
        versions = self.log.versions(participant_id=self.participant_id, session_id=self.session_id)
        with self._lock:
            for version in sorted(versions, key=lambda v: v.number):
                if version.id not in self.history:
                    if version.parent_id and version.parent_id not in self.history:
                        version.parent_id = None  # its parent was not logged: keep the version as a root
                    self.history.add(version)
        return len(versions)

    def _parent(self, parent) -> Version:
        if parent is None:
            parent = self.current
        elif isinstance(parent, str):
            parent = self.history.get(parent)
        if parent is None:
            raise AttuneError("There is no image yet: generate one first.")
        return parent

    # ---- engine runs -----------------------------------------------------------------------------------------

    def generate(self, params, progress=None) -> Version:
        """Text to image. The new version's parent is the current one (None for the first)."""
        started = time.perf_counter()
        result = self.engine.generate(params, progress=progress)
        version = self._version_from(params, result, kind="generate", parent=self.current)
        return self._commit(version, result, started)

    def reweight(self, weights: dict[str, float], weight_mode: str = "score", parent=None, progress=None,
                 layout: str | None = None) -> Version:
        """Same seed and parameters as the parent; only the word weights and method change. layout (default
        engine.sampling.layout.DEFAULT_LAYOUT): "blend" keeps the parent's pixels outside the reweighted words' attention,
        "free" re-runs the whole image. Reweighting an inpainted version redoes its inpaint (the mask keeps it local)."""
        from engine.sampling.layout import DEFAULT_LAYOUT, check_layout

        layout = check_layout(DEFAULT_LAYOUT if layout is None else layout)
        parent = self._parent(parent)
        if parent.kind == "inpaint":
            return self._redo_inpaint(parent, weights, weight_mode, progress)
        params = replace(self.params_of(parent), weights=weights, weight_mode=weight_mode)
        started = time.perf_counter()
        result = self.engine.reweight(self.run_spec(parent), weights, weight_mode, layout, progress=progress)
        ran = (result.info or {}).get("layout")
        if ran != layout:  # never record (or show) another layout than the one chosen
            raise AttuneError(f"The engine ran layout '{ran}' instead of '{layout}'; nothing was saved.")
        version = self._version_from(params, result, kind="reweight", parent=parent)
        version.layout = layout
        return self._commit(version, result, started)

    def run_spec(self, version: Version):
        """How the engine reproduces a version's run: its parameters, and for a blended reweight its parent's run."""
        from engine.sampling.layout import RunSpec

        layout = version.layout or "free"
        if version.kind == "reweight" and layout != "free" and version.parent_id in self.history:
            parent = self.history.get(version.parent_id)
            if parent.kind != "inpaint":
                return RunSpec(self.params_of(version), layout, self.run_spec(parent))
        return RunSpec(self.params_of(version))

    def inpaint(self, mask, prompt: str, *, mask_blur: int = INPAINT_DEFAULTS.mask_blur, only_masked: bool = INPAINT_DEFAULTS.only_masked,
                padding: int = INPAINT_DEFAULTS.padding, parent=None, progress=None, overrides: dict | None = None,
                auto_crop: bool = INPAINT_DEFAULTS.auto_crop) -> Version:
        """Repaint the parent's image where the mask is white, as the inpaint box asks: `prompt` is the box as typed
        ("replace with misty forest", "remove the moon", "" to erase; engine.words.inpaint_instruction). The Version
        records both the typed text (inpaint_typed) and the prompt that ran (inpaint_prompt).

        Seed, steps, guidance, scheduler, weights... come from the parent; `overrides` changes some of them
        (GenerateParams field names), e.g. the CLI's options. The parent's weights on words the inpaint prompt lacks
        are dropped; weights given in `overrides` are kept as given (a word not in the prompt is an error)."""
        from engine.sampling.loop import is_small_mask
        from engine.words.inpaint_instruction import parse_inpaint_instruction

        parent = self._parent(parent)
        parse_inpaint_instruction(prompt, parent.prompt)  # a bad box is the first error, before the mask's
        image = self._image_of(parent)
        mask = mask_array(mask, image.size)
        instruction = parse_inpaint_instruction(prompt, parent.prompt, small_mask=is_small_mask(mask))
        if int(mask_blur) < 0 or int(padding) < 0:
            raise AttuneError("Mask blur and padding must be 0 or more pixels.")
        base = self.params_of(parent)
        if overrides:
            try:
                replace(base, **overrides)
            except TypeError as error:
                raise AttuneError(f"Unknown inpaint option: {error}.") from None
        if not instruction.prompt:  # an erase with no prompt to run: fill the mask from its surroundings
            return self._fill(parent, image, mask, instruction.typed, only_masked, padding, auto_crop)
        syntax = (overrides or {}).get("syntax", base.syntax)
        base = replace(base, weights=self._weights_in(instruction.prompt, syntax, base.weights))
        if overrides:
            base = replace(base, **overrides)
        version = self._run_inpaint(parent, image, mask, instruction.prompt, base, mask_blur, only_masked, padding,
                                    progress, kind="inpaint", auto_crop=auto_crop, typed=instruction.typed)
        return version

    def _fill(self, parent: Version, image: Image.Image, mask: np.ndarray, typed: str, only_masked, padding,
              auto_crop) -> Version:
        """An erase that fills the mask from its surroundings: no model runs (Version.unet "fill"), no mask blur."""
        from engine.sampling.masks import erase_by_fill

        started = time.perf_counter()
        if not mask.any():
            raise AttuneError("The mask is empty: paint the area to change first.")
        out = erase_by_fill(np.asarray(image), mask)
        version = replace(parent, id=new_id(), number=0, parent_id=parent.id, kind="inpaint", image_path="",
                          maps_path=None, mask_path=None, created_at=utc_now(), unet="fill", backend="numpy",
                          device="cpu", fallback_reason=None, library_versions=library_versions(), edit=None,
                          timings={"fill": round(time.perf_counter() - started, 6)}, layout="free",
                          unknown_words=[], dropped_words=[], defaults_source="")
        version.width, version.height = image.size
        version.inpaint_prompt, version.inpaint_typed = "", typed
        version.mask_blur, version.only_masked, version.padding = 0, bool(only_masked), int(padding)
        version.auto_crop = bool(auto_crop)
        mask_bytes = self._mask_png(mask)
        version.mask_hash = hashlib.sha256(mask_bytes).hexdigest()
        return self._commit(version, None, started, mask_bytes=mask_bytes, image=Image.fromarray(out))

    @staticmethod
    def _mask_png(mask: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
        return buffer.getvalue()

    def _redo_inpaint(self, parent: Version, weights, weight_mode, progress) -> Version:
        """Reweighting an inpainted version redoes that inpaint (same source, mask, seed) with the new weights."""
        if not parent.parent_id or parent.parent_id not in self.history:
            raise AttuneError("The image this inpaint started from is not in this session, so it cannot be redone.")
        source = self.history.get(parent.parent_id)
        if parent.unet == "fill":
            raise AttuneError(f"Version {parent.number} erased by filling the mask from its surroundings: it has no "
                              "prompt whose words could be reweighted.")
        if not parent.mask_path or not Path(parent.mask_path).is_file():
            raise AttuneError("The mask of this inpainted version is missing, so it cannot be redone.")
        image = self._image_of(source)
        mask = mask_array(parent.mask_path, image.size)
        base = replace(self.params_of(parent), prompt=source.prompt, weights=weights, weight_mode=weight_mode)
        return self._run_inpaint(parent, image, mask, parent.inpaint_prompt or "", base, parent.mask_blur or 0,
                                 bool(parent.only_masked), parent.padding or 0, progress, kind="reweight",
                                 auto_crop=parent.auto_crop is not False, typed=parent.inpaint_typed)

    def _run_inpaint(self, parent, image, mask, prompt, base, mask_blur, only_masked, padding, progress, kind,
                     auto_crop: bool = INPAINT_DEFAULTS.auto_crop, typed: str | None = None):
        from engine.pipeline.params import InpaintParams

        prompt = str(prompt or "").strip() or base.prompt
        if int(mask_blur) < 0 or int(padding) < 0:
            raise AttuneError("Mask blur and padding must be 0 or more pixels.")
        base = replace(base, prompt=prompt)
        params = InpaintParams(base=base, image=image, mask=mask, mask_blur=int(mask_blur),
                               only_masked=bool(only_masked), padding=int(padding), auto_crop=auto_crop)
        started = time.perf_counter()
        result = self.engine.inpaint(params, progress=progress)
        version = self._version_from(base, result, kind=kind, parent=parent)
        version.width, version.height = image.size  # the engine may work on a size rounded to the VAE factor
        version.prompt = parent.prompt  # the whole image's prompt; the inpaint text is kept beside it
        version.inpaint_prompt, version.inpaint_typed = prompt, typed
        version.mask_blur, version.only_masked, version.padding = int(mask_blur), bool(only_masked), int(padding)
        version.auto_crop = bool(auto_crop)
        mask_bytes = self._mask_png(mask)
        version.mask_hash = hashlib.sha256(mask_bytes).hexdigest()
        return self._commit(version, result, started, mask_bytes=mask_bytes)

    def edit_prompt(self, prompt: str, *, edit: str, kind: str = "edit", parent=None, weights=None, progress=None,
                    make_current: bool = True) -> Version:
        """The parent's seed and parameters with a new prompt (word cards, Explore; engine/study/explore.py builds the
        prompts). Weights move with `weights` (default: the parent's) and keep only words still in the prompt.
        make_current=False logs the version but leaves the current one current (Explore's grid cells)."""
        parent = self._parent(parent)
        base = self.params_of(parent)
        params = replace(base, prompt=prompt, weights=self._weights_in(prompt, base.syntax,
                                                                        base.weights if weights is None else weights))
        started = time.perf_counter()
        result = self.engine.generate(params, progress=progress)
        version = self._version_from(params, result, kind=kind, parent=parent)
        version.edit = edit
        with self._lock:
            before = self.history.current_id
            committed = self._commit(version, result, started)
            if not make_current:
                self.history.current_id = before
        return committed

    # ---- history ---------------------------------------------------------------------------------------------

    def restore(self, version_id: str) -> Version:
        """Make an old version current; the next edit branches from it. Logged as an event."""
        with self._lock:
            previous = self.current
            version = self.history.restore(version_id)
        self.event("history", "restore", version_id=version.id, number=version.number,
                   from_version_id=previous.id if previous else None)
        return version

    def import_png(self, path_or_bytes) -> Version:
        """A new root version (kind "restore") from a PNG's metadata; its image is copied into this session."""
        image, meta = read_png(path_or_bytes)
        committed = self.add_image(image, meta)
        self.event("history", "import_png", version_id=committed.id, source_version_id=meta.id)
        return committed

    def add_image(self, image: Image.Image, meta: Version | None = None, **fields) -> Version:
        """Record an outside image as a new root version (kind "restore"), e.g. a PNG to inpaint from.

        Parameters come from `meta` (a Version read from metadata) and/or `fields`; ids, files and the session's
        ids are this Studio's."""
        if not isinstance(image, Image.Image):
            raise AttuneError("add_image() takes a PIL image.")
        meta = meta if meta is not None else Version()
        if fields:
            try:
                meta = replace(meta, **fields)
            except TypeError as error:
                raise AttuneError(f"Unknown version field: {error}.") from None
        image = image.convert("RGB")
        version = replace(
            meta,
            id=new_id(),
            number=0,
            parent_id=None,
            kind="restore",
            image_path="",
            maps_path=None,
            mask_path=None,
            timings={},
            width=image.width,
            height=image.height,
            created_at=utc_now(),
        )
        if not version.weights:
            version.weights = {}
        return self._commit(version, None, time.perf_counter(), image=image)

    # ---- reading back ----------------------------------------------------------------------------------------

    def params_of(self, version: Version):
        """The GenerateParams that reproduce a version (inpaint versions: the inpaint prompt's parameters)."""
        return version_params(version)

    def image(self, version: Version) -> Image.Image:
        return self._image_of(version)

    def maps(self, version: Version) -> AttentionMaps:
        """The stored attention maps of a version (cached)."""
        if not version.maps_path:
            raise AttuneError(f"Version {version.number} has no attention maps (imported or saved without them).")
        with self._lock:
            if version.id in self._maps_cache:
                self._maps_cache.move_to_end(version.id)
                return self._maps_cache[version.id]
        if not Path(version.maps_path).is_file():
            raise AttuneError(f"The attention maps of version {version.number} are missing: {version.maps_path}")
        maps = AttentionMaps.load(version.maps_path)
        self._remember_maps(version.id, maps)
        return maps

    def _remember_maps(self, version_id: str, maps: AttentionMaps) -> None:
        with self._lock:
            self._maps_cache[version_id] = maps
            self._maps_cache.move_to_end(version_id)
            while len(self._maps_cache) > MAPS_CACHE_SIZE:
                self._maps_cache.popitem(last=False)

    def word_tokens(self, version: Version):
        """Words <-> token indices of the prompt the version's maps were made with."""
        prompt = version.inpaint_prompt or version.prompt
        key = (prompt, version.syntax)
        if key not in self._tokens_cache:
            self._tokens_cache[key] = self.engine.tokenize(prompt, version.syntax)
        return self._tokens_cache[key]

    def event(self, page: str, action: str, **payload) -> int:
        return self.log.add_event(page, action, payload, participant_id=self.participant_id,
                                  session_id=self.session_id, study_id=self.study_id, condition=self.condition)

    # ---- internals -------------------------------------------------------------------------------------------

    def _weights_in(self, prompt: str, syntax: str, weights: dict) -> dict:
        """The weights whose words are in this prompt (an inpaint prompt differs from the parent's)."""
        if not weights or not isinstance(weights, dict):
            return weights
        word_tokens = self.engine.tokenize(prompt, syntax)
        kept = {}
        for word, weight in weights.items():
            try:
                word_tokens.indices_for(word)
            except AttuneError:
                continue
            kept[word] = weight
        return kept

    def _image_of(self, version: Version) -> Image.Image:
        path = Path(version.image_path or "")
        if not version.image_path or not path.is_file():
            raise AttuneError(f"The image of version {version.number} is missing: {version.image_path or '(none)'}")
        with Image.open(path) as opened:
            return opened.convert("RGB")

    def _version_from(self, params, result, *, kind: str, parent: Version | None) -> Version:
        from engine.model.family import BUILTIN_DEFAULTS
        from engine.pipeline.params import with_defaults

        # The engine's validated copy (clean weights); a value still unset was run at the built-in defaults (an
        # engine older than model defaults had them fixed).
        params = with_defaults(result.params or params, BUILTIN_DEFAULTS)
        return Version(
            parent_id=parent.id if parent else None,
            kind=kind,
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            seed=int(params.seed),
            steps=int(params.steps),
            guidance=float(params.guidance),
            scheduler=params.scheduler,
            width=int(params.width),
            height=int(params.height),
            syntax=params.syntax,
            weights=dict(params.weights or {}),
            weight_mode=params.weight_mode,
            backend=result.backend,
            device=str(result.device),
            fallback_reason=result.fallback_reason,
            unet=str(result.info.get("unet", "base")),
            unet_graph=str(result.info.get("unet_graph", "")),
            defaults_source=str(result.info.get("defaults", "")),
            model_id=str(self.engine.model_id or ""),
            model_hash=str(self.engine.weights_hash or ""),
            library_versions=library_versions(),
            timings={k: float(v) for k, v in (result.timings or {}).items()},
            unknown_words=list(result.word_tokens.unknown_words) if result.word_tokens is not None else [],
            prompt_chunks=result.word_tokens.n_chunks if result.word_tokens is not None else 1,
            dropped_words=list(result.word_tokens.truncated_words) if result.word_tokens is not None else [],
        )

    def _commit(self, version: Version, result, started: float, *, mask_bytes: bytes | None = None,
                image: Image.Image | None = None) -> Version:
        """Files first (each atomic), then the row, then the in-memory history. A failure removes what was written."""
        with self._lock:
            version.number = self.history.next_number()
            version.participant_id, version.session_id = self.participant_id, self.session_id
            version.study_id, version.condition = self.study_id, self.condition
            stem = self.out_dir / f"v{version.number:03d}-{version.id}"
            image_path = stem.with_name(stem.name + ".png")
            maps_path = stem.with_name(stem.name + ".maps.npz")
            mask_path = stem.with_name(stem.name + ".mask.png")
            written: list[Path] = []
            try:
                if mask_bytes is not None:
                    version.mask_path = str(mask_path.resolve())
                    atomic_write_bytes(mask_path, mask_bytes)
                    written.append(mask_path)
                maps = result.maps if result is not None else None
                if self.save_maps and maps is not None:
                    tmp = maps_path.with_name(f".{maps_path.stem}.{uuid.uuid4().hex[:8]}.tmp.npz")
                    try:
                        maps.save(tmp)
                        os.replace(tmp, maps_path)
                    finally:
                        if tmp.exists():
                            tmp.unlink()
                    written.append(maps_path)
                    version.maps_path = str(maps_path.resolve())
                version.image_path = str(image_path.resolve())
                version.timings["studio_total"] = round(time.perf_counter() - started, 6)  # engine run + writes so far
                picture = image if image is not None else result.image
                atomic_write_bytes(image_path, png_bytes(picture, version))
                written.append(image_path)
                self.log.add_version(version)
            except BaseException:
                for path in written:
                    try:
                        path.unlink()
                    except OSError:
                        pass
                version.image_path, version.maps_path, version.mask_path = "", None, None
                raise
            self.history.add(version)
            if maps is not None and version.maps_path:
                self._remember_maps(version.id, maps)
            return version
