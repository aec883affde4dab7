"""`python -m engine ...` (see engine/cli.py and docs/cli.md): the CLI's entry, the one engine module that imports
`export` (to export a model's ONNX graphs on first use, a hook handed to the engine; engine.pipeline.backend)."""
import sys

from engine.cli import main


def export_on_first_use(components, progress=None):
    from export.onnx import ensure_exported

    return ensure_exported(components, progress=progress)


if __name__ == "__main__":
    sys.exit(main(export=export_on_first_use))
