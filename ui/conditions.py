"""Study conditions: a researcher's TOML file of named feature switches (see study/conditions.example.toml)."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from engine import AttuneError

FEATURES = ("heatmaps", "sliders", "inpainting", "compare", "prompt_syntax", "word_cards", "explore", "suggest", "rating")


@dataclass(frozen=True)
class Condition:
    name: str
    description: str = ""
    heatmaps: bool = True
    sliders: bool = True
    inpainting: bool = True
    compare: bool = True
    prompt_syntax: bool = True
    word_cards: bool = True  # each prompt word a card: Delete, Replace, add a style keyword
    explore: bool = True  # a same-seed grid of alternatives for one word
    suggest: bool = True  # the prompt optimiser (when one is configured)
    rating: bool = False  # ask the participant to rate each version 1-5

    def enabled(self, feature: str) -> bool:
        return bool(getattr(self, feature))


ALL_ON = Condition(name="", description="All features on (no study condition).")


@dataclass(frozen=True)
class Conditions:
    by_name: dict[str, Condition]
    default: str = ""

    def get(self, name: str | None) -> Condition:
        """The named condition; no name gives the file's default (or all features on)."""
        name = (name or self.default or "").strip()
        if not name:
            return ALL_ON
        if name not in self.by_name:
            known = ", ".join(sorted(self.by_name)) or "none defined"
            raise AttuneError(f"Unknown study condition '{name}' (known: {known}).")
        return self.by_name[name]


def load_conditions(path: str | Path) -> Conditions:
    path = Path(path)
    if not path.exists():
        return Conditions(by_name={})
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise AttuneError(f"Conditions file {path.name} is not valid TOML: {error}") from None
    allowed = {f.name for f in fields(Condition)} - {"name"}
    by_name = {}
    for name, table in (data.get("conditions") or {}).items():
        unknown = set(table) - allowed
        if unknown:
            raise AttuneError(f"Condition '{name}' has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}.")
        by_name[name] = Condition(name=name, **{k: (str(v) if k == "description" else bool(v)) for k, v in table.items()})
    default = str(data.get("default", ""))
    if default and default not in by_name:
        raise AttuneError(f"Conditions file default '{default}' is not one of its conditions.")
    return Conditions(by_name=by_name, default=default)
