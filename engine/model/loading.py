"""Load a diffusers Stable Diffusion folder (built-in model, a user's SD 1.x/2.x or SDXL folder, or a hub id).

SDXL (engine.model.family): two text encoders (CLIPTextModel and CLIPTextModelWithProjection) whose penultimate hidden
states are concatenated, as diffusers' StableDiffusionXLPipeline does; the second one's pooled embedding is
`encode_pooled`. Each encoder sees its own tokenizer's padding: the second tokenizer pads with its own token, so its ids
are the first tokenizer's with the positions after each chunk's end-of-text set to that pad.

Safetensors only: pickle weights (.bin/.ckpt/.pt) can run arbitrary code when loaded, so a folder that has
nothing else is refused. The weights hash is computed once per file state and cached on disk and in memory.
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import AttuneError
from engine.model import head_layout
from engine.model.family import (ATTUNE_JSON, REQUIRED_PARTS, SDXL_FAMILY, detect_family, force_zeros_for_empty_prompt,
                                  read_attune_json, required_parts, scheduler_config)
from engine.protocols import TextTime

REPO_ROOT = Path(__file__).resolve().parents[2]
HASH_CACHE_FILE = ".attune_hash.json"
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
WEIGHT_COMPONENTS = ("text_encoder", "unet", "vae")
SDXL_WEIGHT_COMPONENTS = WEIGHT_COMPONENTS + ("text_encoder_2",)
INPAINT_UNET_FOLDER = "unet_inpaint"  # optional second UNet (9 input channels) that inpainting uses when present
HUB_ALLOW_PATTERNS = [
    "model_index.json",
    "scheduler/*.json",
    "tokenizer/*",
    "text_encoder/*.json",
    "text_encoder/*.safetensors",
    "tokenizer_2/*",
    "text_encoder_2/*.json",
    "text_encoder_2/*.safetensors",
    "unet/*.json",
    "unet/*.safetensors",
    "vae/*.json",
    "vae/*.safetensors",
]

_hash_lock = threading.Lock()
_hash_memo: dict[tuple, str] = {}


@dataclass
class Components:
    tokenizer: Any
    text_encoder: Any
    unet: Any
    vae: Any
    scheduler_config: dict
    model_id: str
    weights_hash: str
    unet_in_channels: int
    vae_scale_factor: int
    known_words: set[str] | None
    device: str = "cpu"
    dtype: Any = None  # torch.dtype of the modules (float32 unless asked otherwise)
    path: Path | None = None
    extra: dict = field(default_factory=dict)
    backend: str = "torch"  # which runtime the text encoder and VAE run in (engine/model/onnx_components.py: "onnx")
    inpaint_unet: Any = None  # the folder's unet_inpaint/ (9-channel) when it ships one, else None
    text_encoder_2: Any = None  # SDXL's second text encoder (CLIPTextModelWithProjection), else None
    pad_id_2: int | None = None  # SDXL: the second tokenizer's padding token
    text_time: TextTime | None = None  # SDXL's pooled embedding and size ids (engine.protocols)
    vae_dtype: Any = None  # the VAE's dtype: float32 where the config's force_upcast says fp16 would overflow

    @property
    def has_inpaint_unet(self) -> bool:
        return self.inpaint_unet is not None

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def sample_size(self):
        return self.unet.config.sample_size

    @property
    def vae_scaling_factor(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215) or 0.18215)

    # The backend-neutral interface the sampler uses: numpy in, numpy out (engine/model/onnx_components.py has the same).
    def encode_text(self, input_ids: list[int], attention_mask=None) -> np.ndarray:
        """(1, seq, dim) float32 text embeddings of one prompt's ids; attention_mask (seq,) of 0/1 hides tokens.
        SDXL: both encoders' penultimate hidden states, concatenated (1, seq, dim_1 + dim_2), the mask on both."""
        import torch

        with torch.no_grad():
            ids = torch.tensor([input_ids], dtype=torch.long, device=self.device)
            mask = None if attention_mask is None else torch.tensor(
                np.asarray(attention_mask, dtype=np.int64)[None], device=self.device)
            if self.text_encoder_2 is None:
                return self.text_encoder(ids, attention_mask=mask)[0].float().cpu().numpy()
            first = self.text_encoder(ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
            second = self.text_encoder_2(self._second_ids(input_ids), attention_mask=mask,
                                         output_hidden_states=True).hidden_states[-2]
            return torch.cat([first, second], dim=-1).float().cpu().numpy()

    def encode_pooled(self, input_ids: list[int]) -> np.ndarray:
        """(1, pooled_dim) float32: SDXL's second encoder's pooled (projected) embedding of 77 ids."""
        import torch

        if self.text_encoder_2 is None:
            raise AttuneError("This model has no pooled text embedding (only SDXL has one).")
        with torch.no_grad():
            return self.text_encoder_2(self._second_ids(input_ids)).text_embeds.float().cpu().numpy()

    def _second_ids(self, input_ids: list[int]):
        import torch

        ids = second_encoder_ids(input_ids, getattr(self.tokenizer, "eos_token_id", None), self.pad_id_2)
        return torch.tensor([ids], dtype=torch.long, device=self.device)

    def encode_image(self, image: np.ndarray) -> np.ndarray:
        """(1, 3, H, W) float32 in [-1, 1] -> VAE mean latents times the scaling factor."""
        import torch

        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
            x = x.to(self.device, self.vae_dtype or self.dtype)
            latents = self.vae.encode(x).latent_dist.mean * self.vae_scaling_factor
            return latents.float().cpu().numpy()

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        """Latents -> (1, 3, H, W) float32 image in [-1, 1] (before clamping)."""
        import torch

        with torch.no_grad():
            z = torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32))
            z = z.to(self.device, self.vae_dtype or self.dtype)
            return self.vae.decode(z / self.vae_scaling_factor, return_dict=False)[0].float().cpu().numpy()

    def release_memory(self) -> None:  # PyTorch's caching allocator keeps its blocks: nothing to hand back
        pass


def default_model_path() -> Path:
    """The built-in model's folder (it may not exist yet: train it with `python -m train.tiny_scenes`)."""
    return REPO_ROOT / "models" / "tiny-scenes"


def _safetensors_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.safetensors") if p.is_file())


def check_safetensors_only(folder: Path, parts: tuple[str, ...] = WEIGHT_COMPONENTS) -> dict[str, str | None]:
    """Each weight component must have safetensors weights. Returns {component: variant or None}."""
    variants: dict[str, str | None] = {}
    for part in parts:
        sub = folder / part
        st = sorted(p.name for p in sub.glob("*.safetensors")) if sub.is_dir() else []
        if st:
            plain = [n for n in st if n.count(".") == 1]  # model.safetensors / diffusion_pytorch_model.safetensors
            if plain:
                variants[part] = None
            else:  # e.g. diffusion_pytorch_model.fp16.safetensors only
                variants[part] = st[0].split(".")[-2]
            continue
        pickles = sorted(p.name for p in sub.iterdir() if p.suffix in PICKLE_SUFFIXES) if sub.is_dir() else []
        if pickles:
            raise AttuneError(
                f"Refusing to load {sub}: it has only pickle weights ({', '.join(pickles)}), which can run code when "
                "loaded. Convert it to safetensors (e.g. with diffusers' convert scripts) and try again."
            )
        raise AttuneError(f"{sub} has no weights: expected a *.safetensors file in a diffusers folder.")
    return variants


def apply_head_layout(unet, folder: str | Path) -> list[str]:
    """The folder's attune.json "self_attention_heads", when it names one, on its text-to-image UNet (in place)."""
    heads = read_attune_json(folder).get(head_layout.KEY)
    return head_layout.apply(unet, heads, str(Path(folder) / ATTUNE_JSON)) if heads else []


def weights_hash(folder: str | Path) -> str:
    """sha256 over the folder's safetensors files (relative names + bytes), first 16 hex chars; with attune.json's
    self-attention head layout when it names one (same weights, another function: other images, other graphs).

    Cached in memory and on disk in `<folder>/.attune_hash.json`, keyed by each file's size and mtime, so
    the weights are read only once per change.
    """
    folder = Path(folder).resolve()
    files = _safetensors_files(folder)
    if not files:
        raise AttuneError(f"{folder} has no .safetensors weights to hash.")
    layout = read_attune_json(folder).get(head_layout.KEY)
    layout_item = [head_layout.KEY, sorted(layout.items())] if layout else None
    key_items = [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    if layout_item:
        key_items.append(layout_item)
    key = json.dumps(key_items)
    memo_key = (str(folder), key)
    with _hash_lock:
        if memo_key in _hash_memo:
            return _hash_memo[memo_key]
        cache_path = folder / HASH_CACHE_FILE
        try:
            cached = json.loads(cache_path.read_text())
            if cached.get("key") == key and isinstance(cached.get("hash"), str):
                _hash_memo[memo_key] = cached["hash"]
                return cached["hash"]
        except (OSError, ValueError):
            pass
        h = hashlib.sha256()
        for p in files:
            h.update(str(p.relative_to(folder)).encode() + b"\0")
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        if layout_item:
            h.update(json.dumps(layout_item).encode())
        digest = h.hexdigest()[:16]
        try:
            tmp = cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"key": key, "hash": digest}))
            tmp.replace(cache_path)
        except OSError:  # read-only folder (hub cache, packaged model): memory cache only
            pass
        _hash_memo[memo_key] = digest
        return digest


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "~")) and "\\" not in s


def resolve_model(model: str | Path | None) -> tuple[Path, str]:
    """Return (local folder, model id as given). Hub ids are fetched (safetensors files only) via the hub cache."""
    if model is None or str(model).strip() == "":
        path = default_model_path()
        if not (path / "model_index.json").exists() and not (path / "unet").is_dir():
            raise AttuneError(
                f"The built-in model is not at {path} yet: train it with `python -m train.tiny_scenes`, "
                "or pass a diffusers folder with --model."
            )
        return path, "tiny-scenes"
    model_id = str(model)
    path = Path(model_id).expanduser()
    if path.exists():
        if not path.is_dir():  # a single-file checkpoint: its converted diffusers folder (engine.model.single_file)
            from engine.model.single_file import resolve

            return resolve(path), model_id
        return path, model_id
    if path.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES):
        raise AttuneError(f"Checkpoint file not found: {model_id}")
    if not _looks_like_hub_id(model_id):
        raise AttuneError(f"Model folder not found: {model_id}")
    return _download_hub(model_id), model_id


def _download_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise AttuneError("Loading a hub id needs huggingface_hub; pass a local folder instead.") from e
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_ALLOW_PATTERNS))
    except Exception as first:  # offline, unknown repo, gated: try the local cache before giving up
        try:
            return Path(snapshot_download(repo_id, allow_patterns=HUB_ALLOW_PATTERNS, local_files_only=True))
        except Exception:
            raise AttuneError(
                f"'{repo_id}' is not a local folder, and it could not be fetched from the Hugging Face hub nor found "
                f"in the hub cache ({type(first).__name__}). Check the path, the hub id and the network."
            ) from None


def _word_level_vocab(tokenizer) -> set[str] | None:
    from engine.words.tokenizer import word_level_vocab

    return word_level_vocab(tokenizer)


def _load_tokenizer(folder: Path):
    """tokenizer.json through the `tokenizers` library (the same ids as transformers' fast tokenizer), else
    transformers' AutoTokenizer."""
    from engine.words.tokenizer import load_tokenizer

    return load_tokenizer(folder / "tokenizer")


def require_torch(what: str) -> None:
    """AttuneError (one line) when the PyTorch stack is missing."""
    from engine.model.onnx_files import TORCH_MISSING, torch_available

    if not torch_available():
        raise AttuneError(f"{what} needs PyTorch, diffusers and transformers: {TORCH_MISSING}.")


def second_encoder_ids(input_ids: list[int], eos: int | None, pad_2: int | None) -> list[int]:
    """SDXL's second tokenizer's ids: the same tokens, its own padding after each 77-chunk's first end-of-text."""
    ids = list(input_ids)
    if pad_2 is not None and eos is not None:
        for start in range(0, len(ids), 77):
            chunk = ids[start : start + 77]
            if eos in chunk:
                end = start + chunk.index(eos) + 1
                ids[end : start + len(chunk)] = [pad_2] * (start + len(chunk) - end)
    return ids


def load_components(model: str | Path | None = None, device: str = "cpu", dtype=None) -> Components:
    """Load tokenizer, text encoder, UNet and VAE (safetensors only) plus the scheduler config (PyTorch)."""
    require_torch("Loading the model in PyTorch")
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    dtype = torch.float32 if dtype is None else dtype

    folder, model_id = resolve_model(model)
    family = detect_family(folder)  # SD3, FLUX, video...: refused here, in one line
    sdxl = family == SDXL_FAMILY
    missing = [p for p in required_parts(family) if not (folder / p).is_dir()]
    if missing:
        raise AttuneError(f"{folder} is not a diffusers {'SDXL' if sdxl else 'Stable Diffusion'} folder: missing "
                          f"{', '.join(missing)}/.")
    variants = check_safetensors_only(folder, SDXL_WEIGHT_COMPONENTS if sdxl else WEIGHT_COMPONENTS)
    text_encoder_2 = pad_id_2 = text_time = None
    try:
        scheduler_config = _read_scheduler_config(folder)
        tokenizer = _load_tokenizer(folder)
        text_encoder = CLIPTextModel.from_pretrained(
            str(folder / "text_encoder"), use_safetensors=True, variant=variants["text_encoder"], torch_dtype=dtype
        )
        if sdxl:
            text_encoder_2, pad_id_2 = _load_second_encoder(folder, tokenizer, variants["text_encoder_2"], dtype)
            text_time = TextTime(int(text_encoder_2.config.projection_dim),
                                 (int(text_encoder.config.hidden_size), int(text_encoder_2.config.hidden_size)),
                                 force_zeros_for_empty_prompt(folder))
        unet = UNet2DConditionModel.from_pretrained(
            str(folder), subfolder="unet", use_safetensors=True, variant=variants["unet"], torch_dtype=dtype
        )
        apply_head_layout(unet, folder)
        vae = AutoencoderKL.from_pretrained(
            str(folder), subfolder="vae", use_safetensors=True, variant=variants["vae"], torch_dtype=dtype
        )
        if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):  # as diffusers: fp16 overflows
            vae = vae.to(torch.float32)
        inpaint_unet = _load_inpaint_unet(folder, dtype, int(unet.config.cross_attention_dim))
    except AttuneError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise AttuneError(f"Could not load the model in {folder}: {type(e).__name__}: {first}") from e
    modules = (text_encoder, unet, vae) + tuple(m for m in (inpaint_unet, text_encoder_2) if m is not None)
    for m in modules:
        m.to(device)
        m.eval()
        m.requires_grad_(False)
    return Components(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        vae=vae,
        scheduler_config=scheduler_config,
        model_id=model_id,
        weights_hash=weights_hash(folder),
        unet_in_channels=int(unet.config.in_channels),
        vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1),
        known_words=_word_level_vocab(tokenizer),
        device=str(device),
        dtype=dtype,
        path=folder,
        inpaint_unet=inpaint_unet,
        text_encoder_2=text_encoder_2,
        pad_id_2=pad_id_2,
        text_time=text_time,
        vae_dtype=next(vae.parameters()).dtype,
    )


def _load_second_encoder(folder: Path, tokenizer, variant: str | None, dtype) -> tuple[Any, int | None]:
    """SDXL's CLIPTextModelWithProjection and its tokenizer's pad id. Attune tokenizes once, with the first
    tokenizer: the second must have the same vocabulary (SDXL's two do; they differ only in padding)."""
    from transformers import CLIPTextModelWithProjection

    from engine.words.tokenizer import load_tokenizer

    tokenizer_2 = load_tokenizer(folder / "tokenizer_2")
    if tokenizer_2.get_vocab() != tokenizer.get_vocab() or tokenizer_2.eos_token_id != tokenizer.eos_token_id:
        raise AttuneError(f"{folder / 'tokenizer_2'} has another vocabulary than {folder / 'tokenizer'}; Attune runs "
                          "SDXL folders whose two tokenizers differ only in padding.")
    encoder = CLIPTextModelWithProjection.from_pretrained(str(folder / "text_encoder_2"), use_safetensors=True,
                                                          variant=variant, torch_dtype=dtype)
    pad = tokenizer_2.pad_token_id
    return encoder, int(pad) if pad is not None else None


def _load_inpaint_unet(folder: Path, dtype, cross_attention_dim: int):
    """The folder's optional 9-channel inpainting UNet (unet_inpaint/, safetensors only), or None when absent."""
    from diffusers import UNet2DConditionModel

    sub = folder / INPAINT_UNET_FOLDER
    if not sub.is_dir():
        return None
    names = sorted(p.name for p in sub.glob("*.safetensors"))
    if not names:
        raise AttuneError(f"{sub} has no *.safetensors weights (pickle weights are refused); remove the folder or "
                          "convert it.")
    plain = [n for n in names if n.count(".") == 1]
    unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder=INPAINT_UNET_FOLDER, use_safetensors=True,
                                                variant=None if plain else names[0].split(".")[-2], torch_dtype=dtype)
    if int(unet.config.in_channels) != 9 or int(unet.config.cross_attention_dim) != cross_attention_dim:
        raise AttuneError(f"{sub} must be a 9-channel inpainting UNet for this model's text encoder (it has "
                          f"{unet.config.in_channels} input channels, cross-attention width "
                          f"{unet.config.cross_attention_dim}; the text encoder's is {cross_attention_dim}).")
    return unet


def _read_scheduler_config(folder: Path) -> dict:
    return scheduler_config(folder)  # with attune.json's timestep spacing when it sets one
