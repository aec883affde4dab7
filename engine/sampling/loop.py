"""The denoising loops, written out in the open (diffusers style): text-to-image and inpainting.

- CFG batch is [uncond, cond]; guidance <= 1 skips CFG (batch [cond]).
- SDXL (components.text_time) as diffusers' StableDiffusionXLPipeline: both encoders' penultimate states concatenated
  (the components' encode_text), the second encoder's pooled embedding, and the size/crop ids (SizeConditioning) go to
  the UNet as AddedConditioning; an empty negative prompt is zeros where the model says force_zeros_for_empty_prompt.
  A1111's SDXL emphasis rescales each encoder's part of a chunk to its own mean, as each of A1111's two encoder
  wrappers does; Compel's `embed` is linear per position, so it is the same on the concatenation.
- Word weights (emphasis syntax × sliders) act by one of four methods (WEIGHT_METHODS):
  `embed` before the UNet (Compel's conditioning, engine.sampling.embed_weights), `a1111` before the UNet
  (A1111's "Original" emphasis: z·w, then rescale to the prompt's original mean), `score` / `prob` inside the UNet
  through the runner's key_scale / value_scale, on the conditional half only unless cond_only=False.
  All weights at 1 -> no scales, no embedding change -> bit-identical image.
- Cross-attention maps of the conditional half are summed per step bucket (engine.attention.maps.AttentionMaps).
- Inpainting: 4-channel UNets blend latents each step, x = m·x + (1−m)·add_noise(x0, ε, t); 9-channel UNets get the
  mask and masked-image latents as extra channels. Both paste the result back with a feather that lies inside the mask,
  so every pixel outside the mask is exactly the parent's. Small masks work on an enlarged crop (auto_crop).
- Noise is torch's seeded CPU generator reproduced in numpy (engine/sampling/noise.py), so a seed gives the same image on
  every device and backend, with or without torch installed.
- Backend-neutral: every array here is a float32 numpy array. The components (engine.model.loading.Components for PyTorch,
  engine.model.onnx_components.OnnxComponents for ONNX Runtime) provide encode_text / encode_image / decode_latents, the runner
  the UNet call, engine.sampling.schedulers the numpy scheduler. No torch import on this path.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from engine.defaults import INPAINT_DEFAULTS, InpaintSettings
from engine.errors import AttuneError
from engine.protocols import AddedConditioning, Components, Progress, Runner
from engine.attention.maps import AttentionMaps, latent_token_maps
from engine.sampling.embed_weights import embed_conditioning
from engine.sampling.masks import bool_mask, feather_alpha, paste_back
from engine.sampling.noise import randn
from engine.words.prompt import MAX_LENGTH, WordTokens, tokenize_prompt
from engine.words.weights import WEIGHT_MODES, token_weight_vector
from engine.sampling.schedulers import make_scheduler

AUTO_CROP_MAX = 0.5  # auto only-masked when the mask's box spans at most this share of both image sides

if TYPE_CHECKING:
    from engine.attention.injection import AttentionInjection
    from engine.sampling.layout import LocalBlend, Trajectory


@dataclass
class Conditioning:
    """Text side of one sampling run."""

    embeddings: np.ndarray  # (B, 77·k, D) float32: [uncond, cond] with CFG, [cond] without; k chunks
    do_cfg: bool
    key_scale: np.ndarray | None = None  # (B, 77·k)
    value_scale: np.ndarray | None = None  # (B, 77·k)
    token_weights: list[float] = field(default_factory=list)  # effective per-position weights on the cond prompt
    n_tokens: int = 77  # positions kept in the maps (BOS .. EOS)
    pooled: np.ndarray | None = None  # SDXL: (B, pooled_dim) rows as `embeddings`' rows; None for other families
    size: SizeConditioning | None = None  # SDXL's size/crop micro-conditioning (None: diffusers' defaults)

    def added(self, image_hw: tuple[int, int]) -> AddedConditioning | None:
        """SDXL's added conditioning for an image of this size (None for other families)."""
        if self.pooled is None:
            return None
        return AddedConditioning(self.pooled, (self.size or SizeConditioning()).time_ids(image_hw, self.do_cfg))

    @property
    def cond_rows(self) -> int:
        return 1


@dataclass(frozen=True)
class SizeConditioning:
    """SDXL's micro-conditioning, as diffusers' StableDiffusionXLPipeline takes it: sizes (height, width) and the crop's
    top-left (y, x). None: the image's size (original and target). The negative variants apply only when both
    negative sizes are given, as in diffusers; else the unconditional row gets the positive ids."""

    original: tuple[int, int] | None = None
    crop: tuple[int, int] = (0, 0)
    target: tuple[int, int] | None = None
    negative_original: tuple[int, int] | None = None
    negative_crop: tuple[int, int] = (0, 0)
    negative_target: tuple[int, int] | None = None

    def time_ids(self, image_hw: tuple[int, int], do_cfg: bool) -> np.ndarray:
        """(B, 6) float32: [uncond, cond] rows with CFG, [cond] without."""
        cond = [*(self.original or image_hw), *self.crop, *(self.target or image_hw)]
        uncond = cond
        if self.negative_original is not None and self.negative_target is not None:
            uncond = [*self.negative_original, *self.negative_crop, *self.negative_target]
        return np.asarray([uncond, cond] if do_cfg else [cond], dtype=np.float32)


@dataclass(frozen=True)
class Sampling:
    """How one image is sampled, besides its text and its size: the seed and the scheduler's run."""

    seed: int
    steps: int
    guidance: float
    scheduler: str


@dataclass
class StepHooks:
    """What watches or steers the loop, step by step (each optional)."""

    progress: Progress = None  # (steps done, steps in all)
    record: Trajectory | None = None  # filled with the latents and token maps after every step
    local_blend: LocalBlend | None = None  # applied after every step, and to the decoded image
    injection: AttentionInjection | None = None  # installed on the runner; told the step before each call

    @property
    def need_token_maps(self) -> bool:
        return self.record is not None or self.local_blend is not None


@dataclass
class InpaintLatents:
    """The image side of inpainting: `blend` = (x0 latents, latent mask) for 4-channel UNets (the loop blends the
    known region back each step), `extra` = (1, 5, h, w) mask + masked-image latents for 9-channel UNets."""

    blend: tuple[np.ndarray, np.ndarray] | None = None
    extra: np.ndarray | None = None


@dataclass
class SampleOutput:
    image: Image.Image
    maps: AttentionMaps
    timings: dict[str, float]
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- text side
def encode_ids(components, input_ids: list[int]) -> np.ndarray:
    """(1, 77·k, D): each 77-position chunk through the text encoder on its own, outputs concatenated (A1111, Compel)."""
    ids = list(input_ids)
    parts = [np.asarray(components.encode_text(ids[i : i + MAX_LENGTH]), dtype=np.float32)
             for i in range(0, max(len(ids), 1), MAX_LENGTH)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def _embed_weighted(components, word_tokens: WordTokens, w: list[float], z: np.ndarray,
                    z_empty: np.ndarray) -> np.ndarray:
    """The `embed` method on one prompt's encoding z (Compel's, below 1 too)."""
    def encode(ids, mask):
        return components.encode_text(ids, attention_mask=mask)

    return embed_conditioning(encode, list(word_tokens.input_ids), word_tokens.chunks, w, z, z_empty)


def _pad_chunks(z: np.ndarray, chunks: int, z_empty: np.ndarray) -> np.ndarray:
    """Compel's pad_conditioning_tensors_to_same_length: the shorter prompt gets empty-prompt chunks appended."""
    missing = chunks - z.shape[1] // MAX_LENGTH
    return np.concatenate([z] + [z_empty] * missing, axis=1) if missing > 0 else z


def _a1111_reweight(z: np.ndarray, w: list[float], widths: tuple[int, ...] = ()) -> np.ndarray:
    """A1111's "Original" emphasis: z·w per token, then z·(original mean / new mean), both means over each chunk's
    (1, 77, D) output of the text encoder, as A1111's EmphasisOriginal takes them (one chunk at a time). `widths`:
    SDXL's two encoders' widths: each encoder's part gets its own means (A1111 wraps each encoder on its own)."""
    if len(widths) > 1:
        ends = np.cumsum(widths)[:-1]
        return np.concatenate([_a1111_reweight(part, w) for part in np.split(z, ends, axis=-1)], axis=-1)
    if z.shape[1] > MAX_LENGTH:
        return np.concatenate([_a1111_reweight(z[:, i : i + MAX_LENGTH], w[i : i + MAX_LENGTH])
                               for i in range(0, z.shape[1], MAX_LENGTH)], axis=1)
    wt = np.asarray(w, dtype=z.dtype)[None, :, None]
    weighted = z * wt
    # float64 means: a prompt's mean embedding can be near 0, where float32 summation order changes the ratio
    ratio = z.mean(dtype=np.float64) / weighted.mean(dtype=np.float64)
    return (weighted * ratio).astype(z.dtype)


def prepare_conditioning(components, word_tokens: WordTokens, negative_tokens: WordTokens, *, guidance: float,
                         weights: dict[str, float] | None = None, weight_mode: str = "score",
                         cond_only: bool = True, slider_knots: dict | None = None,
                         slider_gains: dict | None = None) -> Conditioning:
    if weight_mode not in WEIGHT_MODES:
        raise AttuneError(f"Unknown weight mode '{weight_mode}': choose one of {', '.join(WEIGHT_MODES)}.")
    do_cfg = guidance > 1.0
    text_time = components.text_time
    widths = text_time.encoder_widths if text_time is not None else ()
    # SDXL: an empty negative prompt is zeros (diffusers' force_zeros_for_empty_prompt; A1111 too)
    zero_uncond = (do_cfg and text_time is not None and text_time.force_zeros_for_empty_prompt
                   and not negative_tokens.text.strip())
    w = token_weight_vector(word_tokens, weights, weight_mode, slider_knots, slider_gains)
    weighted = any(x != 1.0 for x in w)
    cond = encode_ids(components, word_tokens.input_ids)
    z_empty = None
    if weighted and weight_mode == "embed":
        z_empty = encode_ids(components, tokenize_prompt(components.tokenizer, "", "none").input_ids)
        cond = _embed_weighted(components, word_tokens, w, cond, z_empty)
    if weighted and weight_mode == "a1111":
        cond = _a1111_reweight(cond, w, widths)
    rows = [cond]
    neg_w = [float(x) for x in negative_tokens.token_weights]
    neg_weighted = do_cfg and any(x != 1.0 for x in neg_w)
    # cond_only=False: the method acts on both halves, each with the weights of ITS OWN prompt's tokens (the
    # positive prompt's weights never land on the negative prompt's positions).
    neg_by_method = neg_weighted and not cond_only and weight_mode in ("score", "prob")
    if zero_uncond:
        rows = [np.zeros_like(cond), cond]
    elif do_cfg:
        uncond = encode_ids(components, negative_tokens.input_ids)
        if neg_weighted and not neg_by_method and weight_mode == "a1111":  # A1111 weighs the negative prompt alike
            uncond = _a1111_reweight(uncond, neg_w, widths)
        elif neg_weighted and not neg_by_method:  # emphasis in the negative prompt acts on its embedding
            if z_empty is None:
                z_empty = encode_ids(components, tokenize_prompt(components.tokenizer, "", "none").input_ids)
            uncond = _embed_weighted(components, negative_tokens, neg_w, uncond, z_empty)
        chunks = max(cond.shape[1], uncond.shape[1]) // MAX_LENGTH
        if cond.shape[1] != uncond.shape[1]:  # the batch needs one length: the shorter gets empty-prompt chunks
            if z_empty is None:
                z_empty = encode_ids(components, tokenize_prompt(components.tokenizer, "", "none").input_ids)
            cond, uncond = _pad_chunks(cond, chunks, z_empty), _pad_chunks(uncond, chunks, z_empty)
            w = w + [1.0] * (cond.shape[1] - len(w))
            neg_w = neg_w + [1.0] * (uncond.shape[1] - len(neg_w))
        rows = [uncond, cond]
    emb = np.concatenate(rows, axis=0)
    key_scale = value_scale = None
    if (weighted or neg_by_method) and weight_mode in ("score", "prob"):
        scale = np.ones((emb.shape[0], emb.shape[1]), dtype=emb.dtype)
        scale[-1] = np.asarray(w, dtype=emb.dtype)
        if neg_by_method:
            scale[0] = np.asarray(neg_w, dtype=emb.dtype)
        if weight_mode == "score":
            key_scale = scale
        else:
            value_scale = scale
    last = max((i for idx in word_tokens.token_indices for i in idx), default=0)
    pooled = None
    if text_time is not None:  # emphasis never reaches the pooled embedding (A1111, Compel)
        pooled = components.encode_pooled(word_tokens.pooled_ids)
        if do_cfg:
            uncond_pooled = (np.zeros_like(pooled) if zero_uncond
                             else components.encode_pooled(negative_tokens.pooled_ids))
            pooled = np.concatenate([uncond_pooled, pooled], axis=0)
        pooled = np.asarray(pooled, dtype=np.float32)
    return Conditioning(embeddings=emb, do_cfg=do_cfg, key_scale=key_scale, value_scale=value_scale,
                        token_weights=w, n_tokens=min(len(word_tokens.input_ids), last + 2), pooled=pooled)


# ---------------------------------------------------------------------------------------------- image side
def _to_tensor(image_u8: np.ndarray, components=None) -> np.ndarray:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [-1, 1]."""
    return (np.asarray(image_u8, dtype=np.uint8).transpose(2, 0, 1)[None].astype(np.float32) / np.float32(127.5)
            - np.float32(1.0))


def encode_image(components, image_t: np.ndarray) -> np.ndarray:
    return np.asarray(components.encode_image(image_t), dtype=np.float32)


def decode_latents(components, latents: np.ndarray) -> np.ndarray:
    if not np.isfinite(latents).all():  # NaN would come out as an all-black PNG with no error
        raise AttuneError("The sampler's result is not a number (NaN or infinite): the weights or guidance are "
                          "too extreme for this model.")
    image = np.asarray(components.decode_latents(latents), dtype=np.float32)
    if not np.isfinite(image).all():
        raise AttuneError("The decoded image is not a number (NaN or infinite): the weights or guidance are too "
                          "extreme for this model.")
    image = np.clip(image / np.float32(2) + np.float32(0.5), 0, 1)
    return np.round(image[0].transpose(1, 2, 0) * np.float32(255)).astype(np.uint8)


def initial_noise(seed: int, shape: tuple[int, ...], components=None) -> np.ndarray:
    return randn(int(seed), shape)


# ---------------------------------------------------------------------------------------------- the loop
def denoise(components: Components, runner: Runner, cond: Conditioning, sampling: Sampling,
            latent_hw: tuple[int, int], image_hw: tuple[int, int], *, capture: bool = True,
            inpaint: InpaintLatents | None = None, hooks: StepHooks | None = None) -> tuple[np.ndarray, AttentionMaps]:
    """Run the sampler: the latents after the last step, and the cross-attention maps (when capture)."""
    hooks = hooks or StepHooks()
    seed, guidance = sampling.seed, sampling.guidance
    blend, extra = (inpaint.blend, inpaint.extra) if inpaint is not None else (None, None)
    record, local_blend, injection, progress = hooks.record, hooks.local_blend, hooks.injection, hooks.progress
    sched = make_scheduler(sampling.scheduler, components.scheduler_config)
    sched.set_timesteps(int(sampling.steps))
    timesteps = sched.timesteps
    shape = (1, components.latent_channels, latent_hw[0], latent_hw[1])
    noise = initial_noise(seed, shape, components)
    x = (noise * np.float32(sched.init_noise_sigma)).astype(np.float32)
    maps = AttentionMaps(latent_hw, len(timesteps), image_hw=image_hw, n_tokens=cond.n_tokens)
    batch = cond.embeddings.shape[0]
    extra_b = np.repeat(extra, batch, axis=0) if extra is not None else None
    added = cond.added(image_hw)
    for i, t in enumerate(timesteps):
        model_in = np.concatenate([x] * batch) if batch > 1 else x
        model_in = sched.scale_model_input(model_in, t)
        if extra_b is not None:
            model_in = np.concatenate([model_in, extra_b], axis=1)
        need_maps = capture or hooks.need_token_maps
        if injection is not None:
            injection.step = i
        eps, step_maps = runner(model_in, t, cond.embeddings, key_scale=cond.key_scale, value_scale=cond.value_scale,
                                capture_maps=need_maps, cond_rows=cond.cond_rows if need_maps else 0, added=added)
        if cond.do_cfg:
            eps_uncond, eps_cond = eps[:1], eps[1:]
            eps = eps_uncond + np.float32(guidance) * (eps_cond - eps_uncond)
        x = sched.step(eps, t, x, return_dict=False)[0]
        if blend is not None:
            x0, m = blend
            if i < len(timesteps) - 1:
                background = sched.add_noise(x0, noise, timesteps[i + 1 : i + 2])
            else:
                background = x0
            x = m * x + (1 - m) * background
        if hooks.need_token_maps:
            token_maps = latent_token_maps(step_maps, latent_hw, cond.n_tokens)
            if local_blend is not None:
                x = local_blend(i, x, token_maps)
            if record is not None:
                total = token_maps[0] if not record.token_maps else record.token_maps[-1].astype(np.float32) + token_maps[0]
                record.token_maps.append(total.astype(np.float16))  # fp16 halves the cache; the mask only thresholds it
                record.latents.append(x.copy())
        if capture:
            maps.add(i, step_maps)
        if progress is not None:
            progress(i + 1, len(timesteps))
    return x, maps


def text_to_image(components: Components, runner: Runner, cond: Conditioning, sampling: Sampling, *, width: int,
                  height: int, capture: bool = True, hooks: StepHooks | None = None) -> SampleOutput:
    hooks = hooks or StepHooks()
    record, local_blend = hooks.record, hooks.local_blend
    f = components.vae_scale_factor
    t0 = time.perf_counter()
    latents, maps = denoise(components, runner, cond, sampling, (height // f, width // f), (height, width),
                            capture=capture, hooks=hooks)
    t1 = time.perf_counter()
    image = decode_latents(components, latents)
    if local_blend is not None:  # the VAE decoder mixes globally: keep the parent's pixels outside the blend mask
        image = local_blend.paste(image)
    if record is not None:
        record.image = image
    t2 = time.perf_counter()
    return SampleOutput(Image.fromarray(image), maps, {"denoise": t1 - t0, "decode": t2 - t1})


# ---------------------------------------------------------------------------------------------- inpainting
def crop_region(mask: np.ndarray, padding: int, aspect_wh: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2): the mask's box plus padding, grown to the processing aspect ratio, inside the image."""
    H, W = mask.shape
    ys, xs = np.nonzero(mask)
    x1, x2 = max(int(xs.min()) - padding, 0), min(int(xs.max()) + 1 + padding, W)
    y1, y2 = max(int(ys.min()) - padding, 0), min(int(ys.max()) + 1 + padding, H)
    target = aspect_wh[0] / aspect_wh[1]
    w, h = x2 - x1, y2 - y1
    if w / h > target:  # too wide: grow height
        new_h = min(H, int(math.ceil(w / target)))
        y1, y2 = _grow(y1, y2, new_h, H)
    else:
        new_w = min(W, int(math.ceil(h * target)))
        x1, x2 = _grow(x1, x2, new_w, W)
    return x1, y1, x2, y2


def _grow(a: int, b: int, size: int, limit: int) -> tuple[int, int]:
    extra = size - (b - a)
    a -= extra // 2
    b += extra - extra // 2
    if b > limit:
        a -= b - limit
        b = limit
    if a < 0:
        b -= a
        a = 0
    return a, min(b, limit)


def _inpaint_core(components: Components, runner: Runner, cond: Conditioning, sampling: Sampling, image_u8: np.ndarray,
                  mask: np.ndarray, *, capture: bool, progress: Progress) -> tuple[np.ndarray, AttentionMaps]:
    H, W = mask.shape
    f = components.vae_scale_factor
    lh, lw = H // f, W // f
    img_t = _to_tensor(image_u8, components)
    mask_t = mask.astype(np.float32)[None, None]
    blend = extra = None
    in_channels = int(runner.in_channels)  # the UNet that runs decides
    if in_channels == 4:
        x0 = encode_image(components, img_t)
        # a latent cell changes if any of its pixels does (max-pool by the VAE factor)
        m_lat = mask_t[:, :, : lh * f, : lw * f].reshape(1, 1, lh, f, lw, f).max(axis=(3, 5))
        blend = (x0, m_lat)
    elif in_channels == 9:
        masked = img_t * (mask_t < 0.5)
        masked_latents = encode_image(components, masked)
        m_lat = mask_t[:, :, :: f, :: f][:, :, :lh, :lw]  # nearest, as F.interpolate(size=(lh, lw)) at this factor
        extra = np.concatenate([m_lat, masked_latents], axis=1).astype(np.float32)
    else:
        raise AttuneError(f"This UNet takes {in_channels} input channels; inpainting needs 4 or 9.")
    latents, maps = denoise(components, runner, cond, sampling, (lh, lw), (H, W), capture=capture,
                            inpaint=InpaintLatents(blend, extra), hooks=StepHooks(progress=progress))
    return decode_latents(components, latents), maps


def is_small_mask(mask: np.ndarray) -> bool:
    """A non-empty mask whose box spans at most AUTO_CROP_MAX of the image's width and height (auto_crop_padding's
    "small"): enough of the image shows around it to carry the scene's context, e.g. its time of day."""
    mask = np.asarray(mask, dtype=bool)
    return bool(mask.any()) and auto_crop_padding(mask, 0) is not None


def auto_crop_padding(mask: np.ndarray, padding: int, limit: float = AUTO_CROP_MAX) -> int | None:
    """The padding of an automatic only-masked crop, or None when the mask is not small. Small: its box spans at most
    `limit` of the image's width and height; at the full image's scale a plain model then draws the object too small
    or beside the box. The crop keeps at least the box's own size of context on each side: with less, the model
    paints a whole little scene (sky over ground) into the box."""
    H, W = mask.shape
    ys, xs = np.nonzero(mask)
    box_w, box_h = int(xs.max()) + 1 - int(xs.min()), int(ys.max()) + 1 - int(ys.min())
    if box_w > limit * W or box_h > limit * H:
        return None
    return max(int(padding), box_w, box_h)


def inpaint(components: Components, runner: Runner, cond: Conditioning, sampling: Sampling, *, image: Image.Image,
            mask: np.ndarray, settings: InpaintSettings = INPAINT_DEFAULTS, capture: bool = True,
            progress: Progress = None) -> SampleOutput:
    """Inpaint `image` where `mask` is True; every pixel outside the mask stays exactly the original.
    settings.auto_crop: a small mask works only-masked even when only_masked is False (auto_crop_padding())."""
    mask_blur, only_masked, padding = settings.mask_blur, settings.only_masked, settings.padding
    original = np.asarray(image.convert("RGB"), dtype=np.uint8)
    mask = bool_mask(mask)
    if mask.shape != original.shape[:2]:
        raise AttuneError(f"The mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                          f"{original.shape[1]}x{original.shape[0]}; they must match.")
    if not mask.any():
        raise AttuneError("The mask is empty: paint the area to change first.")
    H, W = mask.shape
    f = components.vae_scale_factor
    t0 = time.perf_counter()
    auto_padding = auto_crop_padding(mask, int(padding)) if settings.auto_crop and not only_masked else None
    info: dict = {"only_masked": bool(only_masked) or auto_padding is not None}
    if auto_padding is not None:
        info["auto_crop"] = True
        padding = auto_padding
    if info["only_masked"]:
        x1, y1, x2, y2 = crop_region(mask, int(padding), (W, H))
        info["crop_box"] = [x1, y1, x2, y2]
        crop = Image.fromarray(original[y1:y2, x1:x2])
        crop_mask = Image.fromarray(mask[y1:y2, x1:x2].astype(np.uint8) * 255, mode="L")
        work_w, work_h = W - W % f, H - H % f  # work at the full resolution
        work_img = np.asarray(crop.resize((work_w, work_h), Image.LANCZOS), dtype=np.uint8)
        work_mask = np.asarray(crop_mask.resize((work_w, work_h), Image.NEAREST)) > 127
        if not work_mask.any():
            work_mask = np.ones_like(work_mask)
        gen, maps = _inpaint_core(components, runner, cond, sampling, work_img, work_mask, capture=capture,
                                  progress=progress)
        gen_crop = np.asarray(Image.fromarray(gen).resize((x2 - x1, y2 - y1), Image.LANCZOS), dtype=np.uint8)
        generated = original.copy()
        generated[y1:y2, x1:x2] = gen_crop
        maps.region = (x1, y1, x2, y2)
        maps.image_hw = (H, W)
    else:
        if H % f or W % f:
            raise AttuneError(f"The image is {W}x{H}; its sides must be multiples of {f} (or use only-masked).")
        generated, maps = _inpaint_core(components, runner, cond, sampling, original, mask, capture=capture,
                                        progress=progress)
    t1 = time.perf_counter()
    info["before_paste"] = generated  # the model's output before paste-back (benchmarks measure it)
    out = paste_back(original, generated, feather_alpha(mask, int(mask_blur)))
    t2 = time.perf_counter()
    return SampleOutput(Image.fromarray(out), maps, {"denoise+decode": t1 - t0, "paste": t2 - t1}, info)
