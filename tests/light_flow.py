"""Run in a subprocess by tests/test_light.py: the whole light path (engine, Studio, log, app) on the built-in
model's shipped ONNX graphs, then report which heavy libraries got imported.

    python -m tests.light_flow OUT_DIR [--block]

--block makes `import torch` / diffusers / transformers fail (as in an install without them).
Prints one JSON line: versions made, file checks, the backend, and `heavy`: heavy modules in sys.modules.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HEAVY = ("torch", "diffusers", "transformers")
PROMPT = "a painting of a wolf sitting in front of the full moon, night sky"


def main(out: Path, block: bool) -> dict:
    if block:
        for name in HEAVY:
            sys.modules[name] = None  # `import torch` now raises ImportError, as without the package
    import numpy as np

    from engine.study.log import StudyLog
    from engine.pipeline.attune import Attune, GenerateParams
    from engine.study.studio import Studio

    engine = Attune(backend=os.environ.get("LIGHT_BACKEND", "auto"))
    log = StudyLog(out / "log.sqlite")
    studio = Studio(engine, log, out / "images", participant_id="light")
    v1 = studio.generate(GenerateParams(prompt=PROMPT, seed=7, steps=2))
    v2 = studio.reweight({"moon": 1.8}, "score")
    maps = studio.maps(v2)
    heat = maps.word_heatmap(studio.word_tokens(v2), "moon")
    mask = maps.mask_from_word(studio.word_tokens(v2), "moon")
    v3 = studio.inpaint(mask, "a crescent moon")
    written = log.export(out / "log.zip", "csv")
    parquet = log.export(out / "versions.parquet", "parquet", table="versions")

    from streamlit.testing.v1 import AppTest

    repo = Path(__file__).resolve().parent.parent
    at = AppTest.from_file(str(repo / "Home.py"), default_timeout=180)
    at.run()
    [example] = [b for b in at.button if b.label == "Try the example"]
    example.click().run()
    app_ok = not at.exception and not at.error and at.session_state["attune"].studio.current is not None
    pages_ok = {}
    for script in ("pages/1_Generate.py", "pages/2_Inspect_Attention.py", "pages/3_Refine.py", "pages/4_Compare.py"):
        at.switch_page(script).run()
        if script == "pages/1_Generate.py" and not at.exception:
            [generate] = [b for b in at.button if b.label == "Generate"]
            generate.click().run()
        pages_ok[script] = not at.exception and not at.error
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY and sys.modules[m] is not None)
    return {
        "kinds": [v.kind for v in (v1, v2, v3)],
        "backends": [v.backend for v in (v1, v2, v3)],
        "fallback": engine.fallback_reason,
        "images": all(Path(v.image_path).is_file() and Path(v.maps_path).is_file() for v in (v1, v2, v3)),
        "heat": [float(heat.min()), float(heat.max())],
        "mask_pixels": int(np.count_nonzero(mask)),
        "exports": [Path(p).name for p in written + parquet],
        "app_ok": bool(app_ok),
        "pages_ok": pages_ok,
        "app_versions": at.session_state["attune"].studio.current.number if app_ok else 0,
        "app_backend": at.session_state["attune"].studio.current.backend if app_ok else None,
        "heavy": loaded,
    }


if __name__ == "__main__":
    result = main(Path(sys.argv[1]), "--block" in sys.argv[2:])
    print("LIGHT_FLOW " + json.dumps(result))
