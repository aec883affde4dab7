"""The engine interface: what the Studio, the app and the CLI call on an engine, defined once.

The local engine (engine.pipeline.attune.Attune), the Ray Serve client (engine.remote.client.RemoteEngine) and the test doubles
all implement it. Callers use these members directly: an engine that lacks one is a type error and fails
tests/test_remote.py::test_every_engine_has_the_whole_interface, never a silent fallback to another code path.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

Progress = Callable[[int, int], None] | None


class Engine(Protocol):
    @property
    def components(self) -> Any:
        """Model facts: model_id, weights_hash, vae_scale_factor, unet_in_channels, known_words, unet.config."""

    @property
    def model_id(self) -> str: ...

    @property
    def weights_hash(self) -> str: ...

    @property
    def backend_name(self) -> str: ...

    @property
    def device(self) -> str: ...

    @property
    def layouts(self) -> tuple[str, ...]:
        """The reweight layout modes (engine.sampling.layout.LAYOUT_MODES) this engine runs; reweight refuses the others."""

    @property
    def queue_depth(self) -> int: ...

    @property
    def busy(self) -> bool: ...

    def tokenize(self, prompt: str, syntax: str = "a1111") -> Any: ...

    def generate(self, params: Any, progress: Progress = None) -> Any: ...

    def reweight(self, parent: Any, weights: dict[str, float], weight_mode: str = "score", layout: str = "blend",
                 progress: Progress = None) -> Any:
        """An edit of `parent` (GenerateParams or engine.sampling.layout.RunSpec) with new weights, in `layout`; the result's
        info["layout"] is the layout that ran. A layout the engine cannot run is an AttuneError."""

    def inpaint(self, params: Any, progress: Progress = None) -> Any: ...

    def close(self) -> None: ...


def engine_members() -> list[str]:
    """The names an Engine has (for the test that checks each implementation)."""
    return sorted(name for name in vars(Engine) if not name.startswith("_"))
