"""The light runtime's model: tokenizer (`tokenizers`), text encoder and VAE in ONNX Runtime, no torch.

`load_onnx_components(model)` reads the folder's configs and tokenizer.json, finds the graphs (shipped in
`<model>/onnx/` or in the export cache, engine/model/onnx_files.py) and opens the text encoder and VAE decoder sessions
(the VAE encoder on first inpaint). SDXL: both text encoders' penultimate states, concatenated, and the second one's
pooled embedding, as engine.model.loading does in PyTorch. It has the numpy interface of
engine.model.loading.Components (encode_text, encode_image, decode_latents), so the sampler does not know which runtime serves it.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import AttuneError
from engine.model.family import (SDXL_FAMILY, detect_family, force_zeros_for_empty_prompt, required_parts,
                                  scheduler_config)
from engine.model.loading import (SDXL_WEIGHT_COMPONENTS, WEIGHT_COMPONENTS, check_safetensors_only, resolve_model,
                                  second_encoder_ids, weights_hash)
from engine.model.onnx_files import (PENULTIMATE_OUTPUT, TEXT_MASK_INPUT, TORCH_MISSING, export_parts, find_export,
                                     read_manifest, torch_available)
from engine.protocols import TextTime


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
    text_time: TextTime | None = None  # SDXL's pooled embedding and size ids (engine.protocols); None: other families
    pad_id_2: int | None = None  # SDXL: the second tokenizer's padding token
    _sessions: dict = field(default_factory=dict, repr=False)
    _lock: Any = field(default_factory=threading.Lock, repr=False)
    _threads: int | None = field(default=None, repr=False)  # intra-op threads; None: engine.model.ort_sessions' default

    def session(self, part: str):
        """The ORT session of a side graph (text_encoder[_2], vae_encoder, vae_decoder), opened on first use."""
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
        """(1, seq, dim) float32; SDXL: both encoders' penultimate states, concatenated, the mask on both."""
        ids = np.asarray([input_ids], dtype=np.int64)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)[None]
        if self.text_time is None:
            return self._run_text("text_encoder", ids, mask, "last_hidden_state")
        second = np.asarray([self._second_ids(input_ids)], dtype=np.int64)
        return np.concatenate([self._run_text("text_encoder", ids, mask, PENULTIMATE_OUTPUT),
                               self._run_text("text_encoder_2", second, mask, PENULTIMATE_OUTPUT)], axis=-1)

    def encode_pooled(self, input_ids: list[int]) -> np.ndarray:
        """(1, pooled_dim) float32: SDXL's second encoder's pooled (projected) embedding of 77 ids."""
        if self.text_time is None:
            raise AttuneError("This model has no pooled text embedding (only SDXL has one).")
        ids = np.asarray([self._second_ids(input_ids)], dtype=np.int64)
        return self._run_text("text_encoder_2", ids, np.ones_like(ids), "text_embeds")

    def _second_ids(self, input_ids: list[int]) -> list[int]:
        return second_encoder_ids(input_ids, getattr(self.tokenizer, "eos_token_id", None), self.pad_id_2)

    def _run_text(self, part: str, ids: np.ndarray, mask: np.ndarray, output: str) -> np.ndarray:
        session = self.session(part)
        feeds = {"input_ids": ids}
        if TEXT_MASK_INPUT in {i.name for i in session.get_inputs()}:
            feeds[TEXT_MASK_INPUT] = mask
        elif not mask.all():  # a graph from before format 4: it cannot hide a token, and every token visible is exact
            raise AttuneError(f"This model's ONNX text encoder ({self.export_dir}) has no {TEXT_MASK_INPUT} input, "
                              "which weights below 1 with the `embed` method need: export it again "
                              "(python -m export.onnx).")
        return session.run([output], feeds)[0]

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


def locate_export(folder: Path, digest: str, sdxl: bool = False) -> Path:
    """The export to run, or AttuneError saying how to get one."""
    found = find_export(folder, digest, export_parts(sdxl))
    if found is not None:
        return found
    how = ("it is exported on first use with PyTorch" if torch_available()
           else f"exporting them needs PyTorch, and {TORCH_MISSING}")
    raise AttuneError(f"No ONNX graphs for the model in {folder} (weights {digest}): {how}.")


def load_onnx_components(model: str | Path | None = None, *, export_dir: str | Path | None = None,
                         device: str = "cpu") -> OnnxComponents:
    """The light runtime's components. `export_dir`: a given export folder (else shipped graphs or the cache)."""
    folder, model_id = resolve_model(model)
    family = detect_family(folder)  # SD3, FLUX...: refused there, in one line
    sdxl = family == SDXL_FAMILY
    missing = [p for p in required_parts(family) if not (folder / p).is_dir()]
    if missing:
        raise AttuneError(f"{folder} is not a diffusers {'SDXL' if sdxl else 'Stable Diffusion'} folder: missing "
                          f"{', '.join(missing)}/.")
    check_safetensors_only(folder, SDXL_WEIGHT_COMPONENTS if sdxl else WEIGHT_COMPONENTS)
    digest = weights_hash(folder)
    export = Path(export_dir) if export_dir is not None else locate_export(folder, digest, sdxl)
    manifest = read_manifest(export)
    if manifest.get("weights_hash") != digest:
        raise AttuneError(f"The ONNX export in {export} was made from other weights than {folder}.")
    if sdxl and "text_encoder_2" not in manifest.get("parts", []):
        raise AttuneError(f"The ONNX export in {export} has no text_encoder_2, which SDXL needs: export it again "
                          "(python -m export.onnx).")
    from engine.words.tokenizer import load_tokenizer, word_level_vocab

    tokenizer = load_tokenizer(folder / "tokenizer")
    unet_config = _read_json(folder / "unet" / "config.json")
    vae_config = _read_json(folder / "vae" / "config.json")
    text_config = _read_json(folder / "text_encoder" / "config.json")  # a folder without it is not a model
    text_time = pad_id_2 = None
    if sdxl:
        text_time, pad_id_2 = _sdxl_text_time(folder, tokenizer, text_config, force_zeros_for_empty_prompt(folder))
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
        text_time=text_time,
        pad_id_2=pad_id_2,
    )
    components.session("text_encoder")  # a damaged graph fails here, before any image
    if sdxl:
        components.session("text_encoder_2")
    components.session("vae_decoder")
    return components


def _sdxl_text_time(folder: Path, tokenizer, text_config: dict, force_zeros: bool) -> tuple[TextTime, int | None]:
    """SDXL's TextTime and its second tokenizer's pad id, from the folder's configs (as engine.model.loading reads
    them from the loaded modules). Attune tokenizes with the first tokenizer: the second must share its vocabulary."""
    from engine.words.tokenizer import load_tokenizer

    tokenizer_2 = load_tokenizer(folder / "tokenizer_2")
    if tokenizer_2.get_vocab() != tokenizer.get_vocab() or tokenizer_2.eos_token_id != tokenizer.eos_token_id:
        raise AttuneError(f"{folder / 'tokenizer_2'} has another vocabulary than {folder / 'tokenizer'}; Attune runs "
                          "SDXL folders whose two tokenizers differ only in padding.")
    second = _read_json(folder / "text_encoder_2" / "config.json")
    text_time = TextTime(int(second["projection_dim"]), (int(text_config["hidden_size"]), int(second["hidden_size"])),
                         force_zeros)
    pad = tokenizer_2.pad_token_id
    return text_time, int(pad) if pad is not None else None
