"""The Version record (one image and everything needed to redo it) and the History tree of one session."""
from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from engine.defaults import DEFAULT_GUIDANCE
from engine.errors import AttuneError

KINDS = ("generate", "reweight", "inpaint", "restore", "edit", "explore")  # edit: a word card; explore: a grid cell


def new_id() -> str:
    return uuid.uuid4().hex


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Version:
    id: str = field(default_factory=new_id)
    number: int = 0
    parent_id: str | None = None
    kind: str = "generate"
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    guidance: float = DEFAULT_GUIDANCE
    scheduler: str = "ddim"
    width: int = 128
    height: int = 128
    syntax: str = "a1111"
    weights: dict[str, float] = field(default_factory=dict)
    weight_mode: str = "score"
    mask_path: str | None = None
    mask_hash: str | None = None
    inpaint_prompt: str | None = None  # the prompt that ran ("" for an erase that filled the mask from around it)
    inpaint_typed: str | None = None  # the inpaint box as typed ("replace with misty forest"); None in older records
    mask_blur: int | None = None
    only_masked: bool | None = None
    padding: int | None = None
    backend: str = ""
    device: str = ""
    fallback_reason: str | None = None
    unet: str = ""  # which UNet made the image: "base", or "inpaint-9ch" (the model's inpainting UNet); "fill": none, an
    # erase filled the mask from its surroundings (engine.sampling.masks.fill_from_surroundings)
    unet_graph: str = ""  # on ONNX: the UNet graph's identity (OnnxUNetRunner.graph_sha256); "" on PyTorch and in
    # older records
    model_id: str = ""
    model_hash: str = ""
    library_versions: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    image_path: str = ""
    maps_path: str | None = None
    created_at: str = field(default_factory=utc_now)
    participant_id: str = "anonymous"
    session_id: str = ""
    study_id: str = ""
    condition: str = ""
    unknown_words: list[str] = field(default_factory=list)  # prompt words the model's tokenizer does not know
    prompt_chunks: int = 1  # 77-position chunks the prompt was encoded in (A1111/Compel long-prompt rules)
    dropped_words: list[str] = field(default_factory=list)  # words past the last chunk: left out, with a warning
    auto_crop: bool | None = None  # inpaint: small masks worked on a crop (None: not recorded, the default True)
    edit: str | None = None  # word edits (kinds edit, explore): what changed in the prompt, e.g. "replace: moon → sun"
    layout: str = "free"  # reweights: "blend" kept the parent's layout outside the word (engine.sampling.layout), "free" re-ran,
    # "inject" / "blend+inject" reused the parent's attention (engine.attention.injection)
    defaults_source: str = ""  # which values came from the model's defaults, and from where (engine.model.family);
    # "" when the caller set every value (and in records older than model defaults)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "Version":
        """Build from a dict; unknown keys are ignored and missing ones take defaults (older records, other tools)."""
        if not isinstance(data, dict):
            raise AttuneError("A version record must be a JSON object.")
        try:
            return cls(**cls._values(data))
        except (TypeError, ValueError, AttributeError, OverflowError) as error:  # a damaged or foreign record
            raise AttuneError(f"A version record has a bad value: {str(error)[:160]}.") from None

    @classmethod
    def _values(cls, data: dict) -> dict:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("weights", "library_versions", "timings"):
            if isinstance(values.get(key), str):  # SQLite rows keep dicts as JSON text
                values[key] = json.loads(values[key] or "{}")
            if values.get(key) is None:
                values.pop(key, None)
            elif not isinstance(values[key], dict):
                raise TypeError(f"{key} must be a mapping, got {type(values[key]).__name__}")
        if "weights" in values:
            try:
                values["weights"] = {str(k): float(v) for k, v in values["weights"].items()}
            except (TypeError, ValueError):
                raise ValueError("each weight must be a number") from None
        for key in ("unknown_words", "dropped_words"):
            if isinstance(values.get(key), str):  # SQLite rows keep lists as JSON text
                values[key] = json.loads(values[key] or "[]")
            if values.get(key) is None:
                values.pop(key, None)
            else:
                values[key] = [str(w) for w in values[key]]
        for key in ("only_masked", "auto_crop"):
            if values.get(key) is not None:
                values[key] = bool(values[key])
        for key, kind, meaning in (*((key, int, "a whole number") for key in (
                "seed", "steps", "width", "height", "number", "mask_blur", "padding", "prompt_chunks")),
                ("guidance", float, "a number")):
            if values.get(key) is not None:
                try:
                    values[key] = kind(values[key])
                except (TypeError, ValueError, OverflowError):
                    raise ValueError(f"{key} must be {meaning}, got {str(values[key])[:40]!r}") from None
        for item in dataclasses.fields(cls):  # text fields hold text (or nothing): a number here is damage
            if item.type in ("str", "str | None") and values.get(item.name) is not None \
                    and not isinstance(values[item.name], str):
                raise TypeError(f"{item.name} must be text, got {type(values[item.name]).__name__}")
        return values

    @classmethod
    def from_json(cls, text: str) -> "Version":
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as error:
            raise AttuneError(f"The version record is not valid JSON ({error}).") from None
        return cls.from_dict(data)

    def changed_fields(self, other: "Version") -> dict[str, tuple]:
        """Parameters that differ from another version (for the Compare table); bookkeeping fields are skipped."""
        skip = {"id", "number", "parent_id", "kind", "created_at", "image_path", "maps_path", "timings", "mask_path",
                "edit", "defaults_source"}
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (theirs[k], mine[k]) for k in mine if k not in skip and mine[k] != theirs[k]}


class History:
    """The versions of one session as a tree. Restoring an old version makes it current; the next edit branches."""

    def __init__(self, versions: list[Version] | None = None):
        self.versions: dict[str, Version] = {}
        self.current_id: str | None = None
        for version in versions or []:
            self.add(version)

    def __len__(self) -> int:
        return len(self.versions)

    def __iter__(self):
        return iter(sorted(self.versions.values(), key=lambda v: v.number))

    def __contains__(self, version_id) -> bool:
        return version_id in self.versions

    @property
    def current(self) -> Version | None:
        return self.versions.get(self.current_id) if self.current_id else None

    def next_number(self) -> int:
        return max((v.number for v in self.versions.values()), default=0) + 1

    def add(self, version: Version) -> Version:
        """Add a version (its parent must already be here, or be None) and make it current."""
        if version.id in self.versions:
            raise AttuneError(f"Version {version.id} is already in the history.")
        if version.parent_id is not None and version.parent_id not in self.versions:
            raise AttuneError(f"Version {version.id} has parent {version.parent_id}, which is not in the history.")
        if not version.number:
            version.number = self.next_number()
        self.versions[version.id] = version
        self.current_id = version.id
        return version

    def get(self, version_id: str) -> Version:
        try:
            return self.versions[version_id]
        except KeyError:
            raise AttuneError(f"No version with id '{version_id}' in this session.") from None

    def by_number(self, number: int) -> Version:
        for version in self.versions.values():
            if version.number == number:
                return version
        raise AttuneError(f"No version number {number} in this session.")

    def restore(self, version_id: str) -> Version:
        """Make an old version current: the next version added with parent=current becomes a branch."""
        version = self.get(version_id)
        self.current_id = version.id
        return version

    def children(self, version_id: str | None) -> list[Version]:
        """Direct children (version_id None gives the roots), oldest first."""
        return sorted((v for v in self.versions.values() if v.parent_id == version_id), key=lambda v: v.number)

    def roots(self) -> list[Version]:
        return self.children(None)

    def path_to_root(self, version_id: str) -> list[Version]:
        """The version, its parent, ... up to its root."""
        path = []
        version: Version | None = self.get(version_id)
        while version is not None:
            path.append(version)
            version = self.versions.get(version.parent_id) if version.parent_id else None
        return path

    def leaves(self) -> list[Version]:
        parents = {v.parent_id for v in self.versions.values()}
        return sorted((v for v in self.versions.values() if v.id not in parents), key=lambda v: v.number)

    def branches(self) -> list[list[Version]]:
        """Each root-to-leaf line of versions (oldest first), for the version strip; the first is the oldest line."""
        return [list(reversed(self.path_to_root(leaf.id))) for leaf in self.leaves()]

    def branch_of(self, version_id: str) -> int:
        """Index in branches() of the first line that holds this version."""
        for index, line in enumerate(self.branches()):
            if any(v.id == version_id for v in line):
                return index
        raise AttuneError(f"No version with id '{version_id}' in this session.")
