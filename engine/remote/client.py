"""Send generate / inpaint to an Attune server (engine.remote.server on Ray Serve) instead of running them here.

`RemoteEngine(url)` implements the engine interface (engine.protocols.Engine: generate, reweight with its
layout, inpaint, tokenize, components...), so a participant's Studio still writes the image, maps and log rows into
this app's storage; the server only computes and returns image + maps + timing. Plain HTTP + JSON through the
standard library. A reweight carries its parent's whole RunSpec, so the server runs the chosen layout (blend
recomputes the parent's trajectory when its replica has not cached it).

The server requires $ATTUNE_SERVER_TOKEN, sent as `Authorization: Bearer <token>` (the client reads the same
variable). The server side's checks of a request (size, JSON depth, op, field types, images) live here too
(`parse_request`, `check_token`, `image_from_b64`): each failure is a `BadRequest` with its HTTP status (4xx).

`make_engine(model, backend, server=None)`: a RemoteEngine when `server` or $ATTUNE_SERVER is set, else a local
engine.pipeline.attune.Attune.

Failures are one-line `ServerError`s (an AttuneError) that keep the request (`error.request`) so the caller can
offer to run it again; nothing is written for a failed request. A call never waits longer than `timeout` seconds
in all (no replica, a replica restarting, an overloaded server). Connection failures and 5xx answers (a replica
that died, none ready yet) are tried again while time is left: a request has no server-side state, so running it
again gives the same image. A 4xx answer (bad input, wrong token, too large) is never tried again.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import io
import json
import os
import socket
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from engine.defaults import INPAINT_DEFAULTS
from engine.errors import AttuneError
from engine.model.family import BUILTIN_DEFAULTS, ModelDefaults
from engine.sampling.layout import DEFAULT_LAYOUT, PORTABLE_LAYOUTS, RunSpec, check_layout
from engine.pipeline.attune import MAX_EDIT_DEPTH
from engine.pipeline.params import MAX_PROMPT_CHARS, MAX_SIDE
from engine.protocols import Engine

SERVER_ENV = "ATTUNE_SERVER"
TIMEOUT_ENV = "ATTUNE_SERVER_TIMEOUT"
TOKEN_ENV = "ATTUNE_SERVER_TOKEN"
DEFAULT_TIMEOUT = 300.0
RETRY_PAUSE = 1.0

OPS = ("info", "tokenize", "generate", "reweight", "inpaint")
# The largest request: an inpaint of a MAX_SIDE x MAX_SIDE image (3 bytes a pixel) and its mask (1 byte a pixel) as
# base64 PNGs (4/3 of the bytes; PNG never stores much more than the raw pixels), plus 1 MiB for the rest.
MAX_REQUEST_BYTES = (4 * MAX_SIDE * MAX_SIDE * 4) // 3 + (1 << 20)
MAX_JSON_DEPTH = MAX_EDIT_DEPTH + 8  # a reweight nests one level per edit in its chain (RunSpec.parent)


class BadRequest(AttuneError):
    """A request the server refuses without running it; `status` is the HTTP status (400, 401, 403, 413)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


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


def _png_from_b64(text, what: str, mode: str) -> Image.Image:
    """Decode a base64 PNG, refusing anything that is not one, or that is larger than MAX_SIDE a side, from its
    header, before its pixels are decompressed (a decompression bomb is a few KB that inflate to gigabytes)."""
    if not isinstance(text, str):
        raise BadRequest(f"The {what} must be a base64 PNG string, got {type(text).__name__}.")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"The {what} is not valid base64.") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["PNG"]) as opened:
                width, height = opened.size
                if width > MAX_SIDE or height > MAX_SIDE:
                    raise BadRequest(f"The {what} is {width}x{height} px; the limit is {MAX_SIDE} px a side.")
                return opened.convert(mode)
    except BadRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadRequest(f"The {what} is too large to decode (more pixels than PIL's safety limit).") from None
    except (OSError, SyntaxError, ValueError):  # not a PNG, truncated, damaged (PIL raises these three)
        raise BadRequest(f"The {what} is not a readable PNG image.") from None


def image_from_b64(text, what: str = "image") -> Image.Image:
    return _png_from_b64(text, what, "RGB")


def mask_b64(mask: np.ndarray) -> str:
    return png_b64(Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, mode="L"))


def mask_from_b64(text) -> np.ndarray:
    return np.asarray(_png_from_b64(text, "mask", "L")) > 127


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


def params_from(data):
    """GenerateParams from their JSON (unknown keys ignored); the engine checks the values."""
    from engine.pipeline.params import GenerateParams

    if not isinstance(data, dict):
        raise BadRequest(f"'params' must be a JSON object, got {type(data).__name__}.")
    if not isinstance(data.get("prompt"), str):
        raise BadRequest("'params' needs a 'prompt' string.")
    names = {f.name for f in dataclasses.fields(GenerateParams)}
    return GenerateParams(**{k: v for k, v in data.items() if k in names})


def spec_dict(spec) -> dict:
    """A RunSpec (or plain GenerateParams) as JSON: its params, layout and the chain of parents it edits."""
    if not isinstance(spec, RunSpec):
        spec = RunSpec(spec)
    return {"params": params_dict(spec.params), "layout": spec.layout,
            "parent": spec_dict(spec.parent) if spec.parent is not None else None}


def spec_from(data) -> RunSpec:
    """The RunSpec of a spec_dict (iterative: the chain's length is bounded by MAX_JSON_DEPTH already)."""
    chain = []
    while data is not None:
        if not isinstance(data, dict):
            raise BadRequest(f"A run spec must be a JSON object, got {type(data).__name__}.")
        chain.append(data)
        data = data.get("parent")
    spec = None
    for item in reversed(chain):
        spec = RunSpec(params_from(item.get("params")), _layout(item.get("layout", "free")), spec)
    return spec


def _layout(value) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"A layout must be a string, got {type(value).__name__}.")
    try:
        return check_layout(value)
    except AttuneError as error:
        raise BadRequest(str(error)) from None


def generate_request(params) -> dict:
    return {"op": "generate", "params": params_dict(params)}


def reweight_request(parent, weights, weight_mode: str, layout: str) -> dict:
    return {"op": "reweight", "spec": spec_dict(parent), "weights": weights, "weight_mode": weight_mode,
            "layout": layout}


def inpaint_request(params) -> dict:
    return {"op": "inpaint", "params": params_dict(params.base), "image_png": png_b64(params.image),
            "mask_png": mask_b64(params.mask), "mask_blur": params.mask_blur, "only_masked": params.only_masked,
            "padding": params.padding, "auto_crop": params.auto_crop}


def inpaint_params_from(request: dict):
    """InpaintParams from an inpaint_request (the server's side)."""
    from engine.pipeline.params import InpaintParams

    return InpaintParams(base=params_from(request.get("params")), image=image_from_b64(request.get("image_png")),
                         mask=mask_from_b64(request.get("mask_png")), mask_blur=request.get("mask_blur", INPAINT_DEFAULTS.mask_blur),
                         only_masked=request.get("only_masked", INPAINT_DEFAULTS.only_masked),
                         padding=request.get("padding", INPAINT_DEFAULTS.padding),
                         auto_crop=request.get("auto_crop", INPAINT_DEFAULTS.auto_crop))


# ---------------------------------------------------------------------------------------------- server side
def engine_info(engine) -> dict:
    """What a client needs to know of the server's engine: model facts, backend, layouts. No pid, host or path."""
    c = engine.components
    model_id = str(c.model_id)
    if Path(model_id).expanduser().exists():  # a folder on the server: its name only
        model_id = Path(model_id).expanduser().resolve().name
    return {"model_id": model_id, "weights_hash": c.weights_hash, "backend": engine.backend_name,
            "device": str(engine.device), "vae_scale_factor": int(c.vae_scale_factor),
            "sample_size": int(c.sample_size), "unet_in_channels": int(c.unet_in_channels),
            "known_words": sorted(c.known_words) if c.known_words else None, "layouts": list(engine.layouts),
            "defaults": dataclasses.asdict(engine.model_defaults)}


def run_request(engine, request: dict) -> dict:
    """One request checked by parse_request, run on the server's local engine: the JSON answer. Bad input raises
    an AttuneError (a BadRequest for the request's shape; the engine's own message for its values)."""
    op = request["op"]
    if op == "info":
        return {"ok": True, **engine_info(engine)}
    if op == "tokenize":
        tokens = engine.tokenize(request.get("prompt", ""), request.get("syntax", "a1111"))
        return {"ok": True, "word_tokens": dataclasses.asdict(tokens)}
    if op == "generate":
        result = engine.generate(params_from(request.get("params")))
    elif op == "reweight":
        result = engine.reweight(spec_from(request.get("spec")), request["weights"],
                                 request.get("weight_mode", "score"), _layout(request.get("layout", DEFAULT_LAYOUT)))
    else:
        result = engine.inpaint(inpaint_params_from(request))
    return {"ok": True, **result_dict(result)}


def check_token(expected: str | None, authorization: str | None) -> None:
    """Refuse (401) a request whose `Authorization: Bearer` header is not the server's token. No token set on the
    server: nothing to check here (the server then answers loopback clients only, engine.remote.server)."""
    if not expected:
        return
    given = str(authorization or "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise BadRequest(f"This Attune server needs a token: set {TOKEN_ENV} on the client to the server's.", 401)
    if not hmac.compare_digest(token.strip().encode("utf-8"), expected.encode("utf-8")):
        raise BadRequest(f"Wrong token: {TOKEN_ENV} on the client differs from the server's.", 401)


def json_depth(value) -> int:
    """How deeply lists and objects nest in a parsed JSON value (iterative: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:  # deeper than that is refused anyway
                stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_request(body: bytes) -> dict:
    """A request body, checked before anything runs: size, JSON, nesting, op and the types of its fields."""
    if len(body) > MAX_REQUEST_BYTES:
        raise BadRequest(f"The request is {len(body)} bytes; the limit is {MAX_REQUEST_BYTES}.", 413)
    try:
        request = json.loads(body)
    except RecursionError:
        raise BadRequest(f"The request nests deeper than {MAX_JSON_DEPTH} levels.") from None
    except ValueError:  # also UnicodeDecodeError
        raise BadRequest("The request body must be JSON (UTF-8).") from None
    if not isinstance(request, dict):
        raise BadRequest("The request must be a JSON object.")
    if json_depth(request) > MAX_JSON_DEPTH:
        raise BadRequest(f"The request nests deeper than {MAX_JSON_DEPTH} levels.")
    op = request.get("op")
    if op not in OPS:
        shown = op if isinstance(op, str) else type(op).__name__
        raise BadRequest(f"Unknown request '{str(shown)[:40]}': choose one of {', '.join(OPS)}.")
    if op == "tokenize":
        prompt, syntax = request.get("prompt", ""), request.get("syntax", "a1111")
        if not isinstance(prompt, str) or not isinstance(syntax, str):
            raise BadRequest("A tokenize request's prompt and syntax must be strings.")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise BadRequest(f"The prompt is too long ({len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}).")
    if op == "reweight":
        if not isinstance(request.get("spec"), dict):
            raise BadRequest("A reweight request needs 'spec', the parent's run as a JSON object.")
        if not isinstance(request.get("weights"), dict):
            raise BadRequest("A reweight request needs 'weights', an object of word -> weight.")
        if not isinstance(request.get("weight_mode", "score"), str):
            raise BadRequest("A reweight request's weight_mode must be a string.")
    return request


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
def first_line(text: str) -> str:
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
    text_time: None = None  # the server conditions the UNet

    def encode_text(self, input_ids: list[int], attention_mask: np.ndarray | None = None) -> np.ndarray:
        raise AttuneError("This engine runs on a server: the prompt is encoded there.")

    def encode_pooled(self, input_ids: list[int]) -> np.ndarray:
        raise AttuneError("This engine runs on a server: the prompt is encoded there.")

    def encode_image(self, image: np.ndarray) -> np.ndarray:
        raise AttuneError("This engine runs on a server: images are encoded there.")

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        raise AttuneError("This engine runs on a server: latents are decoded there.")

    def release_memory(self) -> None:
        pass


class RemoteEngine:
    """The engine interface (engine.protocols.Engine), computed by an Attune server. Thread-safe (one HTTP
    request per call). token: the server's $ATTUNE_SERVER_TOKEN (default: this process's)."""

    def __init__(self, url: str, *, timeout: float | None = None, retries: int = 2, token: str | None = None) -> None:
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
        self.token = (os.environ.get(TOKEN_ENV, "") if token is None else str(token)).strip() or None
        self._info: dict | None = None
        self.batcher = None
        self.fallback_reason = None

    # ---- engine interface ------------------------------------------------------------------------------------
    @property
    def layouts(self) -> tuple[str, ...]:
        """What the server's engine runs (a batching replica: blend and free, no attention injection)."""
        return tuple(self.info.get("layouts") or PORTABLE_LAYOUTS)

    @property
    def model_defaults(self) -> ModelDefaults:
        """The server's model defaults (from its info); the built-in model's from a server too old to send them."""
        sent = self.info.get("defaults")
        if not isinstance(sent, dict):
            return BUILTIN_DEFAULTS
        try:
            return ModelDefaults(**{**sent, "notes": tuple(sent.get("notes") or ()),
                                     "phrases": tuple(sent.get("phrases") or ())})
        except TypeError:
            raise AttuneError("The server sent model defaults this client does not understand: update one of them.") from None

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

    def reweight(self, parent, weights: dict[str, float], weight_mode: str = "score", layout: str = DEFAULT_LAYOUT,
                 progress=None):
        """engine.pipeline.attune.Attune.reweight on the server: the parent's RunSpec travels with the request, so the
        server runs the same layout (blend recomputes the parent's trajectory there when it is not cached)."""
        from engine.pipeline.params import GenerateParams

        layout = check_layout(layout)
        if layout not in self.layouts:
            raise AttuneError(f"Layout '{layout}' does not run on the Attune server at {self.url} (it runs "
                              f"{', '.join(self.layouts)}): choose one of those.")
        spec = parent if isinstance(parent, RunSpec) else RunSpec(parent)
        if not isinstance(spec.params, GenerateParams):
            raise AttuneError("reweight() takes the parent's GenerateParams or RunSpec.")
        if not isinstance(weights, dict):
            raise AttuneError("weights must be a mapping of word -> weight.")
        return self._run(reweight_request(spec, weights, weight_mode, layout), spec.params.steps, progress)

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
            steps = result.params.steps if steps is None and result.params is not None else steps  # the model's default
            progress(int(steps or 1), int(steps or 1))
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
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        http = urllib.request.Request(self.url + "/", data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(http, timeout=timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            text = error.read().decode("utf-8", "replace")
            message = _error_text(text)
            if error.code == 400:  # bad input: the engine's own one-line message
                raise AttuneError(message) from None
            if error.code in (401, 403):  # no retry: the same token would be refused again
                raise ServerError(f"The Attune server at {self.url} refused this client (HTTP {error.code}: "
                                  f"{message})", request) from None
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
            raise _Retryable(f"Cannot reach the Attune server at {self.url} ({first_line(reason)}).") from None
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
            return first_line(data["error"])
    except ValueError:
        pass
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    for line in reversed(lines):  # Ray's tracebacks end with the error's own line
        if "Error" in line or "error" in line:
            return line[:300]
    return first_line(text) or "no details"


def server_from_env(server: str | None = None) -> str | None:
    server = (server or os.environ.get(SERVER_ENV, "")).strip()
    return server or None


def make_engine(model=None, backend: str = "auto", server: str | None = None, **options) -> Engine:
    """A RemoteEngine when a server is given (or $ATTUNE_SERVER is set), else a local Attune engine."""
    url = server_from_env(server)
    if url:
        return RemoteEngine(url)  # the server exports what it needs itself
    from engine.pipeline.attune import Attune

    return Attune(model, backend=backend, **options)
