"""The Attune engine as a Ray Serve deployment, for studies that outgrow one machine.

    serve run engine.remote.server:app                                  # one replica, CPU, the built-in model
    serve run engine.remote.server:build_app replicas=2 num_gpus=1      # two replicas with a GPU each
    ATTUNE_SERVER=http://HOST:8000 streamlit run Home.py         # the app sends its work there

Each replica holds one engine with batching on (engine.runners.batching): `@serve.batch` gathers the requests that reach
the replica together and runs each in its own thread, so their UNet steps are stacked into shared calls. The
replica returns image + maps + timings (engine.remote.client's JSON); the client's Studio writes files and log rows.

Only this module imports Ray (requirements-serve.txt); the app and CLI talk to it over plain HTTP.
Settings (arguments of build_app, or $ATTUNE_SERVE_<NAME> for `engine.remote.server:app`): model, backend (torch),
replicas, num_cpus, num_gpus, window_ms, max_batch, threads.
"""
from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from engine.errors import AttuneError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = {"model": None, "backend": "torch", "replicas": 1, "num_cpus": 1.0, "num_gpus": 0.0, "window_ms": 5.0,
            "max_batch": 8, "threads": 0}


class AttuneServer:
    """One replica: an engine with batching, answering engine.remote.client's JSON requests."""

    def __init__(self, model=None, backend: str = "torch", device: str = "cpu", window_ms: float = 5.0,
                 max_batch: int = 8, threads: int = 0) -> None:
        import torch

        from engine.pipeline.attune import Attune

        if threads:
            torch.set_num_threads(int(threads))
        self.engine = Attune(model, backend=backend, device=device, batch_window_ms=window_ms)
        self.pool = ThreadPoolExecutor(max_workers=max(1, int(max_batch)), thread_name_prefix="attune-request")
        self.replica = os.environ.get("RAY_SERVE_REPLICA_ID", "") or f"pid{os.getpid()}"
        set_size = getattr(self._work, "set_max_batch_size", None)  # optional Ray Serve feature (newer versions)
        if set_size is not None:
            set_size(max(1, int(max_batch)))

    def info(self) -> dict:
        e = self.engine
        return {"model_id": e.model_id, "weights_hash": e.weights_hash, "backend": e.backend_name,
                "device": e.device, "vae_scale_factor": int(e.components.vae_scale_factor),
                "sample_size": int(e.components.sample_size),
                "unet_in_channels": int(e.components.unet_in_channels),
                "known_words": sorted(e.components.known_words) if e.components.known_words else None,
                "batching": e.batcher is not None and e.batcher.stacking, "batching_reason": e.batching_reason,
                "replica": self.replica, "pid": os.getpid()}

    def handle(self, request: dict) -> dict:
        """One request, in a worker thread: {'ok': True, ...result} or {'ok': False, 'error': message}."""
        from engine.remote import client as remote

        op = request.get("op")
        try:
            if op == "info":
                return {"ok": True, **self.info()}
            if op == "tokenize":
                tokens = self.engine.tokenize(str(request.get("prompt", "")), str(request.get("syntax", "a1111")))
                return {"ok": True, "word_tokens": remote.dataclasses.asdict(tokens)}
            if op == "generate":
                result = self.engine.generate(remote.params_from(request["params"]))
            elif op == "inpaint":
                result = self.engine.inpaint(remote.inpaint_params_from(request))
            else:
                return {"ok": False, "error": f"Unknown request '{op}': generate, inpaint, tokenize or info."}
        except AttuneError as error:
            return {"ok": False, "error": str(error)}
        except (KeyError, TypeError, ValueError) as error:
            return {"ok": False, "error": f"Malformed {op} request ({type(error).__name__}: {error})."}
        out = remote.result_dict(result)
        out.update(ok=True, replica=self.replica)
        return out

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005, max_concurrent_batches=8)
    async def _work(self, requests: list[dict]) -> list[dict]:
        """Requests that arrived together: each in its own thread, so the engine's batcher stacks their steps."""
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(loop.run_in_executor(self.pool, self.handle, r) for r in requests)))

    async def __call__(self, http: Request) -> JSONResponse:
        try:
            request = await http.json()
        except ValueError:
            return JSONResponse({"ok": False, "error": "The request body must be JSON."}, status_code=400)
        if not isinstance(request, dict):
            return JSONResponse({"ok": False, "error": "The request must be a JSON object."}, status_code=400)
        if request.get("op") in ("info", "tokenize"):
            loop = asyncio.get_running_loop()
            answer = await loop.run_in_executor(self.pool, self.handle, request)
        else:
            answer = await self._work(request)
        return JSONResponse(answer, status_code=200 if answer.get("ok") else 400)

    def check_health(self) -> None:
        if self.engine is None:
            raise RuntimeError("no engine")


def _settings(args: dict | None) -> dict:
    settings = dict(DEFAULTS)
    for name in DEFAULTS:
        env = os.environ.get(f"ATTUNE_SERVE_{name.upper()}")
        if env:
            settings[name] = env
    for name, value in dict(args or {}).items():
        if name not in DEFAULTS:
            raise AttuneError(f"Unknown server setting '{name}': choose from {', '.join(DEFAULTS)}.")
        settings[name] = value
    try:
        for name in ("replicas", "max_batch", "threads"):
            settings[name] = int(settings[name])
        for name in ("num_cpus", "num_gpus", "window_ms"):
            settings[name] = float(settings[name])
    except (TypeError, ValueError):
        raise AttuneError("Server settings replicas, max_batch, threads, num_cpus, num_gpus, window_ms are numbers.")
    return settings


def build_app(args: dict | None = None):
    """The Serve application (an application builder: `serve run engine.remote.server:build_app key=value ...`)."""
    s = _settings(args)
    env = {"MKL_CBWR": os.environ.get("MKL_CBWR", "AUTO,STRICT"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    # Several request threads call torch at once in a replica: spinning OpenMP threads would steal each other's cores
    env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
    if os.environ.get("ATTUNE_CACHE"):
        env["ATTUNE_CACHE"] = os.environ["ATTUNE_CACHE"]
    deployment = serve.deployment(
        AttuneServer,
        name="AttuneServer",
        num_replicas=s["replicas"],
        ray_actor_options={"num_cpus": s["num_cpus"], "num_gpus": s["num_gpus"], "runtime_env": {"env_vars": env}},
        max_ongoing_requests=max(2, 2 * s["max_batch"]),
        health_check_period_s=2.0,
        health_check_timeout_s=30.0,
    )
    return deployment.bind(s["model"], s["backend"], "cuda" if s["num_gpus"] > 0 else "cpu", s["window_ms"],
                           s["max_batch"], s["threads"])


def __getattr__(name: str):
    if name == "app":  # `serve run engine.remote.server:app`: built on first use, from $ATTUNE_SERVE_* settings
        return build_app()
    raise AttributeError(f"module 'engine.remote.server' has no attribute {name!r}")
