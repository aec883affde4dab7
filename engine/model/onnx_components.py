"""The light runtime's model: tokenizer (`tokenizers`), text encoder and VAE in ONNX Runtime, no torch.

`load_onnx_components(model)` reads the folder's configs and tokenizer.json, finds the graphs (shipped in
`<model>/onnx/` or in the export cache, engine/model/onnx_files.py) and opens the text encoder and VAE decoder sessions
(the VAE encoder on first inpaint). It has the numpy interface of engine.model.loading.Components (encode_text,
encode_image, decode_latents), so the sampler does not know which runtime serves it.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import AttuneError
from engine.model.family import SDXL_FAMILY, detect_family, scheduler_config
from engine.model.loading import REQUIRED_PARTS, check_safetensors_only, resolve_model, weights_hash
from engine.model.onnx_files import PARTS, TEXT_MASK_INPUT, TORCH_MISSING, find_export, read_manifest, torch_available


SDXL_NO_ONNX = "SDXL runs on the PyTorch backend: its ONNX export is not built yet."


@dataclass
class OnnxComponents:
    tokenizer: Any
    scheduler_config: dict
    model_id: str
    weights_hash: str
    unet_in_channels: int
    vae_scale_factor: int
    known_words: set[str] | None
    sample_size: int | tuple[int, int] | None  # the UNet's trained latent size (its config)
    latent_channels: int
    vae_scaling_factor: float
    export_dir: Path
    manifest: dict
    device: str = "cpu"
    dtype: Any = None
    path: Path | None = None
    extra: dict = field(default_factory=dict)
    backend: str = "onnx"
    text_time: None = None  # SDXL has no ONNX export yet (load_onnx_components refuses it)
    _sessions: dict = field(default_factory=dict, repr=False)
    _lock: Any = field(default_factory=threading.Lock, repr=False)
    _threads: int | None = field(default=None, repr=False)  # intra-op threads; None: engine.model.ort_sessions' default

    def session(self, part: str):
        """The ORT session of a side graph (text_encoder, vae_encoder, vae_decoder), opened on first use."""
        with self._lock:
            if part not in self._sessions:
                from engine.model.ort_sessions import open_session

                self._sessions[part] = open_session(self.export_dir / part / "model.onnx", device=self.device,
                                                    threads=self._threads)
            return self._sessions[part]

    def set_threads(self, threads: int) -> None:
        """Intra-op threads of the side graphs from now on (a batched engine runs several requests' decodes at
        once: one thread each spends ~15% less CPU than two). The open sessions are made again; same bits."""
        with self._lock:
            self._threads = max(1, int(threads))
            opened = list(self._sessions)
            self._sessions.clear()
        for part in opened:
            self.session(part)

    def encode_text(self, input_ids: list[int], attention_mask: np.ndarray | None = None) -> np.ndarray:
        ids = np.asarray([input_ids], dtype=np.int64)
        session = self.session("text_encoder")
        feeds = {"input_ids": ids}
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)[None]
        if TEXT_MASK_INPUT in {i.name for i in session.get_inputs()}:
            feeds[TEXT_MASK_INPUT] = mask
        elif not mask.all():  # a graph from before format 4: it cannot hide a token, and every token visible is exact
            raise AttuneError(f"This model's ONNX text encoder ({self.export_dir}) has no {TEXT_MASK_INPUT} input, "
                              "which weights below 1 with the `embed` method need: export it again "
                              "(python -m export.onnx).")
        return session.run(["last_hidden_state"], feeds)[0]

    def encode_pooled(self, input_ids: list[int]) -> np.ndarray:
        raise AttuneError(SDXL_NO_ONNX)

    def encode_image(self, image: np.ndarray) -> np.ndarray:
        params = self.session("vae_encoder").run(None, {"sample": np.ascontiguousarray(image, dtype=np.float32)})[0]
        mean = params[:, : params.shape[1] // 2]
        return (mean * np.float32(self.vae_scaling_factor)).astype(np.float32)

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        z = (np.asarray(latents, dtype=np.float32) / np.float32(self.vae_scaling_factor)).astype(np.float32)
        return self.session("vae_decoder").run(None, {"latent_sample": z})[0]

    def release_memory(self) -> None:
        """Shrink the side graphs' arenas (the VAE decoder's working set is the largest of them)."""
        from engine.model.ort_sessions import shrink_session

        for session in list(self._sessions.values()):
            shrink_session(session)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AttuneError(f"Could not read {path}: {e}") from None


def locate_export(folder: Path, digest: str) -> Path:
    """The export to run, or AttuneError saying how to get one."""
    found = find_export(folder, digest, PARTS)
    if found is not None:
        return found
    how = ("it is exported on first use with PyTorch" if torch_available()
           else f"exporting them needs PyTorch, and {TORCH_MISSING}")
    raise AttuneError(f"No ONNX graphs for the model in {folder} (weights {digest}): {how}.")


def load_onnx_components(model: str | Path | None = None, *, export_dir: str | Path | None = None,
                         device: str = "cpu") -> OnnxComponents:
    """The light runtime's components. `export_dir`: a given export folder (else shipped graphs or the cache)."""
    folder, model_id = resolve_model(model)
    if detect_family(folder) == SDXL_FAMILY:  # SD3, FLUX...: refused there, in one line
        raise AttuneError(SDXL_NO_ONNX)
    missing = [p for p in REQUIRED_PARTS if not (folder / p).is_dir()]
    if missing:
        raise AttuneError(f"{folder} is not a diffusers Stable Diffusion folder: missing {', '.join(missing)}/.")
    check_safetensors_only(folder)
    digest = weights_hash(folder)
    export = Path(export_dir) if export_dir is not None else locate_export(folder, digest)
    manifest = read_manifest(export)
    if manifest.get("weights_hash") != digest:
        raise AttuneError(f"The ONNX export in {export} was made from other weights than {folder}.")
    from engine.words.tokenizer import load_tokenizer, word_level_vocab

    tokenizer = load_tokenizer(folder / "tokenizer")
    unet_config = _read_json(folder / "unet" / "config.json")
    vae_config = _read_json(folder / "vae" / "config.json")
    _read_json(folder / "text_encoder" / "config.json")  # a folder without it is not a model (one-line error)
    components = OnnxComponents(
        tokenizer=tokenizer,
        scheduler_config=scheduler_config(folder),  # with attune.json's timestep spacing when it sets one
        model_id=model_id,
        weights_hash=digest,
        unet_in_channels=int(unet_config.get("in_channels", 4)),
        vae_scale_factor=2 ** (len(vae_config.get("block_out_channels", [0] * 4)) - 1),
        known_words=word_level_vocab(tokenizer),
        sample_size=unet_config.get("sample_size"),
        latent_channels=int(vae_config.get("latent_channels", 4)),
        vae_scaling_factor=float(vae_config.get("scaling_factor", 0.18215) or 0.18215),
        export_dir=export,
        manifest=manifest,
        device=str(device),
        path=folder,
    )
    components.session("text_encoder")  # a damaged graph fails here, before any image
    components.session("vae_decoder")
    return components
