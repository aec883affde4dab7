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


def save_clip_tokenizer(folder: str | Path):
    """A tiny byte-level BPE CLIP tokenizer (hand-written vocab and merges, no download), saved as SD folders ship it."""
    from transformers import CLIPTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = ["m o", "mo o", "moo n</w>", "w o", "wo l", "wol f</w>", "s k", "sk y</w>"]
    for merge in merges:
        vocab["".join(merge.split())] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizerFast(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>")
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
