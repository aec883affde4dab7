"""The Refine page's numbers (ui/data/refine_numbers.json) are those of bench/results/refine.json."""
from bench.refine_captions import OUT, render
from ui import refine_notes


def test_the_committed_caption_numbers_are_up_to_date():
    assert OUT.read_text() == render(), "run: python -m bench.refine_captions"


def test_the_captions_quote_them():
    data = refine_notes.results()
    assert data is not None and data["reweight"]
    key = next(iter(data["reweight"]))
    method, layout = key.split("/")
    assert "objects, held-out test captions" in refine_notes.measured(method, layout)
    assert refine_notes.measured("nonesuch", "blend") == "not measured by the benchmark"
