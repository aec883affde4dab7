"""Read-only views of a Studio's version tree for the UI: order, parents, children, branches, focus marks."""
from __future__ import annotations


def all_versions(studio) -> list:
    """Every version in creation order."""
    if studio is None:
        return []
    versions = studio.history.versions
    versions = list(versions.values()) if isinstance(versions, dict) else list(versions)
    return sorted(versions, key=lambda v: v.number)


def by_id(studio, version_id: str):
    for version in all_versions(studio):
        if version.id == version_id:
            return version
    return None


def label(version) -> str:
    return f"v{version.number}"


def children(versions: list) -> dict[str, list]:
    kids: dict[str, list] = {}
    for version in versions:
        if version.parent_id:
            kids.setdefault(version.parent_id, []).append(version)
    return kids


def branch_paths(versions: list) -> list[list]:
    """One root-to-leaf path per branch, so the strip can show where history forked."""
    ids = {v.id: v for v in versions}
    kids = children(versions)
    leaves = [v for v in versions if v.id not in kids]
    paths = []
    for leaf in leaves:
        path, node = [], leaf
        while node is not None:
            path.append(node)
            node = ids.get(node.parent_id) if node.parent_id else None
        paths.append(list(reversed(path)))
    return paths


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


def changed_parameters(versions: list, fields: tuple[str, ...]) -> list[dict]:
    """Rows of (parameter, value per version) for the fields whose values differ between the versions."""
    rows = []
    for field in fields:
        values = [getattr(v, field, None) for v in versions]
        shown = [_show(value) for value in values]
        if len(set(shown)) > 1:
            rows.append({"parameter": field, **{label(v): s for v, s in zip(versions, shown)}})
    return rows


def _show(value) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in sorted(value.items()))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
