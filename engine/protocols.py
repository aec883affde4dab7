"""The three seams of the engine, as Protocols (structural types: nothing has to inherit from them).

- `Components`: what the sampler and the engine read from a loaded model, whatever runs it: the PyTorch modules
  (engine.model.loading.Components), ONNX Runtime (engine.model.onnx_components.OnnxComponents), or a server
  (engine.remote.client.RemoteComponents, which holds the model's facts and encodes nothing here).
- `Runner`: one UNet call (engine.runners.torch, engine.runners.onnx, the batcher's stand-in).
- `Engine`: what the Studio, the app and the CLI call: the local engine (engine.pipeline.attune.Attune) and the
  client of a server (engine.remote.client.RemoteEngine). It replaces engine/engine_protocol.py (issue 19).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from engine.model.family import ModelDefaults
    from engine.pipeline.params import GenerateParams, InpaintParams, Result
    from engine.words.prompt import WordTokens

Array = Any  # a numpy array (the sampler's), or a torch tensor: each runner returns the kind it was given
Progress = Callable[[int, int], None] | None  # (steps done, steps in all)


@dataclass(frozen=True)
class TextTime:
    """SDXL's extra conditioning, as a model declares it (UNet `addition_embed_type: text_time`): the pooled embedding
    of the second text encoder (`pooled_dim` wide) and the size/crop ids. `force_zeros_for_empty_prompt`: an empty
    negative prompt conditions on zeros (diffusers' pipeline config; A1111 alike). `encoder_widths`: each text
    encoder's share of the concatenated states (A1111's emphasis rescales each share on its own)."""

    pooled_dim: int
    encoder_widths: tuple[int, ...]
    force_zeros_for_empty_prompt: bool = True


@dataclass
class AddedConditioning:
    """What an SDXL UNet call takes besides the text states (diffusers' added_cond_kwargs), one row per batch row."""

    text_embeds: Array  # (B, pooled_dim)
    time_ids: Array  # (B, 6): original size (h, w), crop top-left (y, x), target size (h, w)

    def as_kwargs(self) -> dict:
        return {"text_embeds": self.text_embeds, "time_ids": self.time_ids}


@runtime_checkable
class Components(Protocol):
    """A loaded model as the sampler sees it: numpy in, numpy out."""

    backend: str  # the runtime of the text encoder and the VAE: "torch" | "onnx" | "remote"
    device: str
    path: Path | None  # the model folder (None: not on this machine)
    model_id: str
    weights_hash: str
    tokenizer: Any  # a transformers tokenizer or engine.words.tokenizer.LightTokenizer (None when remote)
    scheduler_config: dict
    vae_scale_factor: int
    latent_channels: int
    unet_in_channels: int
    sample_size: int | tuple[int, int] | None  # the UNet's trained latent size (engine.model.preflight.max_side)
    known_words: set[str] | None  # the tokenizer's whole-word vocabulary (None: no word-level vocabulary)
    text_time: TextTime | None  # SDXL's pooled embedding and size ids; None: SD 1.x/2.x and the built-in model

    # (1, seq, dim); attention_mask: (seq,) ints, 0 hides a token from the others (None: all visible); SDXL: both
    # encoders, concatenated
    def encode_text(self, input_ids: list[int], attention_mask: np.ndarray | None = None) -> np.ndarray: ...

    def encode_pooled(self, input_ids: list[int]) -> np.ndarray: ...  # (1, pooled_dim) of 77 ids; SDXL only

    def encode_image(self, image: np.ndarray) -> np.ndarray: ...  # (1, 3, H, W) in [-1, 1] -> latents

    def decode_latents(self, latents: np.ndarray) -> np.ndarray: ...  # latents -> (1, 3, H, W) in [-1, 1]

    def release_memory(self) -> None: ...  # an image is done: hand working memory back (a no-op where none)


@runtime_checkable
class Runner(Protocol):
    """Runs one UNet call. Both backends use the diffusers processor names as map keys.

    `key_scale` / `value_scale`: (B, seq) tensors or None ('score' / 'prob' reweighting; None = no scaling).
    `capture_maps`: return head-averaged cross-attention maps of the last `cond_rows` batch rows.
    `added`: SDXL's pooled embedding and size ids (None for the other families).
    Returns (noise_pred, maps) with maps = {layer name: (cond_rows, H_l*W_l, seq)} ({} when capture is off).
    """

    name: str  # "torch" | "onnx"
    device: str
    in_channels: int

    def __call__(self, sample: Array, timestep: Array | float | int, encoder_hidden_states: Array, *,
                 key_scale: Array | None = None, value_scale: Array | None = None, capture_maps: bool = False,
                 cond_rows: int = 0, added: AddedConditioning | None = None) -> tuple[Array, dict[str, Array]]: ...

    def release_memory(self) -> None: ...  # an image is done (ONNX: shrink the arena; PyTorch: nothing)

    def close(self) -> None: ...


class Engine(Protocol):
    """Generate, reweight and inpaint; the facts the app shows. Thread-safe. Callers use these members directly: an
    engine that lacks one fails tests/test_remote.py::test_every_engine_has_the_whole_interface, never a silent
    fallback to another code path."""

    @property
    def components(self) -> Components:
        """Model facts: model_id, weights_hash, vae_scale_factor, unet_in_channels, sample_size, known_words."""

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
        """The reweight layout modes (engine.sampling.layout.LAYOUT_MODES) this engine runs; reweight refuses others."""

    @property
    def model_defaults(self) -> ModelDefaults:
        """What generate() uses for values left out (size, guidance, steps, scheduler), and where each came from."""

    @property
    def queue_depth(self) -> int: ...

    @property
    def busy(self) -> bool: ...

    def tokenize(self, prompt: str, syntax: str = "a1111") -> WordTokens: ...

    def generate(self, params: GenerateParams, progress: Progress = None) -> Result: ...

    def reweight(self, parent, weights: dict[str, float], weight_mode: str = "score", layout: str = "blend",
                 progress: Progress = None) -> Result:
        """An edit of `parent` (GenerateParams or engine.sampling.layout.RunSpec) with new weights, in `layout`; the
        result's info["layout"] is the layout that ran. A layout the engine cannot run is an AttuneError."""

    def inpaint(self, params: InpaintParams, progress: Progress = None) -> Result: ...

    def close(self) -> None: ...


def engine_members() -> list[str]:
    """The names an Engine has (for the test that checks each implementation)."""
    return sorted(name for name in vars(Engine) if not name.startswith("_"))
