import json

import pytest

from engine.errors import AttuneError
from engine.study.versions import History, Version


def make(history, parent=None, **fields):
    return history.add(Version(parent_id=parent.id if parent else None, **fields))


def test_version_json_round_trip():
    v = Version(prompt="a wolf", seed=7, weights={"moon": 1.5}, timings={"total": 1.25},
                library_versions={"torch": "2.13.0"}, only_masked=True, mask_blur=4, unet_graph="0123456789abcdef")
    back = Version.from_json(v.to_json())
    assert back == v
    assert back.to_dict() == v.to_dict()


def test_from_dict_tolerates_missing_and_unknown_keys():
    v = Version.from_dict({"prompt": "moon", "seed": "12", "weights": '{"moon": 2}', "future_field": 1})
    assert v.prompt == "moon" and v.seed == 12 and v.weights == {"moon": 2.0}
    assert v.steps == Version().steps and len(v.id) == 32
    with pytest.raises(AttuneError, match="must be a JSON object"):
        Version.from_dict(["not", "a", "dict"])
    with pytest.raises(AttuneError, match="not valid JSON"):
        Version.from_json("{broken")


def test_changed_fields():
    a = Version(prompt="a wolf", seed=7)
    b = Version(prompt="a wolf", seed=7, weights={"wolf": 2.0}, kind="reweight")
    assert b.changed_fields(a) == {"weights": ({}, {"wolf": 2.0})}


def test_history_tree_restore_branches():
    h = History()
    v1 = make(h, prompt="one")
    v2 = make(h, h.current, prompt="two")
    v3 = make(h, h.current, prompt="three")
    assert [v.number for v in (v1, v2, v3)] == [1, 2, 3]
    assert h.current is v3
    assert h.restore(v2.id) is v2 and h.current is v2
    v4 = make(h, h.current, prompt="four")  # the next edit after a restore branches off v2
    assert v4.parent_id == v2.id and v4.number == 4
    assert [c.id for c in h.children(v2.id)] == [v3.id, v4.id]
    assert [v.id for v in h.path_to_root(v4.id)] == [v4.id, v2.id, v1.id]
    assert [[v.number for v in line] for line in h.branches()] == [[1, 2, 3], [1, 2, 4]]
    assert h.branch_of(v4.id) == 1 and h.branch_of(v1.id) == 0
    assert [v.number for v in h.leaves()] == [3, 4]
    assert h.roots() == [v1] and h.by_number(3) is v3
    assert [v.number for v in h] == [1, 2, 3, 4]


def test_history_bad_input():
    h = History()
    v1 = make(h)
    with pytest.raises(AttuneError, match="already in the history"):
        h.add(v1)
    with pytest.raises(AttuneError, match="which is not in the history"):
        h.add(Version(parent_id="nope"))
    with pytest.raises(AttuneError, match="No version with id 'zzz'"):
        h.restore("zzz")
    with pytest.raises(AttuneError, match="No version number 9"):
        h.by_number(9)
