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

Who may call: with $ATTUNE_SERVER_TOKEN set where build_app runs, every request must carry it as
`Authorization: Bearer <token>` (401 otherwise). Without it, replicas answer loopback clients only (403 otherwise),
and Serve's HTTP proxy should listen on 127.0.0.1 (its default; docs/scale.md says how to keep Ray's ports private).
Every request is checked before it runs (engine.remote.client.parse_request): a bad one is answered 4xx in one line.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from engine.remote import client as remote
from engine.errors import AttuneError
from engine.remote.client import TOKEN_ENV, BadRequest

logger = logging.getLogger("attune.serve")
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
        self.token = server_token()
        set_size = getattr(self._work, "set_max_batch_size", None)  # Ray's batch decorator, not the engine
        if set_size is not None:
            set_size(max(1, int(max_batch)))

    def handle(self, request: dict) -> dict:
        """One checked request (engine.remote.client.parse_request), in a worker thread: {'ok': True, ...} or
        {'ok': False, 'error': one line, 'status': 4xx}."""
        try:
            answer = remote.run_request(self.engine, request)
        except AttuneError as error:
            return {"ok": False, "error": remote.first_line(error), "status": getattr(error, "status", 400)}
        except (KeyError, TypeError, ValueError) as error:
            return {"ok": False, "error": f"Malformed {request.get('op')} request ({type(error).__name__}: "
                                          f"{remote.first_line(error)}).", "status": 400}
        if request["op"] == "info":
            answer["batching"] = self.engine.batcher is not None and self.engine.batcher.stacking
        return answer

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005, max_concurrent_batches=8)
    async def _work(self, requests: list[dict]) -> list[dict]:
        """Requests that arrived together: each in its own thread, so the engine's batcher stacks their steps."""
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(loop.run_in_executor(self.pool, self.handle, r) for r in requests)))

    async def __call__(self, http: Request) -> JSONResponse:
        try:
            request = await admit(http, self.token)
        except BadRequest as error:
            return refusal(error)
        if request["op"] in ("info", "tokenize"):
            loop = asyncio.get_running_loop()
            answer = await loop.run_in_executor(self.pool, self.handle, request)
        else:
            answer = await self._work(request)
        status = 200 if answer.get("ok") else int(answer.pop("status", 400))
        return JSONResponse(answer, status_code=status)

    def check_health(self) -> None:
        if self.engine is None:
            raise RuntimeError("no engine")


def server_token() -> str | None:
    return os.environ.get(TOKEN_ENV, "").strip() or None


def is_loopback(host) -> bool:
    try:
        return ipaddress.ip_address(str(host)).is_loopback
    except ValueError:
        return str(host) == "localhost"


async def admit(http: Request, token: str | None) -> dict:
    """The checked request of an HTTP call, or BadRequest: the caller (token, or loopback when the server has none),
    the body's size (read no further than the limit) and its content (engine.remote.client.parse_request)."""
    if token:
        remote.check_token(token, http.headers.get("authorization"))
    elif not is_loopback(http.client.host if http.client else None):
        raise BadRequest(f"This Attune server has no {TOKEN_ENV}, so it answers requests from its own machine only.",
                         403)
    declared = http.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > remote.MAX_REQUEST_BYTES:
        raise BadRequest(f"The request is {declared} bytes; the limit is {remote.MAX_REQUEST_BYTES}.", 413)
    body = bytearray()
    async for chunk in http.stream():
        body += chunk
        if len(body) > remote.MAX_REQUEST_BYTES:
            raise BadRequest(f"The request is more than {remote.MAX_REQUEST_BYTES} bytes, the limit.", 413)
    return remote.parse_request(bytes(body))


def refusal(error: BadRequest) -> JSONResponse:
    return JSONResponse({"ok": False, "error": remote.first_line(error)}, status_code=error.status)


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
    token = server_token()
    if token:
        env[TOKEN_ENV] = token  # replicas may run on other nodes: they get the token from here
    else:
        logger.warning("%s is not set: the Attune server answers requests from this machine (127.0.0.1) only.",
                       TOKEN_ENV)
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
