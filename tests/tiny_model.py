"""Tiny random-weight diffusers folders built from configs (no downloads), for tests and benchmarks."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from train.tokenizer import save_word_tokenizer

TINY_WORDS = (
    "a painting of wolf sitting in front the full moon night sky , . misty forest house tree "
    "sun stars lake mountains clouds grass snow sand crescent highly detailed and with on at"
).split()


def tiny_unet(in_channels: int = 4) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def add_inpaint_unet(folder: str | Path, *, in_channels: int = 9, seed: int = 1) -> Path:
    """Give a tiny model folder a second, inpainting UNet (unet_inpaint/), as the built-in model ships one."""
    torch.manual_seed(seed)
    tiny_unet(in_channels).save_pretrained(Path(folder) / "unet_inpaint", safe_serialization=True)
    return Path(folder)


def build_tiny_model(folder: str | Path, *, in_channels: int = 4, seed: int = 0) -> Path:
    """Write a random-weight SD-style folder: word tokenizer, CLIP text encoder, UNet (4 or 9 channels), VAE."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = save_word_tokenizer(TINY_WORDS, folder / "tokenizer")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = tiny_unet(in_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    pipeline_class = "StableDiffusionInpaintPipeline" if in_channels == 9 else "StableDiffusionPipeline"
    index = {
        "_class_name": pipeline_class,
        "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def write_clip_vocab(folder: str | Path, merges: list[str]) -> tuple[str, str]:
    """vocab.json + merges.txt of a tiny byte-level BPE CLIP tokenizer: every byte, alone and word-final, plus the
    given merges (hand-written, no download). Returns their paths."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    for merge in merges:
        vocab["".join(merge.split())] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return str(folder / "vocab.json"), str(folder / "merges.txt")


def save_clip_tokenizer(folder: str | Path):
    """A tiny byte-level BPE CLIP tokenizer, saved as SD folders ship it."""
    from transformers import CLIPTokenizerFast

    merges = ["m o", "mo o", "moo n</w>", "w o", "wo l", "wol f</w>", "s k", "sk y</w>"]
    tokenizer = CLIPTokenizerFast(*write_clip_vocab(folder, merges), pad_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_sd_model(folder: str | Path, *, scheduler=None, seed: int = 0) -> Path:
    """A tiny random-weight folder shaped as SD 1.x ships it: CLIP BPE tokenizer, CLIP text encoder, UNet with
    sample_size 8, VAE factor 8 (so its size is 64 px), and `scheduler` (a diffusers scheduler; default DDIM)."""
    folder = build_tiny_model(folder, seed=seed)
    torch.manual_seed(seed + 1)
    tokenizer = save_clip_tokenizer(folder / "tokenizer")
    CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )).save_pretrained(folder / "text_encoder", safe_serialization=True)
    if scheduler is not None:
        for old in (folder / "scheduler").iterdir():
            old.unlink()
        scheduler.save_pretrained(folder / "scheduler")
        index = json.loads((folder / "model_index.json").read_text())
        index["scheduler"] = ["diffusers", type(scheduler).__name__]
        index["tokenizer"] = ["transformers", "CLIPTokenizer"]
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def tiny_sdxl_unet(in_channels: int = 4, *, cross_attention_dim: int = 64,
                   pooled_dim: int = 16) -> UNet2DConditionModel:
    """SDXL's UNet shape, tiny: no attention in the first block, attention at two resolutions, several transformer
    layers in the deepest blocks,
    linear projections, addition_embed_type text_time (6 size ids x 8 + the pooled embedding)."""
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=(1, 2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + pooled_dim,
        norm_num_groups=8,
    )


def build_sdxl_model(folder: str | Path, *, scheduler=None, in_channels: int = 4, seed: int = 0,
                     inpaint_unet: bool = False) -> Path:
    """A tiny random-weight folder shaped as SDXL ships it: two CLIP BPE tokenizers (the second pads with '!'),
    CLIPTextModel + CLIPTextModelWithProjection (2 layers: the penultimate state is a real layer), the SDXL-shaped UNet
    (in_channels 9: an SDXL inpainting folder), a VAE with force_upcast and SDXL's scaling factor, `scheduler`
    (default: Euler, as SDXL ships). inpaint_unet: also a 9-channel unet_inpaint/."""
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPTextModelWithProjection, CLIPTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizers = []
    for name, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        merges = ["m o", "mo o", "moo n</w>", "w o", "wo l", "wol f</w>", "s k", "sk y</w>"]
        tokenizers.append(CLIPTokenizerFast(*write_clip_vocab(folder / name, merges), pad_token=pad,
                                            model_max_length=77))
        tokenizers[-1].save_pretrained(folder / name)
    tokenizer, tokenizer_2 = tokenizers
    common = dict(vocab_size=len(tokenizer), intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    CLIPTextModel(CLIPTextConfig(hidden_size=32, pad_token_id=tokenizer.pad_token_id, **common)).save_pretrained(
        folder / "text_encoder", safe_serialization=True)
    CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=32, projection_dim=16, pad_token_id=tokenizer_2.pad_token_id,
                                               **common)).save_pretrained(folder / "text_encoder_2",
                                                                          safe_serialization=True)
    tiny_sdxl_unet(in_channels).save_pretrained(folder / "unet", safe_serialization=True)
    if inpaint_unet:
        tiny_sdxl_unet(9).save_pretrained(folder / "unet_inpaint", safe_serialization=True)
    AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16), latent_channels=4,
        layers_per_block=1, norm_num_groups=4, sample_size=64, scaling_factor=0.13025, force_upcast=True,
    ).save_pretrained(folder / "vae", safe_serialization=True)
    scheduler = scheduler or EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                    steps_offset=1, timestep_spacing="leading")
    scheduler.save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionXLInpaintPipeline" if in_channels == 9 else "StableDiffusionXLPipeline",
        "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "force_zeros_for_empty_prompt": True,
        "scheduler": ["diffusers", type(scheduler).__name__],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if in_channels == 9:
        index["requires_aesthetics_score"] = False
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


# ---- one diffusers folder -> one original-layout (LDM) .safetensors, as A1111 and Civitai users have them -----------
# The inverse of diffusers' loaders/single_file_utils.py (convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
# convert_ldm_clip_checkpoint), for the SD 1.x layout and any number of blocks and layers per block.
_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_VAE_ATTENTION = (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                  ("to_out.0.", "proj_out."))


def _unet_to_ldm(state: dict, config: dict) -> dict:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    per_block = config["layers_per_block"] + 1
    up_has_attention = ["CrossAttn" in t for t in config["up_block_types"]]
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if key in fixed:
            new = fixed[key]
        elif parts[0] in ("down_blocks", "up_blocks", "mid_block"):
            if parts[0] == "mid_block":
                kind, index, rest = parts[1], int(parts[2]), parts[3:]
                prefix = f"middle_block.{2 * index}" if kind == "resnets" else "middle_block.1"
            else:
                block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
                if parts[0] == "down_blocks":
                    first = per_block * block + 1
                    prefix = {"resnets": f"input_blocks.{first + index}.0",
                              "attentions": f"input_blocks.{first + index}.1",
                              "downsamplers": f"input_blocks.{per_block * (block + 1)}.0.op"}[kind]
                    if kind == "downsamplers":
                        rest = rest[1:]  # conv.weight -> weight
                else:
                    first = per_block * block
                    prefix = {"resnets": f"output_blocks.{first + index}.0",
                              "attentions": f"output_blocks.{first + index}.1",
                              "upsamplers": f"output_blocks.{first + per_block - 1}."
                                            f"{2 if up_has_attention[block] else 1}"}[kind]
            tail = ".".join(rest)
            if kind == "resnets":
                for diffusers_name, ldm_name in _RESNET:
                    tail = tail.replace(diffusers_name, ldm_name)
            new = f"{prefix}.{tail}"
        else:
            raise KeyError(f"no LDM name for UNet key {key}")
        out["model.diffusion_model." + new] = value
    return out


def _vae_to_ldm(state: dict, config: dict) -> dict:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    blocks = len(config["up_block_types"])
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if key in fixed:
            new = fixed[key]
        elif parts[1] == "mid_block":
            if parts[2] == "resnets":
                new = f"{parts[0]}.mid.block_{int(parts[3]) + 1}." + ".".join(parts[4:])
            else:
                tail = ".".join(parts[4:]) + "."
                for diffusers_name, ldm_name in _VAE_ATTENTION:
                    tail = tail.replace(diffusers_name, ldm_name)
                new = f"{parts[0]}.mid.attn_1.{tail[:-1]}"
                if value.ndim == 2:  # LDM's attention projections are 1x1 convolutions
                    value = value[:, :, None, None]
        elif parts[1] == "down_blocks":
            if parts[3] == "resnets":
                new = f"encoder.down.{parts[2]}.block.{parts[4]}." + ".".join(parts[5:])
            else:
                new = f"encoder.down.{parts[2]}.downsample." + ".".join(parts[5:])
        elif parts[1] == "up_blocks":
            level = blocks - 1 - int(parts[2])
            if parts[3] == "resnets":
                new = f"decoder.up.{level}.block.{parts[4]}." + ".".join(parts[5:])
            else:
                new = f"decoder.up.{level}.upsample." + ".".join(parts[5:])
        else:
            raise KeyError(f"no LDM name for VAE key {key}")
        out["first_stage_model." + new.replace("conv_shortcut", "nin_shortcut")] = value
    return out


def to_single_file(folder: str | Path, path: str | Path) -> Path:
    """Write a diffusers SD folder's UNet, VAE and text encoder as one original-layout .safetensors checkpoint."""
    from safetensors.torch import load_file, save_file

    folder, path = Path(folder), Path(path)
    state = {}
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    state.update(_unet_to_ldm(load_file(folder / "unet" / "diffusion_pytorch_model.safetensors"), unet_config))
    state.update(_vae_to_ldm(load_file(folder / "vae" / "diffusion_pytorch_model.safetensors"), vae_config))
    text = load_file(folder / "text_encoder" / "model.safetensors")
    state.update({"cond_stage_model.transformer." + ("" if k.startswith("text_model.") else "text_model.") + k: v
                  for k, v in text.items()})  # CLIPTextModel's names (its file may leave "text_model." out)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
