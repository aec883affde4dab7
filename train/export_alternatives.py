"""Write engine/words/data/alternatives.json: the scene grammar's word groups, so the engine can offer alternatives for a
word without importing train/ (which needs scipy and the renderer) at run time.

    python -m train.export_alternatives          # rewrite the file
    python -m train.export_alternatives --check  # exit 1 if the file is out of date

tests/test_alternatives.py checks that the committed file matches this grammar.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from train import world

OUT = Path(__file__).resolve().parent.parent / "engine" / "words" / "data" / "alternatives.json"
ARTICLES = {"a", "an", "the"}


def _grounded(phrase: str) -> list[str]:
    return [w[1:] for w in phrase.split() if w.startswith("*")]


def object_words() -> dict[str, dict[str, list[str]]]:
    """Per object: its nouns (the last grounded word of each phrase) and qualifiers (the other grounded words)."""
    found = {}
    for name, phrases in world.PHRASES.items():
        nouns, qualifiers = [], []
        for phrase in phrases:
            grounded = _grounded(phrase)
            nouns.append(grounded[-1])
            qualifiers.extend(grounded[:-1])
        found[name] = {"nouns": sorted(set(nouns)), "qualifiers": sorted(set(qualifiers))}
    return found


def synonyms() -> dict[str, list[str]]:
    """Words that name the same object (house: cottage) or qualify it the same way (dusk: evening)."""
    result: dict[str, set[str]] = {}
    for words in object_words().values():
        for kind in ("nouns", "qualifiers"):
            for word in words[kind]:
                result.setdefault(word, set()).update(w for w in words[kind] if w != word)
    return {word: sorted(others) for word, others in sorted(result.items()) if others}


def describing_words() -> list[str]:
    """Words in object phrases that are not the object itself (bright, red, lone...)."""
    words = set()
    for phrases in world.PHRASES.values():
        for phrase in phrases:
            words.update(w for w in phrase.split() if not w.startswith("*") and w not in ARTICLES)
    return sorted(words)


def groups() -> dict[str, list[str]]:
    """Sibling groups: words of the same kind in the grammar (moon: sun, stars, clouds)."""
    moon_phases = [name.split()[0] for name in world.PHRASES if name.endswith(" moon")]
    return {
        "sky object": list(world.SKY_OBJECTS),
        "ground object": list(world.GROUND_OBJECTS),
        "horizon": [name for name in world.BANDS if " " not in name],
        "sky kind": list(world.SKY_KINDS),
        "ground": list(world.GROUND_KINDS),
        "moon phase": moon_phases,
        "picture kind": sorted({prefix.split()[-2] for prefix in world.PREFIXES if prefix}),
        "relation": [r for r in world.RELATIONS if " " not in r],
        "describing word": describing_words(),
    }


def word_groups() -> dict:
    return {
        "source": "train/world.py (python -m train.export_alternatives)",
        "synonyms": synonyms(),
        "groups": groups(),
        # groups whose words can stand in for each other as "different" alternatives (moon -> wolf, lake)
        "families": [["sky object", "ground object", "horizon", "ground"]],
    }


def render() -> str:
    return json.dumps(word_groups(), indent=1, sort_keys=True) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the file is up to date")
    args = parser.parse_args(argv)
    if args.check:
        if not OUT.exists() or OUT.read_text() != render():
            print(f"{OUT} is out of date: run python -m train.export_alternatives", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(OUT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
