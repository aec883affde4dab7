"""Send generate / inpaint to an Attune server (engine.remote.server on Ray Serve) instead of running them here.

`RemoteEngine(url)` has the engine interface the Studio uses (generate, inpaint, tokenize, components.model_id /
weights_hash, close), so a participant's Studio still writes the image, maps and log rows into this app's storage;
the server only computes and returns image + maps + timing. Plain HTTP + JSON through the standard library.

`make_engine(model, backend, server=None)`: a RemoteEngine when `server` or $ATTUNE_SERVER is set, else a local
engine.pipeline.attune.Attune.

Failures are one-line `ServerError`s (an AttuneError) that keep the request (`error.request`) so the caller can
offer to run it again; nothing is written for a failed request. A call never waits longer than `timeout` seconds
in all (no replica, a replica restarting, an overloaded server). Connection failures and 5xx answers (a replica
that died, none ready yet) are tried again while time is left: a request has no server-side state, so running it
again gives the same image.
"""
from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass, field
import io
import json
import os
import socket
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from engine.defaults import INPAINT_DEFAULTS
from engine.errors import AttuneError

SERVER_ENV = "ATTUNE_SERVER"
TIMEOUT_ENV = "ATTUNE_SERVER_TIMEOUT"
DEFAULT_TIMEOUT = 300.0
RETRY_PAUSE = 1.0


class ServerError(AttuneError):
    """A request the server did not complete. `request` is what was sent (kept, to run again)."""

    def __init__(self, message: str, request: dict | None = None) -> None:
        super().__init__(message)
        self.request = request


# ---------------------------------------------------------------------------------------------- wire format
def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def image_from_b64(text: str) -> Image.Image:
    with Image.open(io.BytesIO(base64.b64decode(text))) as opened:
        return opened.convert("RGB")


def mask_b64(mask: np.ndarray) -> str:
    return png_b64(Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, mode="L"))


def mask_from_b64(text: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(text))) as opened:
        return np.asarray(opened.convert("L")) > 127


def maps_b64(maps) -> str:
    """AttentionMaps as its own npz (fp16 sums: what the Studio stores anyway)."""
    with tempfile.TemporaryDirectory() as folder:
        path = maps.save(Path(folder) / "maps.npz")
        return base64.b64encode(path.read_bytes()).decode("ascii")


def maps_from_b64(text: str):
    from engine.attention.maps import AttentionMaps

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "maps.npz"
        path.write_bytes(base64.b64decode(text))
        return AttentionMaps.load(path)


def params_dict(params) -> dict:
    return dataclasses.asdict(params)


def params_from(data: dict):
    from engine.pipeline.params import GenerateParams

    names = {f.name for f in dataclasses.fields(GenerateParams)}
    return GenerateParams(**{k: v for k, v in dict(data).items() if k in names})


def generate_request(params) -> dict:
    return {"op": "generate", "params": params_dict(params)}


def inpaint_request(params) -> dict:
    return {"op": "inpaint", "params": params_dict(params.base), "image_png": png_b64(params.image),
            "mask_png": mask_b64(params.mask), "mask_blur": params.mask_blur, "only_masked": params.only_masked,
            "padding": params.padding, "auto_crop": params.auto_crop}


def inpaint_params_from(request: dict):
    """InpaintParams from an inpaint_request (the server's side)."""
    from engine.pipeline.params import InpaintParams

    return InpaintParams(base=params_from(request["params"]), image=image_from_b64(request["image_png"]),
                         mask=mask_from_b64(request["mask_png"]), mask_blur=request.get("mask_blur", INPAINT_DEFAULTS.mask_blur),
                         only_masked=request.get("only_masked", INPAINT_DEFAULTS.only_masked),
                         padding=request.get("padding", INPAINT_DEFAULTS.padding),
                         auto_crop=request.get("auto_crop", INPAINT_DEFAULTS.auto_crop))


def result_dict(result) -> dict:
    return {"image_png": png_b64(result.image), "maps_npz": maps_b64(result.maps),
            "word_tokens": dataclasses.asdict(result.word_tokens), "backend": result.backend,
            "device": str(result.device), "fallback_reason": result.fallback_reason,
            "timings": {k: float(v) for k, v in result.timings.items()},
            "params": params_dict(result.params) if result.params is not None else None,
            "info": info_dict(result.info)}


def info_dict(info) -> dict:
    """The JSON part of Result.info. Arrays (inpaint's `before_paste`, a benchmark aid) stay on the server: JSON
    cannot carry them, and an answer that fails to encode would lose the whole image."""
    out = {}
    for key, value in dict(info or {}).items():
        if isinstance(value, np.generic):
            value = value.item()
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        out[str(key)] = value
    return out


def result_from(data: dict):
    from engine.pipeline.params import Result
    from engine.words.prompt import WordTokens

    timings = dict(data.get("timings") or {})
    return Result(image=image_from_b64(data["image_png"]), maps=maps_from_b64(data["maps_npz"]),
                  word_tokens=WordTokens(**data["word_tokens"]), backend=data["backend"], device=data["device"],
                  fallback_reason=data.get("fallback_reason"), timings=timings,
                  params=params_from(data["params"]) if data.get("params") else None, info=dict(data.get("info") or {}))


# ---------------------------------------------------------------------------------------------- client
def _first_line(text: str) -> str:
    return (str(text).strip().splitlines() or [""])[0][:300]


@dataclass
class RemoteComponents:
    """The model facts a server reports (engine.protocols.Components); its encoders and VAE run on the server."""

    model_id: str
    weights_hash: str
    vae_scale_factor: int
    unet_in_channels: int
    sample_size: int | None
    known_words: set[str] | None
    device: str = "remote"
    backend: str = "remote"
    path: Path | None = None
    tokenizer: None = None  # the server tokenizes (RemoteEngine.tokenize)
    scheduler_config: dict = field(default_factory=dict)
    latent_channels: int = 4

    def encode_text(self, input_ids: list[int]) -> np.ndarray:
        raise AttuneError("This engine runs on a server: the prompt is encoded there.")

    def encode_image(self, image: np.ndarray) -> np.ndarray:
        raise AttuneError("This engine runs on a server: images are encoded there.")

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        raise AttuneError("This engine runs on a server: latents are decoded there.")

    def release_memory(self) -> None:
        pass


class RemoteEngine:
    """The engine interface, computed by an Attune server. Thread-safe (one HTTP request per call)."""

    def __init__(self, url: str, *, timeout: float | None = None, retries: int = 2) -> None:
        url = str(url or "").strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise AttuneError(f"The server address must start with http:// or https://, got '{url}'.")
        self.url = url
        if timeout is None:
            text = os.environ.get(TIMEOUT_ENV, "").strip()
            try:
                timeout = float(text) if text else DEFAULT_TIMEOUT
            except ValueError:
                raise AttuneError(f"{TIMEOUT_ENV} must be a number of seconds, not '{text}'.") from None
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self._info: dict | None = None
        self.batcher = None
        self.fallback_reason = None

    # ---- engine interface ------------------------------------------------------------------------------------
    @property
    def layouts(self) -> tuple[str, ...]:
        from engine.sampling.layout import PORTABLE_LAYOUTS

        return PORTABLE_LAYOUTS  # a Serve replica batches: no attention injection

    @property
    def info(self) -> dict:
        if self._info is None:
            self._info = self._post({"op": "info"})
        return self._info

    @property
    def components(self) -> RemoteComponents:
        """The model facts the app and the Studio read (no weights here)."""
        info = self.info
        known = info.get("known_words")
        return RemoteComponents(model_id=info.get("model_id", ""), weights_hash=info.get("weights_hash", ""),
                                vae_scale_factor=int(info.get("vae_scale_factor", 8)),
                                unet_in_channels=int(info.get("unet_in_channels", 4)),
                                sample_size=int(info.get("sample_size", 16)),
                                known_words=set(known) if known else None)

    @property
    def model_id(self) -> str:
        return self.components.model_id

    @property
    def weights_hash(self) -> str:
        return self.components.weights_hash

    @property
    def backend_name(self) -> str:
        return f"{self.info.get('backend', '?')} @ {self.url}"

    @property
    def device(self) -> str:
        return str(self.info.get("device", "remote"))

    queue_depth = 0
    busy = False

    def tokenize(self, prompt: str, syntax: str = "a1111"):
        from engine.words.prompt import WordTokens

        return WordTokens(**self._post({"op": "tokenize", "prompt": prompt, "syntax": syntax})["word_tokens"])

    def generate(self, params, progress=None):
        from engine.pipeline.params import GenerateParams

        if not isinstance(params, GenerateParams):
            raise AttuneError("generate() takes a GenerateParams.")
        return self._run(generate_request(params), params.steps, progress)

    def reweight(self, parent, weights: dict[str, float], weight_mode: str = "score", layout: str = "blend",
                 progress=None):
        """The server has no reweight request: the plain re-run with the new weights (layout "free"), as the Studio
        ran it for this engine before the Engine protocol."""
        from engine.sampling.layout import RunSpec

        spec = parent if isinstance(parent, RunSpec) else RunSpec(parent)
        result = self.generate(dataclasses.replace(spec.params, weights=weights, weight_mode=weight_mode), progress)
        result.info["layout"] = "free"
        return result

    def inpaint(self, params, progress=None):
        from engine.pipeline.params import InpaintParams

        if not isinstance(params, InpaintParams):
            raise AttuneError("inpaint() takes an InpaintParams.")
        if not isinstance(params.image, Image.Image):
            raise AttuneError("The image to inpaint must be a PIL image.")
        return self._run(inpaint_request(params), params.base.steps, progress)

    def close(self) -> None:
        pass

    # ---- transport -------------------------------------------------------------------------------------------
    def _run(self, request: dict, steps, progress):
        t0 = time.perf_counter()
        data = self._post(request)
        result = result_from(data)
        result.timings["server_round_trip"] = time.perf_counter() - t0
        if progress is not None:  # no step-by-step progress over plain HTTP: report the end
            progress(int(steps), int(steps))
        return result

    def _post(self, request: dict) -> dict:
        body = json.dumps(request).encode("utf-8")
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServerError(f"The Attune server at {self.url} did not answer within {self.timeout:g} s "
                                  "(busy, or a replica restarting). Your request was kept: run it again.", request)
            try:
                return self._post_once(body, left, request)
            except _Retryable as error:
                attempt += 1
                if attempt > self.retries or deadline - time.monotonic() <= RETRY_PAUSE:
                    raise ServerError(f"{error.message} Your request was kept: run it again.", request) from None
                time.sleep(RETRY_PAUSE)

    def _post_once(self, body: bytes, timeout: float, request: dict) -> dict:
        http = urllib.request.Request(self.url + "/", data=body, method="POST",
                                      headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(http, timeout=timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            text = error.read().decode("utf-8", "replace")
            message = _error_text(text)
            if error.code == 400:  # bad input: the engine's own one-line message
                raise AttuneError(message) from None
            if error.code >= 500:
                raise _Retryable(f"The Attune server at {self.url} failed this request (HTTP {error.code}: "
                                 f"{message}).") from None
            raise ServerError(f"The Attune server at {self.url} refused the request (HTTP {error.code}: "
                              f"{message}).", request) from None
        except (socket.timeout, TimeoutError):
            raise ServerError(f"The Attune server at {self.url} did not answer within {self.timeout:g} s "
                              "(busy, or a replica restarting). Your request was kept: run it again.", request) from None
        except (urllib.error.URLError, ConnectionError, OSError) as error:
            reason = getattr(error, "reason", error)
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise ServerError(f"The Attune server at {self.url} did not answer within {self.timeout:g} s "
                                  "(busy, or a replica restarting). Your request was kept: run it again.",
                                  request) from None
            raise _Retryable(f"Cannot reach the Attune server at {self.url} ({_first_line(reason)}).") from None
        try:
            return json.loads(payload)
        except ValueError:
            raise ServerError(f"The Attune server at {self.url} sent an answer that is not JSON.", request) from None


class _Retryable(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _error_text(text: str) -> str:
    try:
        data = json.loads(text)
        if isinstance(data, dict) and data.get("error"):
            return _first_line(data["error"])
    except ValueError:
        pass
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    for line in reversed(lines):  # Ray's tracebacks end with the error's own line
        if "Error" in line or "error" in line:
            return line[:300]
    return _first_line(text) or "no details"


def server_from_env(server: str | None = None) -> str | None:
    server = (server or os.environ.get(SERVER_ENV, "")).strip()
    return server or None


def make_engine(model=None, backend: str = "auto", server: str | None = None, **options):
    """A RemoteEngine when a server is given (or $ATTUNE_SERVER is set), else a local Attune engine."""
    url = server_from_env(server)
    if url:
        return RemoteEngine(url)  # the server exports what it needs itself
    from engine.pipeline.attune import Attune

    return Attune(model, backend=backend, **options)
