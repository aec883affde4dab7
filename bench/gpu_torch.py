"""PyTorch UNet speed on a GPU at SD-2.1 size: attention maps off (stock processors) vs on (Attune's processor).

Standalone: needs only torch, diffusers and this repository's engine/attention/processor.py. Random weights (no downloads).

    python -m bench.gpu_torch [--json] [--calls 10] [--warmup 3]
    python -m bench.gpu_torch --dry-run      # tiny config on CPU: checks the script, numbers mean nothing

The UNet config is SD 2.1's (768 px -> 96x96 latent), fp16, batch 2 (classifier-free guidance: [uncond, cond]).
"maps on" records the head-averaged cross-attention maps of the conditional row on every attn2 layer, as the app does.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

from bench import machine

SD21_UNET = dict(
    sample_size=96,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20),  # diffusers' legacy name: these are head counts (head dim 64)
    cross_attention_dim=1024,
    use_linear_projection=True,
    upcast_attention=True,
)
DRY_RUN_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=8,
    cross_attention_dim=32,
    norm_num_groups=8,
    use_linear_projection=True,
)
SEQ_LEN = 77
TIME_BUDGET_S = 50.0  # the whole run must finish within 60 s on the lent machine


def _engine_attention():
    """Attune's processor, imported from the repository (the device gets the whole working tree)."""
    from engine.attention import processor as attention

    return attention


def _make_control(attention, *, capture: bool, cond_rows: int):
    try:
        control = attention.AttentionControl()
    except TypeError:  # constructor with required arguments
        control = attention.AttentionControl(capture=capture, cond_rows=cond_rows)
    control.capture = capture
    control.cond_rows = cond_rows
    control.key_scale = None
    control.value_scale = None
    return control


def _time_calls(torch, unet, inputs, *, warmup: int, calls: int, sync, deadline: float) -> list[float]:
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            unet(*inputs, return_dict=False)
        sync()
        for _ in range(calls):
            if times and time.perf_counter() > deadline:
                break  # keep inside the time budget; report fewer calls rather than overrun
            start = time.perf_counter()
            unet(*inputs, return_dict=False)
            sync()
            times.append(time.perf_counter() - start)
    return times


def run(*, dry_run: bool, calls: int, warmup: int) -> dict:
    t_start = time.perf_counter()
    import torch
    import diffusers
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    if dry_run:
        device, dtype, config = torch.device("cpu"), torch.float32, DRY_RUN_UNET
        calls, warmup = min(calls, 2), 1

        def sync():
            pass

    else:
        device, dtype, config = torch.device("cuda"), torch.float16, SD21_UNET
        sync = torch.cuda.synchronize
        torch.backends.cuda.matmul.allow_tf32 = True

    torch.manual_seed(0)
    with torch.device(device):  # build the weights on the device: CPU init of 865M params would eat the budget
        unet = UNet2DConditionModel(**config)
    unet = unet.to(device=device, dtype=dtype).eval()
    # stock SDPA processors everywhere (not set_default_attn_processor(): that picks the slow non-SDPA AttnProcessor)
    unet.set_attn_processor(AttnProcessor2_0())
    stock_processors = dict(unet.attn_processors)
    n_params = sum(p.numel() for p in unet.parameters())

    latent = config["sample_size"]
    batch = 2
    sample = torch.randn(batch, config["in_channels"], latent, latent, device=device, dtype=dtype)
    timestep = torch.tensor(500, device=device)
    context = torch.randn(batch, SEQ_LEN, config["cross_attention_dim"], device=device, dtype=dtype)
    inputs = (sample, timestep, context)
    deadline = t_start + TIME_BUDGET_S

    attention = _engine_attention()
    rows = {}
    rows["maps off (stock processors)"] = _time_calls(
        torch, unet, inputs, warmup=warmup, calls=calls, sync=sync, deadline=deadline
    )

    control = _make_control(attention, capture=False, cond_rows=batch // 2)
    restore = attention.install(unet, control)
    try:
        rows["maps off (Attune processor)"] = _time_calls(
            torch, unet, inputs, warmup=warmup, calls=calls, sync=sync, deadline=deadline
        )
        control.capture = True
        rows["maps on (Attune processor)"] = _time_calls(
            torch, unet, inputs, warmup=warmup, calls=calls, sync=sync, deadline=deadline
        )
        n_map_layers = len(control.maps)
        map_shapes = sorted({tuple(m.shape) for m in control.maps.values()})
        # score reweighting on the cond row as well: a per-token key scale
        key_scale = torch.ones(batch, SEQ_LEN, device=device, dtype=dtype)
        key_scale[-1, 3] = 1.5
        control.key_scale = key_scale
        rows["maps on + score weight"] = _time_calls(
            torch, unet, inputs, warmup=warmup, calls=calls, sync=sync, deadline=deadline
        )
    finally:
        if callable(restore):
            restore()
        else:
            unet.set_attn_processor(stock_processors)

    medians = {name: statistics.median(t) * 1000 for name, t in rows.items()}
    base = medians["maps off (stock processors)"]
    result = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (dry run)",
        "dry_run": dry_run,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "config": (
            "SD 2.1 UNet, 768 px (latent 96x96), fp16, batch 2" if not dry_run else "tiny dry-run UNet, fp32, batch 2"
        ),
        "unet_params_m": round(n_params / 1e6, 1),
        "stock_processor": sorted({type(p).__name__ for p in stock_processors.values()}),
        "map_layers": n_map_layers,
        "map_shapes": [list(s) for s in map_shapes],
        "median_ms": {k: round(v, 3) for k, v in medians.items()},
        "calls": {k: len(v) for k, v in rows.items()},
        "maps_on_overhead": round(medians["maps on (Attune processor)"] / base - 1, 4),
        "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    return result


def print_table(result: dict) -> None:
    print(f"{result['config']}  ({result['unet_params_m']} M params)")
    print(
        f"device: {result['device']}  torch {result['torch']}  diffusers {result['diffusers']}  "
        f"python {result['python']}"
    )
    print(f"{result['map_layers']} cross-attention layers recorded, map shapes {result['map_shapes']}")
    base = result["median_ms"]["maps off (stock processors)"]
    print(f"{'per UNet call':32s} {'median ms':>10s} {'vs stock':>9s} {'calls':>6s}")
    for name, ms in result["median_ms"].items():
        print(f"{name:32s} {ms:10.2f} {ms / base:8.2f}x {result['calls'][name]:6d}")
    print(
        f"maps-on overhead: {result['maps_on_overhead'] * 100:+.1f}%   peak memory: {result['peak_mem_gb']} GB   "
        f"total {result['total_s']} s"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_torch", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    parser.add_argument("--calls", type=int, default=10, help="timed UNet calls per row (median is reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dry-run", action="store_true", help="tiny config on CPU, to check the script without a GPU")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.warmup < 0:
        print("error: --calls must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2

    try:
        import torch
    except ImportError:
        print("error: torch is not installed", file=sys.stderr)
        return 2
    if not args.dry_run and not torch.cuda.is_available():
        message = "no CUDA device: this benchmark times the GPU path (use --dry-run to check it on CPU)"
        print(json.dumps({"skipped": message}) if args.json else message)
        return 0
    try:
        _engine_attention()
    except ImportError as exc:
        print(
            f"error: cannot import engine.attention.processor from the repository ({exc}); run from the repo root",
            file=sys.stderr,
        )
        return 2

    result = run(dry_run=args.dry_run, calls=args.calls, warmup=args.warmup)
    return machine.print_result(result, args.json, print_table)


if __name__ == "__main__":
    sys.exit(main())
