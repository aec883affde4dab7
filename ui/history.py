"""Display helpers over a Studio's version tree (engine.History): labels, focus marks, the Compare table."""
from __future__ import annotations


def all_versions(studio) -> list:
    """Every version in creation order."""
    return list(studio.history) if studio is not None else []


def by_id(studio, version_id: str | None):
    return studio.history.versions.get(version_id) if studio is not None and version_id else None


def label(version) -> str:
    return f"v{version.number}"


def focus_marks(version) -> list[str]:
    """'more focus: moon ×1.5' / 'less focus: sky ×0.5' for each adjusted word."""
    return weight_marks(version.weights)


def weight_marks(weights: dict | None) -> list[str]:
    marks = []
    for word, weight in sorted((weights or {}).items()):
        if weight > 1.0 + 1e-6:
            marks.append(f"more focus: {word} ×{weight:g}")
        elif weight < 1.0 - 1e-6:
            marks.append(f"less focus: {word} ×{weight:g}")
    return marks


def changed_parameters(versions: list) -> list[dict]:
    """Rows of (parameter, value per version) for what differs from the first version (Version.changed_fields),
    the kind of edit first."""
    reference = versions[0]
    fields = ["kind"] if len({v.kind for v in versions}) > 1 else []
    for version in versions[1:]:
        fields += [name for name in version.changed_fields(reference) if name not in fields]
    return [{"parameter": name, **{label(v): _show(getattr(v, name)) for v in versions}} for name in fields]


def _show(value) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in sorted(value.items()))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
