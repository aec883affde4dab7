"""Ray Serve deployment: a local Ray on CPU with the built-in model; 4 concurrent participants; a replica killed
mid-batch. Needs requirements-serve.txt (skipped with the reason where Ray is not installed)."""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install -r requirements-serve.txt)")

from engine.runners.batching import exact_rows, rows_exact_forced_off  # noqa: E402
from engine.errors import AttuneError  # noqa: E402
from engine.study.log import StudyLog  # noqa: E402
from engine.pipeline.attune import Attune  # noqa: E402
from engine.pipeline.params import GenerateParams
from engine.remote.client import RemoteEngine, ServerError  # noqa: E402
from engine.study.studio import Studio  # noqa: E402

PROMPT = "a house by the lake under the full moon"
SERVER_TOKEN = "test-token-4f1c"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from ray import serve

    from engine.remote.server import build_app

    try:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024 * 1024, log_to_driver=False,
                 _temp_dir=str(tmp_path_factory.mktemp("ray")))
    except Exception as error:  # e.g. no /dev/shm or no free ports in a sandbox
        pytest.skip(f"Ray cannot start here: {type(error).__name__}: {str(error)[:200]}")
    port = _free_port()
    token_before = os.environ.get("ATTUNE_SERVER_TOKEN")
    os.environ["ATTUNE_SERVER_TOKEN"] = SERVER_TOKEN  # build_app hands it to the replicas; RemoteEngine sends it
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"num_cpus": 1, "threads": 1, "window_ms": 20}), name="attune", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        if token_before is None:
            os.environ.pop("ATTUNE_SERVER_TOKEN", None)
        else:
            os.environ["ATTUNE_SERVER_TOKEN"] = token_before


def _params(seed, **changes):
    return GenerateParams(**{"prompt": PROMPT, "width": 64, "height": 64, "steps": 4, "seed": seed, **changes})


def _concurrently(fns, timeout=120):
    out: list = [None] * len(fns)

    def run(i):
        try:
            out[i] = fns[i]()
        except BaseException as error:  # returned to the test
            out[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return out


def test_four_participants_through_the_server(server, tmp_path):
    remote = RemoteEngine(server, timeout=120)
    info = remote.info
    # the replica stacks requests where rows are bit-exact (engine.runners.batching; not on AMD's MKL, nor with
    # $ATTUNE_ROWS_EXACT=0), else runs their UNet calls one by one; either way each image is the solo one (below)
    stacks = exact_rows("cpu") and not rows_exact_forced_off()  # Ray's workers get this process's environment
    assert info["backend"] == "torch" and info["batching"] == stacks, info
    log = StudyLog(tmp_path / "attune.db")
    studios = [Studio(remote, log, tmp_path / f"p{i}", participant_id=f"p{i}") for i in range(4)]
    weights = [{}, {"house": 2.0}, {"moon": 0.5}, {"lake": 1.5}]
    modes = ["score", "score", "prob", "embed"]
    versions = _concurrently([lambda s=s, i=i: s.generate(_params(i, weights=weights[i], weight_mode=modes[i]))
                              for i, s in enumerate(studios)])
    assert all(not isinstance(v, BaseException) for v in versions), versions
    rows = log.versions()
    assert sorted(v.participant_id for v in rows) == ["p0", "p1", "p2", "p3"]
    for v in rows:
        assert Path(v.image_path).is_file() and Path(v.maps_path).is_file()
        assert v.backend.startswith("torch") and v.model_hash == info["weights_hash"]
    # the server's (batched) image is the one this machine makes alone, with the replica's thread count (oneDNN's
    # convolutions differ in the last bit between 1 and 2 threads)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = Attune(backend="torch").generate(_params(1, weights={"house": 2.0}))
    finally:
        torch.set_num_threads(threads)
    served = next(v for v in versions if v.participant_id == "p1")
    assert np.array_equal(np.asarray(studios[1].image(served)), np.asarray(local.image))
    # a reweight from the served version also goes through the server and lands in this log
    again = studios[1].reweight({"house": 0.5})
    assert again.parent_id == served.id and Path(again.image_path).is_file()
    assert again.layout == "blend"  # the layout chosen (the default), run by the replica: not a plain re-run
    # a caller without the token is turned away in one line, and not retried
    with pytest.raises(ServerError, match="HTTP 401") as caught:
        RemoteEngine(server, timeout=30, token="wrong").generate(_params(0))
    assert "\n" not in str(caught.value)
    assert "pid" not in info and "replica" not in info
    # so does an inpaint (its result info holds an array, which must not reach the JSON answer)
    mask = np.zeros((64, 64), dtype=bool)
    mask[16:48, 8:40] = True
    inpainted = studios[1].inpaint(mask, "a tree", parent=again)
    assert inpainted.kind == "inpaint" and inpainted.parent_id == again.id
    assert Path(inpainted.image_path).is_file() and Path(inpainted.maps_path).is_file()
    # bad input is the engine's one-line message, not a server failure
    with pytest.raises(AttuneError, match="not in the prompt"):
        remote.generate(_params(0, weights={"zebra": 2.0}))


def test_a_replica_killed_mid_batch_completes_or_fails_clearly(server, tmp_path):
    from ray import serve

    remote = RemoteEngine(server, timeout=90, retries=3)
    remote.info  # the replica is up
    log = StudyLog(tmp_path / "attune.db")
    studios = [Studio(remote, log, tmp_path / f"p{i}", participant_id=f"p{i}") for i in range(4)]

    killed_at = []

    def kill_replica():
        time.sleep(1.0)  # the 4 requests are in the replica's batch by now
        names = [a for a in ray.util.list_named_actors(all_namespaces=True)
                 if "SERVE_REPLICA" in a["name"] and "AttuneServer" in a["name"]]
        assert names, "no replica actor found"
        for a in names:
            ray.kill(ray.get_actor(a["name"], namespace=a["namespace"]), no_restart=False)
        killed_at.append(time.time())

    def generate(studio, seed):
        try:
            return studio.generate(_params(seed, steps=60))
        finally:
            ended.append(time.time())

    ended: list = []
    killer = threading.Thread(target=kill_replica)
    killer.start()
    outcomes = _concurrently([lambda s=s, i=i: generate(s, 10 + i) for i, s in enumerate(studios)], timeout=150)
    killer.join()
    assert killed_at and min(ended) > killed_at[0], "the replica was not killed in the middle of the batch"
    print("outcomes after the kill:", [type(o).__name__ for o in outcomes])
    for outcome in outcomes:
        assert outcome is not None, "a request hung"
        if isinstance(outcome, BaseException):
            assert isinstance(outcome, ServerError), repr(outcome)
            assert "run it again" in str(outcome) and outcome.request["op"] == "generate"
    for v in log.versions():  # no row without its image
        assert Path(v.image_path).is_file(), v
    files = sorted(p.name for s in studios for p in s.out_dir.iterdir())
    assert len([f for f in files if f.endswith(".png")]) == len(log.versions())
    # the deployment comes back and serves again
    deadline = time.time() + 60
    while serve.status().applications["attune"].status != "RUNNING" and time.time() < deadline:
        time.sleep(0.5)
    assert studios[0].generate(_params(99)).number >= 1



# ---------------------------------------------------------------------------------------------- requests, in-process
# The replica's request handling without starting Ray: AttuneServer.__call__ on a starlette Request (info and
# tokenize run there directly; generate, reweight and inpaint go through @serve.batch to AttuneServer.handle, which
# these tests call directly).
def _http(body: bytes, headers: dict | None = None, client=("127.0.0.1", 50000)):
    import asyncio  # noqa: F401  (the caller runs it)

    from starlette.requests import Request

    sent = []

    async def receive():
        if sent:
            return {"type": "http.disconnect"}
        sent.append(True)
        return {"type": "http.request", "body": body, "more_body": False}

    raw = [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": raw, "client": client, "query_string": b""}
    return Request(scope, receive)


def _call(replica, body, headers=None, client=("127.0.0.1", 50000)):
    import asyncio
    import json

    response = asyncio.run(replica(_http(body, headers, client)))
    return response.status_code, json.loads(response.body)


def _admit(body, token=None, headers=None, client=("127.0.0.1", 50000)):
    import asyncio

    from engine.remote.client import BadRequest
    from engine.remote.server import admit

    try:
        return 200, asyncio.run(admit(_http(body, headers, client), token))
    except BadRequest as error:
        assert "\n" not in str(error)
        return error.status, str(error)


@pytest.fixture(scope="module")
def replica(tiny_model_dir):
    from engine.remote.server import AttuneServer

    with pytest.MonkeyPatch.context() as mp:  # no token, whatever the Ray fixture left set: loopback callers only
        mp.delenv("ATTUNE_SERVER_TOKEN", raising=False)
        server = AttuneServer(model=str(tiny_model_dir))  # a folder on the server: its path must not leave it
    yield server
    server.engine.close()
    server.pool.shutdown()


def _png_header_only(width: int, height: int) -> str:
    """A PNG whose header claims width x height, with a few bytes of pixels (a decompression bomb's shape)."""
    import base64
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 1024)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode("ascii")


def test_a_token_is_required_when_the_server_has_one():
    import json

    body = json.dumps({"op": "info"}).encode()
    assert _admit(body, "s3cret", {"Authorization": "Bearer s3cret"})[0] == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        status, message = _admit(body, "s3cret", headers)
        assert status == 401 and "token" in message and "s3cret" not in message
    # from another machine too: the token, not the address, lets a caller in
    assert _admit(body, "s3cret", {"Authorization": "Bearer s3cret"}, ("203.0.113.7", 1234))[0] == 200


def test_without_a_token_only_this_machine_is_answered(monkeypatch, caplog):
    import json

    body = json.dumps({"op": "info"}).encode()
    assert _admit(body, None, client=("127.0.0.1", 1))[0] == 200
    assert _admit(body, None, client=("::1", 1))[0] == 200
    status, message = _admit(body, None, client=("203.0.113.7", 1))
    assert status == 403 and "ATTUNE_SERVER_TOKEN" in message
    # building the app without a token says so, in one log line
    from engine.remote.server import build_app

    monkeypatch.delenv("ATTUNE_SERVER_TOKEN", raising=False)
    with caplog.at_level("WARNING", logger="attune.serve"):
        build_app({"num_cpus": 1})
    lines = [r.getMessage() for r in caplog.records if r.name == "attune.serve"]
    assert len(lines) == 1 and "ATTUNE_SERVER_TOKEN is not set" in lines[0] and "127.0.0.1" in lines[0]
    caplog.clear()
    monkeypatch.setenv("ATTUNE_SERVER_TOKEN", "s3cret")
    with caplog.at_level("WARNING", logger="attune.serve"):
        app = build_app({"num_cpus": 1})
    assert not [r for r in caplog.records if r.name == "attune.serve"]
    env = app._bound_deployment.ray_actor_options["runtime_env"]["env_vars"]
    assert env["ATTUNE_SERVER_TOKEN"] == "s3cret"  # replicas on other nodes check the same token


def test_request_bodies_are_bounded_before_they_are_read_whole():
    from engine.remote.client import MAX_REQUEST_BYTES

    status, message = _admit(b"{}", headers={"Content-Length": str(MAX_REQUEST_BYTES + 1)})
    assert status == 413 and str(MAX_REQUEST_BYTES) in message
    status, message = _admit(b" " * (MAX_REQUEST_BYTES + 1))  # no (or a false) length: counted while read
    assert status == 413


MALFORMED = {
    "not-json": (b"not json", "must be JSON"),
    "not-utf8": (b"\xff\xfe", "must be JSON"),
    "a-list": (b"[1, 2]", "a JSON object"),
    "unknown-op": (b'{"op": "shutdown"}', "Unknown request 'shutdown'"),
    "op-not-text": (b'{"op": ["info"]}', "Unknown request 'list'"),
    "nested-100000": (b'{"op": "info", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}", "nests deeper"),
    "nested-60": (b'{"op": "info", "x": ' + b'{"a": ' * 60 + b"1" + b"}" * 60 + b"}", "nests deeper"),
    "prompt-not-text": (b'{"op": "tokenize", "prompt": 5}', "must be strings"),
    "prompt-too-long": (b'{"op": "tokenize", "prompt": "' + b"a " * 2000 + b'"}', "too long"),
    "spec-not-object": (b'{"op": "reweight", "spec": [], "weights": {}}', "needs 'spec'"),
    "weights-not-object": (b'{"op": "reweight", "spec": {}, "weights": [1]}', "needs 'weights'"),
}


@pytest.mark.parametrize("body, expected", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_request_is_400_in_one_line(replica, body, expected):
    status, answer = _call(replica, body)
    assert status == 400 and expected in answer["error"] and "\n" not in answer["error"], answer


@pytest.mark.parametrize("change, expected", [
    ({"params": []}, "'params' must be a JSON object"),
    ({"params": {"steps": 2}}, "needs a 'prompt' string"),
    ({"params": {"prompt": "a house", "steps": 10**9}}, "steps must be between 1 and 150"),
    ({"params": {"prompt": "a house", "steps": "many"}}, "steps must be a whole number"),
    ({"params": {"prompt": "a house " * 400}}, "prompt is too long"),
    ({"image_png": "not an image"}, "image is not valid base64"),
    ({"image_png": "aGVsbG8="}, "image is not a readable PNG"),
    ({"image_png": 5}, "image must be a base64 PNG string"),
    ({"image_png": _png_header_only(30000, 30000)}, "too large to decode"),
    ({"image_png": _png_header_only(3000, 16)}, "3000x16 px; the limit is 2048"),
    ({"mask_png": _png_header_only(64, 64)}, "mask is not a readable PNG"),
    ({"mask_blur": "wide"}, "mask blur must be a whole number"),
])
def test_bad_inpaint_input_is_400_never_500(replica, change, expected):
    from engine.remote import client as remote
    from engine.pipeline.params import InpaintParams

    mask = np.zeros((64, 64), dtype=bool)
    mask[8:40, 8:40] = True
    from PIL import Image

    good = remote.inpaint_request(InpaintParams(base=_params(0, steps=2), image=Image.new("RGB", (64, 64)), mask=mask))
    request = remote.parse_request(remote.json.dumps({**good, **change}).encode())
    answer = replica.handle(request)
    assert answer["ok"] is False and answer["status"] == 400, answer
    assert expected in answer["error"] and "\n" not in answer["error"], answer


def test_bad_generate_and_reweight_input_is_400(replica):
    from engine.remote import client as remote

    for params, expected in (({"prompt": "a house", "width": 100000}, "width must be between"),
                             ({"prompt": "a house", "weights": {"house": [2]}}, "weight of 'house' must be a number"),
                             ({"prompt": "a house", "seed": {"n": 1}}, "seed must be a whole number")):
        answer = replica.handle(remote.parse_request(remote.json.dumps({"op": "generate", "params": params}).encode()))
        assert answer["status"] == 400 and expected in answer["error"] and "\n" not in answer["error"], answer

    spec = remote.spec_dict(_params(0, steps=2))
    for change, expected in (({"layout": "sideways"}, "Unknown layout 'sideways'"),
                             ({"layout": 3}, "layout must be a string"),
                             ({"spec": {**spec, "parent": 7}}, "run spec must be a JSON object"),
                             ({"weights": {"zebra": 2.0}}, "not in the prompt")):
        request = {"op": "reweight", "spec": spec, "weights": {"house": 1.5}, "layout": "blend", **change}
        answer = replica.handle(remote.parse_request(remote.json.dumps(request).encode()))
        assert answer["status"] == 400 and expected in answer["error"] and "\n" not in answer["error"], answer


def test_info_tells_a_caller_what_it_needs_and_nothing_else(replica, tiny_model_dir):
    import json
    import os

    status, info = _call(replica, json.dumps({"op": "info"}).encode())
    assert status == 200 and info["ok"]
    assert info["layouts"] == ["blend", "free"] and info["model_id"] == Path(tiny_model_dir).name
    assert {"pid", "replica", "batching_reason"}.isdisjoint(info)
    text = json.dumps(info)
    assert str(tiny_model_dir) not in text and os.sep + "tmp" not in text
