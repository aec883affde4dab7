"""Train the built-in tiny-scenes model: `python -m train.tiny_scenes --out models/tiny-scenes`.

One file, nanoGPT style: the config is the plain values below (a preset or a flag overrides them).
Stages: render the scene world -> train the VAE -> cache latents -> train UNet + text encoder on the latents,
with caption dropout (for classifier-free guidance) and a TokenCompose-style grounding loss on the cross-attention
maps of object words (train/grounding.py). Progress is printed; the run stops at --time-limit and saves; a rerun
with the same --work folder resumes; CUDA is used when present.
--distill-from trains the UNet to answer as a teacher UNet does (also under score/prob reweights), for a new layout.
--inpaint trains a 9-channel inpainting UNet (noisy latents + mask + masked-image latents, the SD-inpainting order)
from --init-from's UNet and writes it to <out>/unet_inpaint; the text encoder and VAE stay as they are.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tarfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# ---- config (plain values; these trained the committed weights on an H200) -----------------------------
n_images = 150_000  # rendered training scenes
render_workers = os.cpu_count() or 1
# VAE: 128 px -> 16x16x4
vae_channels = (32, 64, 96, 96)
vae_batch = 128
vae_lr = 5e-4
vae_max_steps = 3000
vae_time_share = 0.25  # share of the time limit the VAE may use
vae_images = 60_000  # images the VAE trains on
kl_weight = 1e-6
# UNet + text encoder
unet_channels = (64, 128, 160)
unet_layers = 1
text_dim = 128
text_layers = 1
batch = 512
lr = 6e-4
warmup_steps = 300
max_steps = 100_000
caption_dropout = 0.1
grounding = True
token_weight = 0.1  # TokenCompose token term
pixel_weight = 0.05  # TokenCompose pixel term
ema_decay = 0.999
# attention heads per block (diffusers' attention_head_dim acts as the head count): 64/2, 128/4, 160/5 = 32-wide
# heads. The v1 weights trained with 32 (32 heads of width 2-5, slow); q/k/v shapes do not depend on it.
unet_heads = (2, 4, 5)
train_text_encoder = True  # False: fine-tune the UNet only (the text encoder is shared with the inpainting UNet)
wolf_oversample = 1.0  # sampling weight of scenes with a wolf, the weakest object (1 = uniform)
wolf_grounding = 1.0  # weight of the wolf's words in the grounding loss
moon_inpaint_oversample = 1.0  # --inpaint: sampling weight of the examples that ask for the moon by its phrase
# alone (a mask around the moon, the caption "the full moon"), the weakest inpainting target (1 = uniform)
threads = 0  # torch CPU threads (0 = torch's default)
# --distill-from TEACHER: the UNet learns the teacher's noise prediction instead of the noise (e.g. the committed
# weights into another head layout), with the teacher's reweighting: on this share of the rows, object tokens get
# random key scales (`score`) or value scales (`prob`), the same in teacher and student; half of them are the
# scales the app's sliders give (engine/words/weights.py), the rest log-uniform in the range
distill_reweight_share = 0.5
distill_slider_scales = (0.0, 0.2, 0.4, 0.75, 0.8, 1.5, 2.0)
distill_scale_range = (0.25, 4.0)
distill_map_weight = 0.0  # > 0: also match the teacher's head-averaged cross-attention maps (KL per pixel)
# --self-attention-heads BLOCK=N: the student's self-attention in those blocks runs with N heads (attune.json
# "self_attention_heads", engine/model/head_layout.py); written to the saved folder's attune.json
self_attention_heads: dict = {}
# inpainting UNet (--inpaint): what the masks and captions of the training examples are
inpaint_full_share = 0.1  # whole-image masks (plain text-to-image)
inpaint_object_share = 0.6  # a box around one object (or its dilated shape); the rest: random boxes and strokes
inpaint_phrase_share = 0.6  # of the object masks: the caption is the object's phrase alone, as an app user types it
inpaint_crop_share = 0.7  # small masks: work on the enlarged crop the engine's auto_crop makes (engine/sampling/loop.py)
# run
time_limit = 2.5 * 3600  # seconds, whole run
log_every = 50
save_every = 120.0  # seconds between checkpoints
seed = 0

PRESETS = {
    # a 2-step smoke run: tiny data and models, finishes in seconds on a CPU
    "smoke": dict(n_images=48, render_workers=1, vae_channels=(8, 8, 16, 16), vae_batch=8, vae_max_steps=2,
                  vae_images=48, unet_channels=(32, 32, 32), text_dim=32, batch=8, max_steps=2, warmup_steps=1,
                  log_every=1, save_every=1e9),
    # CPU-only machines (picked automatically when no GPU and no preset): less data in memory, smaller batches
    "cpu": dict(n_images=30_000, render_workers=2, vae_batch=32, vae_images=30_000, batch=64, log_every=20,
                save_every=600.0),
    # a CPU rehearsal of the GPU run: small but complete
    "rehearsal": dict(n_images=512, render_workers=2, vae_batch=16, vae_max_steps=20, vae_images=512,
                      batch=16, max_steps=20, warmup_steps=5, log_every=5),
}
CONFIG_KEYS = [k for k, v in dict(globals()).items() if not k.startswith("_") and isinstance(v, (int, float, tuple, bool))]

TOKENS = 77
MAX_OBJECTS = 5  # up to 3 foreground objects (stars count as one), sky, ground


def cfg() -> dict:
    return {k: globals()[k] for k in CONFIG_KEYS}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- data -------------------------------------------------------------------------------------------------
_TOKENIZER = None


def _encode_caption(caption: str, words: list[str], refs: dict[str, list[int]], objects: list[str]):
    """Token ids (padded to TOKENS) and token -> index into `objects` (-1: not grounded)."""
    ids = np.asarray(_TOKENIZER(caption, padding="max_length", max_length=TOKENS, truncation=True)["input_ids"])
    token_object = np.full(TOKENS, -1, np.int8)
    if len(_TOKENIZER(caption)["input_ids"]) == len(words) + 2:  # one token per word: positions line up
        for name, positions in refs.items():
            for p in positions:
                if name in objects and p + 1 < TOKENS:
                    token_object[p + 1] = objects.index(name)  # +1: BOS
    return ids, token_object


def inpaint_example(scene, rng) -> tuple[np.ndarray, str, list[str], dict[str, list[int]]]:
    """(mask, caption, caption words, word positions per object) of one inpainting example: a box around an object
    (as the app's rectangle tool draws it) or its dilated shape, with its phrase alone or the whole caption; random
    boxes and strokes with the whole caption; or the whole image."""
    from scipy.ndimage import binary_dilation

    from train.world import FOREGROUND, PHRASES, SIZE

    objects = [o for o in list(scene.words)[:MAX_OBJECTS] if o in FOREGROUND]
    whole = (scene.caption, scene.caption_words, scene.words)
    mask = np.zeros((SIZE, SIZE), bool)
    r = rng.random()
    if r < inpaint_full_share:
        return ~mask, *whole
    if objects and r < inpaint_full_share + inpaint_object_share:
        name = objects[rng.integers(len(objects))]
        if rng.random() < 0.6:
            ys, xs = np.nonzero(scene.masks[name])
            pad = rng.integers(2, 12, size=4)
            mask[max(0, ys.min() - pad[0]):ys.max() + 1 + pad[1], max(0, xs.min() - pad[2]):xs.max() + 1 + pad[3]] = True
        else:
            mask = binary_dilation(scene.masks[name], iterations=int(rng.integers(1, 5)))
        if rng.random() >= inpaint_phrase_share:
            return mask, *whole
        key = f"{scene.attributes['moon']} moon" if name == "moon" else name
        phrase = PHRASES[key][rng.integers(len(PHRASES[key]))].split()
        words = [w.lstrip("*") for w in phrase]
        return mask, " ".join(words), words, {name: [i for i, w in enumerate(phrase) if w.startswith("*")]}
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for _ in range(rng.integers(1, 3)):
        if rng.random() < 0.5:  # a box
            w, h = rng.integers(16, 65, size=2)
            x0, y0 = rng.integers(0, SIZE - w + 1), rng.integers(0, SIZE - h + 1)
            mask[y0:y0 + h, x0:x0 + w] = True
        else:  # a brush stroke: disks along a short random walk
            radius = rng.uniform(4, 10)
            p = rng.uniform(0, SIZE, size=2)
            for _ in range(rng.integers(3, 7)):
                q = np.clip(p + rng.normal(0, 20, size=2), 0, SIZE - 1)
                for t in np.linspace(0, 1, 8):
                    c = p + t * (q - p)
                    mask |= (xx - c[0]) ** 2 + (yy - c[1]) ** 2 <= radius ** 2
                p = q
    return mask, *whole


def _render_chunk(args):
    """Render seeds [start, stop): images, token ids, token->object index, 16x16 object coverage (0..64), the
    wolf's object index (-1: none); with inpaint, also each scene's inpainting mask and its caption's ids."""
    start, stop, inpaint = args
    global _TOKENIZER
    from train.tokenizer import build_word_tokenizer
    from train.world import render, vocabulary

    if _TOKENIZER is None:
        _TOKENIZER = build_word_tokenizer(vocabulary())
    n = stop - start
    out = {"images": np.zeros((n, 128, 128, 3), np.uint8), "ids": np.zeros((n, TOKENS), np.int16),
           "token_object": np.full((n, TOKENS), -1, np.int8), "cover": np.zeros((n, MAX_OBJECTS, 16, 16), np.uint8),
           "wolf_k": np.full(n, -1, np.int8)}
    if inpaint:
        out.update(inpaint_mask=np.zeros((n, 128, 128), bool), inpaint_ids=np.zeros((n, TOKENS), np.int16),
                   inpaint_token_object=np.full((n, TOKENS), -1, np.int8))
    for i, s in enumerate(range(start, stop)):
        scene = render(s, "train")
        objects = list(scene.words)[:MAX_OBJECTS]
        image, masks = scene.image, scene.masks
        if inpaint:
            rng = np.random.default_rng([s, 7])
            mask, caption, words, refs = inpaint_example(scene, rng)
            if auto_crop_padding(mask, 16) is not None and rng.random() < inpaint_crop_share:
                image, mask, masks = _engine_crop(image, mask, masks)
            out["inpaint_mask"][i] = mask
            out["inpaint_ids"][i], out["inpaint_token_object"][i] = _encode_caption(caption, words, refs, objects)
        out["images"][i] = image
        out["ids"][i], out["token_object"][i] = _encode_caption(scene.caption, scene.caption_words, scene.words, objects)
        for k, name in enumerate(objects):
            out["cover"][i, k] = masks[name].reshape(16, 8, 16, 8).sum(axis=(1, 3))
        out["wolf_k"][i] = objects.index("wolf") if "wolf" in objects else -1
    return out


def _engine_crop(image: np.ndarray, mask: np.ndarray, masks: dict[str, np.ndarray]):
    """The crop the engine inpaints a small mask on (auto_crop), resized back to the full size, as it does."""
    from PIL import Image

    size = image.shape[0]
    x1, y1, x2, y2 = crop_region(mask, auto_crop_padding(mask, 16), (size, size))

    def resize_mask(m):
        return np.asarray(Image.fromarray(m[y1:y2, x1:x2].astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 127

    crop = np.asarray(Image.fromarray(image[y1:y2, x1:x2]).resize((size, size), Image.LANCZOS), dtype=np.uint8)
    return crop, resize_mask(mask), {k: resize_mask(v) for k, v in masks.items()}


def render_dataset(n: int, workers: int, inpaint: bool = False) -> dict[str, np.ndarray]:
    chunk = max(1, min(500, n // max(1, workers)))
    jobs = [(s, min(n, s + chunk), inpaint) for s in range(0, n, chunk)]
    t0 = time.time()
    if workers > 1:
        with get_context("fork").Pool(workers) as pool:
            parts = pool.map(_render_chunk, jobs)
    else:
        parts = [_render_chunk(j) for j in jobs]
    data = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    log(f"rendered {n} scenes in {time.time() - t0:.1f}s with {workers} workers")
    return data


# ---- models -----------------------------------------------------------------------------------------------
def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=vae_channels, latent_channels=4,
                         layers_per_block=1, norm_num_groups=min(32, vae_channels[0]), sample_size=128)


def make_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    # One layer and a small MLP: each output token stays close to its own word embedding (token identity).
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_dim, intermediate_size=2 * text_dim, num_hidden_layers=text_layers,
        num_attention_heads=max(1, text_dim // 32), max_position_embeddings=TOKENS, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))


def make_unet(in_channels: int = 4):
    from diffusers import UNet2DConditionModel

    # Cross-attention at 16x16 and 8x8 (where objects are 3+ cells wide); none at 4x4 or in the mid block.
    heads = list(unet_heads) if isinstance(unet_heads, tuple) else unet_heads
    return UNet2DConditionModel(
        sample_size=16, in_channels=in_channels, out_channels=4, block_out_channels=unet_channels, layers_per_block=unet_layers,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), mid_block_type="UNetMidBlock2D",
        cross_attention_dim=text_dim, attention_head_dim=heads, norm_num_groups=min(32, unet_channels[0]))


def make_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def save_model(folder: Path, vae, text_encoder, unet, tokenizer, info: dict) -> None:
    """A plain diffusers folder, fp16 safetensors only."""
    import copy

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    # fp16 UNet and VAE (size); the text encoder is tiny and stays fp32, because transformers loads a checkpoint
    # in its stored dtype by default and a half text encoder would not match the float32 UNet.
    for name, model, dtype in (("vae", vae, torch.float16), ("text_encoder", text_encoder, torch.float32),
                               ("unet", unet, torch.float16)):
        copy.deepcopy(model).to("cpu", dtype).save_pretrained(folder / name, safe_serialization=True)
    make_scheduler().save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    if self_attention_heads:  # the layout the weights were trained for, read by every loader of the folder
        from engine.model.family import ATTUNE_JSON
        from engine.model.head_layout import KEY

        settings_file = folder / ATTUNE_JSON
        settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
        settings_file.write_text(json.dumps({**settings, KEY: self_attention_heads}, indent=2) + "\n")
    (folder / "training.json").write_text(json.dumps(info, indent=2, default=str))


def export_tar(folder: Path, tar_path: Path, with_vae: bool = True) -> None:
    """The folder as a tar without its VAE, plus the VAE as vae.tar beside it (keeps each file under 16 MiB)."""
    parts = [(tar_path, [p for p in folder.iterdir() if p.name != "vae"])]
    if with_vae and (folder / "vae").exists():
        parts.append((tar_path.with_name("vae.tar"), [folder / "vae"]))
    for path, members in parts:
        tmp = path.with_suffix(".tmp")
        with tarfile.open(tmp, "w") as tar:
            for m in members:
                tar.add(m, arcname=f"{folder.name}/{m.name}")
        tmp.replace(path)


# ---- training ---------------------------------------------------------------------------------------------
class EMA:
    def __init__(self, model):
        self.params = [p.detach().clone() for p in model.parameters()]
        self.step = 0

    @torch.no_grad()
    def update(self, model):
        self.step += 1
        d = min(ema_decay, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(self.params, [p.detach() for p in model.parameters()], 1 - d)

    def copy_to(self, model):
        with torch.no_grad():
            for e, p in zip(self.params, model.parameters()):
                p.copy_(e)


def train_vae(images: np.ndarray, device, autocast, deadline: float, work: Path):
    vae = make_vae().to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=vae_lr, weight_decay=0.0)
    start_step = 0
    ckpt = work / "vae.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device)
        vae.load_state_dict(state["model"]), opt.load_state_dict(state["opt"])
        start_step = state["step"]
        log(f"resumed VAE at step {start_step}")
    n = min(len(images), vae_images)
    gpu_images = torch.from_numpy(images[:n]).to(device)
    step, t0, last_save, loss_v = start_step, time.time(), time.time(), float("nan")
    while step < vae_max_steps and time.time() < deadline:
        idx = torch.randint(0, n, (vae_batch,), device=device)
        x = gpu_images[idx].permute(0, 3, 1, 2).float() / 127.5 - 1
        with autocast():
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample()).sample
        rec = rec.float()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + kl_weight * post.kl().float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        last = step >= vae_max_steps or time.time() >= deadline
        loss_v = loss.item() if step % log_every == 0 or last else loss_v
        if step % log_every == 0:
            log(f"vae step {step} loss {loss_v:.4f} ({(step - start_step) / (time.time() - t0):.1f} it/s)")
        if time.time() - last_save > save_every:
            torch.save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt)
            last_save = time.time()
    torch.save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step, "loss": loss_v}, ckpt)
    log(f"vae done: {step} steps, loss {loss_v:.4f}")
    return vae, {"vae_steps": step, "vae_loss": loss_v}


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, device, autocast, keep_scaling: bool = False,
                   masks: np.ndarray | None = None) -> torch.Tensor:
    """Posterior means, scaled to unit std (or by the VAE's own scaling_factor when resuming from a model).
    masks: encode the masked images instead (pixels inside the mask set to 0, as engine/sampling/loop.py does)."""
    vae.eval()
    out = []
    chunk = 512 if device.type == "cuda" else 32  # small CPU chunks: big ones spend their time in page faults
    for s in range(0, len(images), chunk):
        x = torch.from_numpy(images[s:s + chunk]).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
        if masks is not None:
            x = x * torch.from_numpy(~masks[s:s + chunk]).to(device)[:, None].float()
        with autocast():
            out.append(vae.encode(x).latent_dist.mode().float())
        if (s // chunk) % 20 == 19:
            log(f"encoded {s + len(x)}/{len(images)}")
    lat = torch.cat(out)
    if not keep_scaling:
        vae.register_to_config(scaling_factor=1.0 / lat.std().item())
    scale = float(vae.config.scaling_factor)
    log(f"cached {len(lat)} {'masked-image ' if masks is not None else ''}latents, std {lat.std().item():.3f}, "
        f"scaling_factor {scale:.4f}")
    return (lat * scale).to(torch.float16)


def distill_scales(token_object: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(key_scale, value_scale), each (B, TOKENS), for one distillation step: on distill_reweight_share of the rows,
    about half the object tokens get a scale (a slider value or log-uniform in distill_scale_range), as `score` key
    scales or `prob` value scales; everything else stays 1."""
    n, device = token_object.shape[0], token_object.device
    lo, hi = (math.log(v) for v in distill_scale_range)
    scaled = ((token_object >= 0) & (torch.rand(n, 1, device=device) < distill_reweight_share)
              & (torch.rand(n, TOKENS, device=device) < 0.5))
    slider = torch.tensor(distill_slider_scales, device=device)
    scales = torch.where(torch.rand(n, TOKENS, device=device) < 0.5,
                         slider[torch.randint(len(slider), (n, TOKENS), device=device)],
                         torch.exp(torch.empty(n, TOKENS, device=device).uniform_(lo, hi)))
    ones = torch.ones_like(scales)
    scales = torch.where(scaled, scales, ones)
    by_value = torch.rand(n, 1, device=device) < 0.5  # prob's value scales, else score's key scales
    return torch.where(by_value, ones, scales), torch.where(by_value, scales, ones)


def maps_kl(teacher_maps: dict, student_maps: dict) -> torch.Tensor:
    """KL(teacher ‖ student) of each pixel's distribution over tokens, averaged over pixels, rows and layers."""
    return sum((m * (m.clamp_min(1e-8).log() - student_maps[name].clamp_min(1e-8).log())).sum(-1).mean()
               for name, m in teacher_maps.items()) / len(teacher_maps)


def checkpoint_name(inpaint: bool) -> str:
    return "unet_inpaint.pt" if inpaint else ("unet.pt" if grounding else "unet_nogrounding.pt")


def train_unet(data, latents, tokenizer, device, autocast, deadline, work: Path, vae, out: Path, tar: Path | None,
               info: dict, init_from: Path | None = None, inpaint_extra: torch.Tensor | None = None,
               teacher_from: Path | None = None):
    """inpaint_extra: (N, 5, 16, 16) mask + masked-image latents per example: train a 9-channel inpainting UNet.
    teacher_from: a model folder whose UNet's noise prediction is the target (distillation; needs grounding off)."""
    from diffusers import DDPMScheduler

    inpaint = inpaint_extra is not None
    text_encoder = make_text_encoder(tokenizer).to(device)
    unet = make_unet(9 if inpaint else 4).to(device)
    if init_from is not None:  # start from a saved model (e.g. the committed weights) instead of from scratch
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        state = UNet2DConditionModel.from_pretrained(init_from / "unet", torch_dtype=torch.float32).state_dict()
        if inpaint:  # the 5 new input channels (mask, masked-image latents) start at zero: the base UNet's output
            w = state["conv_in.weight"]
            state["conv_in.weight"] = torch.cat([w, w.new_zeros(w.shape[0], 5, *w.shape[2:])], dim=1)
        unet.load_state_dict(state)
        text_encoder.load_state_dict(
            CLIPTextModel.from_pretrained(init_from / "text_encoder", torch_dtype=torch.float32).state_dict())
        log(f"initialised UNet and text encoder from {init_from}")
    if self_attention_heads:
        from engine.model.head_layout import apply

        log(f"self-attention heads {self_attention_heads}: {', '.join(apply(unet, self_attention_heads))}")
    store = install_grounding(unet) if grounding else None
    teacher, control = None, None
    if teacher_from is not None:  # both UNets get the engine's cross-attention processor, sharing its key/value scales
        from diffusers import UNet2DConditionModel

        from engine.attention.processor import AttentionControl, install
        from engine.model.loading import apply_head_layout

        teacher = UNet2DConditionModel.from_pretrained(teacher_from / "unet", torch_dtype=torch.float32).to(device)
        apply_head_layout(teacher, teacher_from)  # a teacher trained for its own head layout runs with it
        teacher.eval().requires_grad_(False)
        control = AttentionControl()
        install(teacher, control), install(unet, control)
        log(f"distilling from {teacher_from} (heads {teacher.config.attention_head_dim})")
    tune_text = train_text_encoder and not inpaint  # the inpainting UNet shares the model's text encoder
    text_encoder.requires_grad_(tune_text)
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if tune_text else [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    ema_u, ema_t = EMA(unet), EMA(text_encoder)
    step, used = 0, 0.0
    ckpt = work / checkpoint_name(inpaint)
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device)
        unet.load_state_dict(state["unet"]), text_encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["opt"])
        ema_u.params, ema_t.params, ema_u.step = state["ema_unet"], state["ema_text"], state["step"]
        step, used = state["step"], state["seconds"]
        log(f"resumed UNet at step {step}")
    n_params = sum(p.numel() for p in unet.parameters()), sum(p.numel() for p in text_encoder.parameters())
    log(f"unet {n_params[0] / 1e6:.2f}M params ({'9-channel inpainting' if inpaint else '4-channel'}, heads "
        f"{unet.config.attention_head_dim}), text encoder {n_params[1] / 1e6:.2f}M ({'trained' if tune_text else 'frozen'}), "
        f"grounding={grounding}")
    noise_sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    alphas = noise_sched.alphas_cumprod.to(device)
    prefix = "inpaint_" if inpaint else ""  # inpainting examples have their own captions (often the phrase alone)
    ids = torch.from_numpy(data[prefix + "ids"].astype(np.int64)).to(device)
    token_object = torch.from_numpy(data[prefix + "token_object"].astype(np.int64)).to(device)
    wolf_k = torch.from_numpy(data["wolf_k"].astype(np.int64)).to(device)
    sample_weight = 1.0 + (wolf_oversample - 1.0) * (wolf_k >= 0).float()
    if inpaint and moon_inpaint_oversample != 1.0:
        moon_id = tokenizer("moon", add_special_tokens=False)["input_ids"][0]
        phrase_alone = torch.from_numpy((data["inpaint_ids"] != data["ids"]).any(axis=1)).to(device)
        asks_moon = (ids == moon_id).any(dim=1) & phrase_alone
        sample_weight = sample_weight * (1.0 + (moon_inpaint_oversample - 1.0) * asks_moon.float())
        log(f"{int(asks_moon.sum())} of {len(ids)} inpainting examples ask for the moon alone: weight "
            f"{moon_inpaint_oversample:g}")
    cover = torch.from_numpy(data["cover"]).to(device)
    empty = torch.tensor(tokenizer("", padding="max_length", max_length=TOKENS)["input_ids"], device=device)
    n = len(latents)
    t_start, last_save, budget = time.time(), time.time(), max(1.0, deadline - time.time() + used)
    losses = {"mse": float("nan"), "token": float("nan"), "pixel": float("nan")}

    def checkpoint(final=False):
        torch.save({"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(), "opt": opt.state_dict(),
                    "ema_unet": ema_u.params, "ema_text": ema_t.params, "step": step,
                    "seconds": used + time.time() - t_start}, ckpt)
        import copy

        if store is not None:
            store.clear()  # recorded maps hold autograd graphs, which cannot be deep-copied
        if control is not None:
            control.reset()  # the same for the maps the distillation captured
        eu, et = copy.deepcopy(unet), copy.deepcopy(text_encoder)
        ema_u.copy_to(eu), ema_t.copy_to(et)
        from diffusers.models.attention_processor import AttnProcessor2_0

        eu.set_attn_processor(AttnProcessor2_0())  # the saved model carries no training-only processor
        seconds = round(used + time.time() - t_start, 1)
        info.update({"unet_steps": step, "unet_seconds": seconds, "final_losses": dict(losses),
                     "unet_params": n_params[0], "text_params": n_params[1], "grounding": grounding, "final": final,
                     "samples": step * batch, "samples_per_second": round(step * batch / max(1e-6, seconds), 2)})
        if inpaint:  # only the second UNet; the model's other parts stay as they are
            eu.to("cpu", torch.float16).save_pretrained(out / "unet_inpaint", safe_serialization=True)
            (out / "unet_inpaint" / "training.json").write_text(json.dumps(info, indent=2, default=str))
        else:
            save_model(out, vae, et, eu, tokenizer, info)
        if tar:
            export_tar(out, tar, with_vae=grounding)
        log(f"saved {out} at step {step}" + (f" -> {tar}" if tar else ""))

    while step < max_steps and time.time() < deadline:
        progress = (used + time.time() - t_start) / budget
        cur_lr = lr * min(1.0, (step + 1) / warmup_steps) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1, progress))))
        for g in opt.param_groups:
            g["lr"] = cur_lr
        idx = torch.multinomial(sample_weight, batch, replacement=True)
        x0 = latents[idx].float()
        tok = ids[idx]
        tobj = token_object[idx]
        drop = torch.rand(batch, device=device) < caption_dropout
        tok = torch.where(drop[:, None], empty[None], tok)
        tobj = torch.where(drop[:, None], torch.full_like(tobj, -1), tobj)
        masks = cover[idx].float() / 64.0
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch,), device=device)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        if inpaint:  # SD-inpainting channel order: noisy latents, mask, masked-image latents
            xt = torch.cat([xt, inpaint_extra[idx].float()], dim=1)
        with autocast():
            with torch.set_grad_enabled(tune_text):
                ehs = text_encoder(tok)[0]
            target = noise
            if teacher is not None:
                key_scale, value_scale = distill_scales(tobj)
                control.reset(key_scale=key_scale, value_scale=value_scale, capture=distill_map_weight > 0,
                              cond_rows=batch)
                with torch.no_grad():
                    target = teacher(xt, t, ehs).sample.float()
                teacher_maps, control.maps = control.maps, {}
            pred = unet(xt, t, ehs).sample
        mse = F.mse_loss(pred.float(), target)
        loss = mse
        if teacher is not None and distill_map_weight > 0:
            map_kl = maps_kl(teacher_maps, control.maps)
            loss = loss + distill_map_weight * map_kl
        if grounding:
            is_wolf = (tobj >= 0) & (tobj == wolf_k[idx, None])
            tok_l, pix_l = grounding_loss(store, tobj, masks, torch.where(is_wolf, wolf_grounding, 1.0))
            loss = loss + token_weight * tok_l + pixel_weight * pix_l
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_u.update(unet), ema_t.update(text_encoder)
        step += 1
        if step % log_every == 0 or step == max_steps:
            losses = {"mse": mse.item(), "token": tok_l.item() if grounding else float("nan"),
                      "pixel": pix_l.item() if grounding else float("nan")}
            if teacher is not None and distill_map_weight > 0:
                losses["map_kl"] = map_kl.item()
            rate = step / max(1e-6, used + time.time() - t_start)
            log(f"unet step {step} mse {losses['mse']:.4f} token {losses['token']:.4f} pixel {losses['pixel']:.4f} "
                + (f"map_kl {losses['map_kl']:.4f} " if "map_kl" in losses else "") + f"lr {cur_lr:.2e} ({rate:.1f} it/s)")
        if time.time() - last_save > save_every:
            checkpoint()
            last_save = time.time()
    checkpoint(final=True)
    return info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("models/tiny-scenes"), help="diffusers folder to write")
    p.add_argument("--work", type=Path, default=None, help="checkpoints and caches (default: runs/<out name>.work)")
    p.add_argument("--time-limit", type=float, default=None, help="seconds for the whole run (default from config)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None)
    p.add_argument("--no-grounding", action="store_true", help="ablation: no grounding loss")
    p.add_argument("--tar", type=Path, default=None, help="also write the model folder as this tar (on every save)")
    p.add_argument("--ablation-out", type=Path, default=None,
                   help="after caching latents, train a no-grounding copy in a second process into this folder")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from this model folder's weights (e.g. models/tiny-scenes); its VAE is kept as is")
    p.add_argument("--distill-from", type=Path, default=None,
                   help="learn this model folder's UNet's noise prediction (also under score/prob reweights) instead of the "
                        "noise; turns grounding off (e.g. --init-from and --distill-from models/tiny-scenes)")
    p.add_argument("--self-attention-heads", nargs="*", default=[], metavar="BLOCK=N",
                   help="the UNet's self-attention in BLOCK (e.g. down_blocks.0) runs with N heads; the folder's "
                        "attune.json says so (engine/model/head_layout.py)")
    p.add_argument("--inpaint", action="store_true",
                   help="train a 9-channel inpainting UNet from --init-from's UNet into <out>/unet_inpaint")
    p.add_argument("--cache-only", action="store_true", help="render and cache latents, then stop (train later)")
    p.add_argument("--latents-from", type=Path, default=None,
                   help="--inpaint with inpaint_crop_share=0: take the clean latents from this work folder of a base "
                        "run (same scenes), waiting for it; only the masked images are encoded here")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config values")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.preset is None and device.type == "cpu":
        args.preset = "cpu"
    if args.preset:
        globals().update(PRESETS[args.preset])
    for kv in args.set:
        k, v = kv.split("=", 1)
        if k not in CONFIG_KEYS:
            p.error(f"unknown config key {k}")
        val = json.loads(v)
        globals()[k] = tuple(val) if isinstance(val, list) else val if isinstance(globals()[k], tuple) else type(globals()[k])(val)
    global self_attention_heads
    for kv in args.self_attention_heads:
        block, _, count = kv.partition("=")
        if not block or not count.isdigit() or int(count) < 1:
            p.error(f"--self-attention-heads takes BLOCK=N (e.g. down_blocks.0=2), not '{kv}'")
        self_attention_heads = {**self_attention_heads, block: int(count)}
    if self_attention_heads and args.inpaint:
        p.error("--self-attention-heads applies to the text-to-image UNet only")
    if args.distill_from and args.inpaint:
        p.error("--distill-from trains the text-to-image UNet only")
    if args.distill_from and not (args.distill_from / "unet" / "config.json").is_file():
        p.error(f"--distill-from {args.distill_from} is not a model folder with a unet/ (diffusers layout)")
    if args.inpaint and not args.init_from:
        p.error("--inpaint needs --init-from (the model whose UNet, text encoder and VAE it builds on)")
    if threads:
        torch.set_num_threads(threads)
    global grounding, time_limit
    if args.no_grounding or args.distill_from:
        grounding = False
    if args.time_limit is not None:
        time_limit = args.time_limit
    t0 = time.time()
    deadline = t0 + time_limit
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    out = args.out
    work = args.work or Path("runs") / f"{out.name}.work"  # runs/ is git-ignored
    work.mkdir(parents=True, exist_ok=True)
    log(f"device {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu'}), "
        f"preset {args.preset}, time limit {time_limit:.0f}s, out {out}, work {work}")
    from train.tokenizer import build_word_tokenizer
    from train.world import vocabulary

    tokenizer = build_word_tokenizer(vocabulary())
    info = {"config": {**cfg(), "self_attention_heads": self_attention_heads}, "preset": args.preset, "device": str(device), "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"}
    # Captions/masks are small and cached; images are re-rendered when needed (fast), never stored.
    caption_file, latent_file = work / "captions.npz", work / "latents.pt"
    extra_file = work / "inpaint_extra.pt"  # mask + masked-image latents of the inpainting examples
    inpaint_extra = None
    if latent_file.exists() and caption_file.exists() and (work / "vae").exists() and (extra_file.exists() or not args.inpaint):
        from diffusers import AutoencoderKL

        data = dict(np.load(caption_file))
        vae = AutoencoderKL.from_pretrained(work / "vae").to(device)
        latents = torch.load(latent_file).to(device)
        inpaint_extra = torch.load(extra_file).to(device) if args.inpaint else None
        info.update(json.loads((work / "vae_info.json").read_text()))
        log(f"loaded cached VAE, {len(latents)} latents and captions")
    else:
        data = render_dataset(n_images, render_workers, inpaint=args.inpaint)
        if args.init_from:
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(args.init_from / "vae", torch_dtype=torch.float32).to(device)
            vae_info = {"vae_from": str(args.init_from)}
            log(f"VAE from {args.init_from} (not retrained)")
        else:
            vae_deadline = t0 + vae_time_share * time_limit
            vae, vae_info = train_vae(data["images"], device, autocast, vae_deadline, work)
        if args.inpaint and args.latents_from:  # masked images first, then the base run's clean latents
            if inpaint_crop_share:
                p.error("--latents-from needs --set inpaint_crop_share=0 (cropped examples have their own images)")
            latents = None
        else:
            latents = encode_latents(vae, data["images"], device, autocast, keep_scaling=bool(args.init_from))
        if args.inpaint:  # the 5 extra input channels, exactly as engine/sampling/loop.py builds them at inference
            masked = encode_latents(vae, data["images"], device, autocast, keep_scaling=True, masks=data["inpaint_mask"])
            mask_lat = F.interpolate(torch.from_numpy(data.pop("inpaint_mask")).to(device)[:, None].float(), size=(16, 16))
            inpaint_extra = torch.cat([mask_lat.half(), masked], dim=1)
            torch.save(inpaint_extra.cpu(), extra_file)
        if latents is None:
            while not (args.latents_from / "vae_info.json").exists():  # written last by the base run
                log(f"waiting for {args.latents_from / 'latents.pt'}")
                time.sleep(30)
            latents = torch.load(args.latents_from / "latents.pt")[:len(data["images"])].to(device)
            if len(latents) < len(data["images"]):
                p.error(f"{args.latents_from} has only {len(latents)} latents")
            log(f"clean latents from {args.latents_from}")
        del data["images"]
        vae.save_pretrained(work / "vae", safe_serialization=True)
        torch.save(latents.cpu(), latent_file)
        np.savez(caption_file, **data)
        vae_info["vae_seconds"] = round(time.time() - t0, 1)
        (work / "vae_info.json").write_text(json.dumps(vae_info))
        info.update(vae_info)
    info["n_images"] = len(latents)
    vae.eval().requires_grad_(False)

    ablation = None
    if args.ablation_out:
        cmd = [sys.executable, "-m", "train.tiny_scenes", "--out", str(args.ablation_out), "--work", str(work),
               "--no-grounding", "--time-limit", str(max(1.0, deadline - time.time()))]
        # half batch, so that the ablation takes less of a shared GPU from the main run (say so when comparing)
        args.set = [kv for kv in args.set if not kv.startswith("batch=")] + [f"batch={max(2, batch // 2)}"]
        if args.preset:
            cmd += ["--preset", args.preset]
        if args.tar:
            cmd += ["--tar", str(args.tar.with_name("nogrounding.tar"))]
        cmd += ["--set", *args.set] if args.set else []
        log("starting ablation: " + " ".join(cmd))
        ablation = subprocess.Popen(cmd, stdout=open(work / "ablation.log", "w"), stderr=subprocess.STDOUT)

    if args.cache_only:
        log("cached; stopping (--cache-only)")
        return
    init = args.init_from if args.init_from and not (work / checkpoint_name(args.inpaint)).exists() else None
    if args.distill_from:
        info["distilled_from"] = str(args.distill_from)
    info = train_unet(data, latents, tokenizer, device, autocast, deadline, work, vae, out, args.tar, info, init,
                      inpaint_extra, args.distill_from)
    info["total_seconds"] = round(time.time() - t0, 1)
    info_file = out / "unet_inpaint" / "training.json" if args.inpaint else out / "training.json"
    info_file.write_text(json.dumps(info, indent=2, default=str))
    if args.tar:
        export_tar(out, args.tar, with_vae=grounding)
    if ablation is not None:
        ablation.wait(timeout=max(5.0, deadline - time.time() + 60))
    log(f"done in {time.time() - t0:.0f}s")


from engine.sampling.loop import auto_crop_padding, crop_region  # noqa: E402  (the engine's own crop, for inpainting data)
from train.grounding import grounding_loss, install_grounding  # noqa: E402  (after config, keeps the file readable)

if __name__ == "__main__":
    main()
