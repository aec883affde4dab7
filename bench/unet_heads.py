"""UNet call speed by attention head layout: the same weights under two `attention_head_dim` settings.

    python -m bench.unet_heads [--model PATH] [--heads 32 2,4,5] [--calls N] [--threads N] [--json] [--out FILE]

diffusers reads UNet2DConditionModel's `attention_head_dim` as the number of heads per block (a naming quirk), so
`32` on 64/128/160 channels means 32 heads of width 2-5, while `[2, 4, 5]` means heads of width 32. The q/k/v/out
weights have the same shapes either way, so one checkpoint loads into both; only the speed (and, until fine-tuned,
the output) differs. Times: median ms of one classifier-free-guidance UNet call (batch 2, 16x16 latents, no grad)
and of one training step (batch 32, forward + backward), measured round-robin.

    python -m bench.unet_heads --app [--model PATH] [--heads32 2,4,5] [--rounds N] [--repeats N] [--json] [--out FILE]

--app: what a user of the app would wait for with 32-wide heads, before any retrain. It writes a copy of the model
folder whose UNet holds the same weights under `attention_head_dim` [2, 4, 5] (no inpainting UNet), ships its ONNX
graphs, and runs bench.app's Generate click (light runtime) on it and on the model itself, alternating for --rounds
rounds, each in a fresh server. Same weight shapes, so the same FLOPs outside attention as a model retrained with
that layout; its images are noise, since the weights were trained for 32 heads (speed only).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench import machine
from bench.speed import time_interleaved

ROOT = Path(__file__).resolve().parents[1]


def _heads(text: str):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"head counts are whole numbers, comma-separated (e.g. 2,4,5), not '{text}'")
    return values[0] if len(values) == 1 else values


def run(model: Path, heads: list, calls: int, threads: int) -> dict:
    import torch
    from diffusers import UNet2DConditionModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    source = UNet2DConditionModel.from_pretrained(model / "unet", torch_dtype=torch.float32)
    config = dict(source.config)
    unets = {}
    for h in heads:
        unet = UNet2DConditionModel.from_config({**config, "attention_head_dim": h})
        unet.load_state_dict(source.state_dict())
        unets[json.dumps(h)] = unet
    c = int(config["in_channels"])
    x, t, e = torch.randn(2, c, 16, 16), torch.tensor([500, 500]), torch.randn(2, 77, config["cross_attention_dim"])
    xb, tb, eb = torch.randn(32, c, 16, 16), torch.randint(0, 1000, (32,)), torch.randn(32, 77, config["cross_attention_dim"])

    def call(unet):
        def fn():
            with torch.no_grad():
                unet(x, t, e)
        return fn

    def train_step(unet):
        def fn():
            unet.zero_grad(set_to_none=True)
            unet(xb, tb, eb).sample.square().mean().backward()
        return fn

    call_ms = time_interleaved({k: call(u) for k, u in unets.items()}, repeats=calls)
    step_ms = time_interleaved({k: train_step(u) for k, u in unets.items()}, repeats=max(3, calls // 10), warmup=1)
    widths = {k: sorted({m.inner_dim // m.heads for n, m in u.named_modules() if n.endswith("attn2")})
              for k, u in unets.items()}
    rows = [{"attention_head_dim": json.loads(k), "head_widths": widths[k], "heads": [m.heads for n, m in
             unets[k].named_modules() if n.endswith("attn2")], "unet_call_ms": round(call_ms[k], 2),
             "train_step_ms": round(step_ms[k], 1)} for k in unets]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    shown = model.resolve().relative_to(ROOT) if model.resolve().is_relative_to(ROOT) else model
    return {"command": "python -m bench.unet_heads " + " ".join(sys.argv[1:]), "commit": commit, "model": str(shown),
            "machine": machine.machine_info(threads=threads, torch=torch.__version__), "rows": rows}


def print_table(r: dict) -> None:
    m = r["machine"]
    print(f"UNet speed by head layout, {r['model']} ({m['cpu']}, {m['cores']} cores, {m['threads']} threads)")
    print("| attention_head_dim | heads per attention layer | head width | UNet call, CFG batch 2 (ms) | train step, batch 32 (ms) |")
    print("|---|---|---|---|---|")
    for row in r["rows"]:
        print(f"| {row['attention_head_dim']} | {row['heads']} | {row['head_widths']} | {row['unet_call_ms']} | {row['train_step_ms']} |")


def layout_error(model: Path, heads) -> str | None:
    """Why `heads` cannot regroup this model's attention (each block's channels must split into that many heads)."""
    try:
        channels = json.loads((model / "unet" / "config.json").read_text())["block_out_channels"]
    except (OSError, ValueError, KeyError):
        return f"{model} has no diffusers UNet config (unet/config.json)."
    counts = heads if isinstance(heads, list) else [heads] * len(channels)
    if len(counts) != len(channels):
        return f"{len(counts)} head counts for {len(channels)} blocks ({channels} channels)."
    bad = [f"{c} channels into {h}" for c, h in zip(channels, counts) if h < 1 or c % h]
    return f"the heads do not split the channels: {', '.join(bad)}." if bad else None


def regrouped_folder(model: Path, heads, out: Path) -> Path:
    """A copy of `model` (text encoder, tokenizer, VAE, scheduler, attune.json) whose UNet is the model's own weights
    under attention_head_dim=heads, with its ONNX graphs shipped. No inpainting UNet: the click is text-to-image."""
    import shutil

    import torch
    from diffusers import UNet2DConditionModel

    from export.onnx import ship

    out.mkdir(parents=True, exist_ok=True)
    for entry in model.iterdir():
        if entry.name in ("unet", "unet_inpaint", "onnx"):
            continue
        (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, out / entry.name)
    index = json.loads((out / "model_index.json").read_text())
    index.pop("unet_inpaint", None)
    (out / "model_index.json").write_text(json.dumps(index, indent=1))
    source = UNet2DConditionModel.from_pretrained(model / "unet", torch_dtype=torch.float32)
    unet = UNet2DConditionModel.from_config({**dict(source.config), "attention_head_dim": heads})
    unet.load_state_dict(source.state_dict())
    unet.save_pretrained(out / "unet")
    ship(out)
    return out


def run_app(model: Path, heads, rounds: int, repeats: int) -> dict:
    """bench.app's Generate click on the model and on its regrouped copy, alternating, one fresh server each."""
    import statistics
    import tempfile

    from bench import app

    with tempfile.TemporaryDirectory(prefix="attune-heads-") as tmp:
        regrouped = regrouped_folder(model, heads, Path(tmp) / "model")
        variants = {"32 heads (the model)": str(model), f"{heads} (same weights)": str(regrouped)}
        runs = {name: [] for name in variants}
        for _ in range(rounds):
            for name, path in variants.items():
                runs[name].append(app.run(path, app.model_default_steps(path), repeats, None, backend="onnx"))
    rows = []
    for name, results in runs.items():
        clicks = [t for r in results for t in r["generate_s"]]
        rows.append({"variant": name, "round_medians_s": [r["generate_median_s"] for r in results],
                     "click_median_s": round(statistics.median(clicks), 3),
                     "server_cpu_median_s": round(statistics.median([c for r in results for c in r["generate_cpu_s"]]), 3),
                     "rss_after_first_image_mb": [r["rss_after_first_image_mb"] for r in results],
                     "load_average_before": [r["load_average_before"][0] for r in results], "clicks_s": clicks})
    shown = model.resolve().relative_to(ROOT) if model.resolve().is_relative_to(ROOT) else model
    return {"command": "python -m bench.unet_heads " + " ".join(sys.argv[1:]), "model": str(shown),
            "machine": machine.machine_info(), "steps": app.model_default_steps(str(model)), "rounds": rounds, "repeats": repeats,
            "timing": "bench.app: browser clock, click received -> new image loaded on the page", "app_rows": rows}


def print_app_table(r: dict) -> None:
    m = r["machine"]
    print(f"Generate click by UNet head layout, {r['model']}, {r['steps']} steps, light runtime "
          f"({m['cpu']}, {m['cores']} cores; {r['rounds']} alternating rounds of {r['repeats']} clicks)")
    print("| UNet | click -> image, median s | per round | server CPU s per click |")
    print("|---|---|---|---|")
    for row in r["app_rows"]:
        print(f"| {row['variant']} | {row['click_median_s']:.2f} | {', '.join(f'{x:.2f}' for x in row['round_medians_s'])} "
              f"| {row['server_cpu_median_s']:.2f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / "models" / "tiny-scenes")
    p.add_argument("--heads", nargs="+", type=_heads, default=[32, [2, 4, 5]], help="attention_head_dim values")
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--app", action="store_true", help="time bench.app's Generate click instead (see above)")
    p.add_argument("--heads32", type=_heads, default=[2, 4, 5], help="--app: the layout to compare with the model's")
    p.add_argument("--rounds", type=int, default=3, help="--app: alternating rounds")
    p.add_argument("--repeats", type=int, default=15, help="--app: clicks per server")
    args = p.parse_args(argv)
    for heads in [args.heads32] if args.app else args.heads:
        error = layout_error(args.model, heads)
        if error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    if args.app:
        result = run_app(args.model, args.heads32, args.rounds, args.repeats)
    else:
        result = run(args.model, args.heads, args.calls, args.threads)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return machine.print_result(result, args.json, print_app_table if args.app else print_table)


if __name__ == "__main__":
    sys.exit(main())
