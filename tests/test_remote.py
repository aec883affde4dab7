"""engine.remote.client without Ray: a stdlib HTTP server stands in for engine.remote.server (same JSON), so the client, its
error messages and the Studio's storage are checked on every CI machine."""
from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from engine.remote import client as remote
from engine.errors import AttuneError
from engine.study.log import StudyLog
from engine.pipeline.attune import Attune
from engine.pipeline.params import GenerateParams
from engine.protocols import Engine, engine_members
from engine.remote.client import RemoteEngine, ServerError, make_engine
from engine.study.studio import Studio
from tests.test_studio import FakeEngine

PROMPT = "a house by the lake under the full moon"


def _params(seed=0, **changes):
    return GenerateParams(**{"prompt": PROMPT, "width": 64, "height": 64, "steps": 3, "seed": seed, **changes})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """answer(request_dict) -> (status, body_text), in a background ThreadingHTTPServer."""

    def __init__(self, answer):
        calls = self.calls = []
        headers_seen = self.headers = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                calls.append(request)
                headers_seen.append(dict(self.headers))
                status, body = answer(request)
                data = body.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def engine():
    e = Attune(backend="torch")
    yield e
    e.close()


def _engine_answer(engine):
    """What engine.remote.server's replica does, without Ray: its request checks and its dispatch (engine.remote.client)."""

    def answer(request):
        try:
            checked = remote.parse_request(json.dumps(request).encode())
            return 200, json.dumps(remote.run_request(engine, checked))
        except AttuneError as error:
            return getattr(error, "status", 400), json.dumps({"ok": False, "error": str(error)})

    return answer


def test_a_remote_studio_stores_what_a_local_one_does(engine, tmp_path):
    server = _Server(_engine_answer(engine))
    try:
        log = StudyLog(tmp_path / "attune.db")
        studio = Studio(RemoteEngine(server.url, timeout=60), log, tmp_path / "remote", participant_id="p")
        version = studio.generate(_params(3, weights={"moon": 1.8}))
        local = Studio(engine, StudyLog(tmp_path / "local.db"), tmp_path / "local").generate(
            _params(3, weights={"moon": 1.8}))
        assert np.array_equal(np.asarray(studio.image(version)), np.asarray(Image_open(local.image_path)))
        assert Path(version.maps_path).read_bytes() == Path(local.maps_path).read_bytes()
        assert version.model_hash == local.model_hash and version.weights == {"moon": 1.8}
        assert [v.id for v in log.versions()] == [version.id]
        assert studio.word_tokens(version).words == engine.tokenize(PROMPT).words  # tokenized by the server
        with pytest.raises(AttuneError, match="not in the prompt") as caught:  # the engine's message, as is
            studio.generate(_params(0, weights={"zebra": 2.0}))
        assert not isinstance(caught.value, ServerError)
        assert len(log.versions()) == 1
    finally:
        server.close()


def test_a_remote_inpaint_stores_what_a_local_one_does(engine, tmp_path):
    """An inpaint's result carries an array in its info (before_paste): the answer must still be JSON."""
    server = _Server(_engine_answer(engine))
    try:
        mask = np.zeros((64, 64), dtype=bool)
        mask[16:48, 8:40] = True
        made = []
        for name, eng in (("remote", RemoteEngine(server.url, timeout=60)), ("local", engine)):
            studio = Studio(eng, StudyLog(tmp_path / f"{name}.db"), tmp_path / name)
            studio.generate(_params(4))
            made.append((studio, studio.inpaint(mask, "a tree")))
        (remote_studio, remote_version), (local_studio, local_version) = made
        assert remote_version.kind == local_version.kind == "inpaint"
        assert np.array_equal(np.asarray(remote_studio.image(remote_version)),
                              np.asarray(Image_open(local_version.image_path)))
        assert Path(remote_version.maps_path).read_bytes() == Path(local_version.maps_path).read_bytes()
        assert len(remote_studio.log.versions()) == 2
    finally:
        server.close()


def Image_open(path):
    from PIL import Image

    with Image.open(path) as opened:
        return opened.convert("RGB")


def test_a_slow_server_times_out_with_a_clear_message_and_keeps_the_request(tmp_path):
    server = _Server(lambda request: (time.sleep(3), (200, "{}"))[1])
    try:
        studio = Studio(RemoteEngine(server.url, timeout=1), StudyLog(tmp_path / "a.db"), tmp_path / "out")
        started = time.time()
        with pytest.raises(ServerError, match="did not answer within 1 s") as caught:
            studio.generate(_params(5))
        assert time.time() - started < 2.5
        assert caught.value.request["params"]["seed"] == 5
        assert list((tmp_path / "out").iterdir()) == [] and studio.log.versions() == []
    finally:
        server.close()


def test_a_failing_replica_is_retried_then_reported_in_one_line():
    traceback = ("Traceback (most recent call last):\n  File \"x\", line 1\n"
                 "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.")
    server = _Server(lambda request: (500, traceback))
    try:
        with pytest.raises(ServerError) as caught:
            RemoteEngine(server.url, timeout=30, retries=2).generate(_params())
        message = str(caught.value)
        assert "HTTP 500" in message and "ActorDiedError" in message and "run it again" in message
        assert "\n" not in message
        assert len(server.calls) == 3  # the first try and two retries
    finally:
        server.close()


def test_no_server_is_a_clear_message_fast():
    client = RemoteEngine(f"http://127.0.0.1:{_free_port()}", timeout=5, retries=1)
    started = time.time()
    with pytest.raises(ServerError, match="Cannot reach the Attune server") as caught:
        client.generate(_params(0))
    assert time.time() - started < 5
    assert caught.value.request["params"]["seed"] == 0


def test_make_engine_uses_the_server_setting(monkeypatch):
    monkeypatch.setenv("ATTUNE_SERVER", "http://127.0.0.1:9")
    assert isinstance(make_engine(), RemoteEngine)
    with pytest.raises(AttuneError, match="http://"):
        make_engine(server="localhost:8000")


def test_cli_with_an_unreachable_server_fails_in_one_line_and_writes_no_image(tmp_path, capsys):
    from engine.cli import main

    code = main(["generate", "--prompt", PROMPT, "--steps", "2", "--size", "64x64", "--out", str(tmp_path / "o"),
                 "--server", f"http://127.0.0.1:{_free_port()}"])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error: Cannot reach the Attune server") and err.count("\n") == 1
    assert not list((tmp_path / "o").glob("*.png"))


# ---------------------------------------------------------------------------------------------- one engine interface
def interface_gaps(engine) -> list[str]:
    """What an engine misses of engine.protocols.Engine: absent members, a method where a property belongs
    (or the reverse), a method whose parameters (names, kinds, defaults) differ from the Protocol's."""
    import inspect

    gaps = []
    for name in engine_members():
        wanted = inspect.getattr_static(Engine, name)
        try:
            found = inspect.getattr_static(engine, name)  # no property runs (RemoteEngine's would ask the server)
        except AttributeError:
            gaps.append(f"{name}: missing")
            continue
        if isinstance(wanted, property):
            if inspect.isfunction(found):
                gaps.append(f"{name}: a method, the Protocol has a property")
            continue
        if not inspect.isfunction(found):
            gaps.append(f"{name}: not a method")
            continue

        def shape(fn):
            return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

        if shape(found) != shape(wanted):
            gaps.append(f"{name}{inspect.signature(found)} differs from {name}{inspect.signature(wanted)}")
    return gaps


def test_every_engine_has_the_whole_interface(engine):
    assert {"generate", "reweight", "inpaint", "tokenize", "layouts", "components"} <= set(engine_members())
    for candidate in (engine, RemoteEngine("http://127.0.0.1:9"), FakeEngine()):
        assert interface_gaps(candidate) == [], type(candidate).__name__

    class NoReweight:  # what RemoteEngine was: the Studio fell back to a plain re-run for it
        components = model_id = weights_hash = backend_name = device = layouts = model_defaults = queue_depth = None
        busy = None

        def tokenize(self, prompt, syntax="a1111"): ...
        def generate(self, params, progress=None): ...
        def inpaint(self, params, progress=None): ...
        def close(self): ...

    class OtherSignature(NoReweight):
        def reweight(self, parent, weights, layout="free"): ...

    assert interface_gaps(NoReweight()) == ["reweight: missing"]
    assert interface_gaps(OtherSignature()) and interface_gaps(OtherSignature())[0].startswith("reweight(")


@pytest.fixture(scope="module")
def server_engine():
    """The server's own engine: no trajectory of the client's runs cached, so a blend recomputes its parent."""
    e = Attune(backend="torch")
    yield e
    e.close()


def test_a_remote_reweight_runs_blend_as_a_local_one_does(engine, server_engine, tmp_path):
    server = _Server(_engine_answer(server_engine))
    try:
        made = {}
        for name, eng in (("remote", RemoteEngine(server.url, timeout=60)), ("local", engine)):
            studio = Studio(eng, StudyLog(tmp_path / f"{name}.db"), tmp_path / name)
            studio.generate(_params(6))
            made[name] = (studio, studio.reweight({"moon": 1.8}, layout="blend"))
        (remote_studio, remote_version), (local_studio, local_version) = made["remote"], made["local"]
        assert remote_version.layout == local_version.layout == "blend"
        assert [v.layout for v in remote_studio.log.versions() if v.kind == "reweight"] == ["blend"]
        assert remote_version.weights == local_version.weights == {"moon": 1.8}
        assert np.array_equal(np.asarray(remote_studio.image(remote_version)),
                              np.asarray(Image_open(local_version.image_path)))
        assert Path(remote_version.maps_path).read_bytes() == Path(local_version.maps_path).read_bytes()
        assert server.calls[-1]["op"] == "reweight" and server.calls[-1]["layout"] == "blend"
        # a blend is not the plain re-run the server used to make instead
        free = local_studio.reweight({"moon": 1.8}, layout="free", parent=local_version.parent_id)
        blended = np.asarray(Image_open(local_version.image_path))
        assert not np.array_equal(np.asarray(Image_open(free.image_path)), blended)
    finally:
        server.close()


def test_a_layout_the_server_cannot_run_is_refused_and_nothing_is_written(server_engine, tmp_path):
    run = _engine_answer(server_engine)

    def replica(request):  # a batching replica runs blend and free only (no attention injection)
        status, body = run(request)
        if request["op"] == "info":
            body = json.dumps({**json.loads(body), "layouts": ["blend", "free"]})
        return status, body

    server = _Server(replica)
    try:
        studio = Studio(RemoteEngine(server.url, timeout=60), StudyLog(tmp_path / "a.db"), tmp_path / "out")
        studio.generate(_params(2))
        before = sorted(p.name for p in (tmp_path / "out").iterdir())
        with pytest.raises(AttuneError, match="Layout 'inject' does not run on the Attune server") as caught:
            studio.reweight({"moon": 1.5}, layout="inject")
        assert "\n" not in str(caught.value)
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before
        assert len(studio.log.versions()) == 1 and [c["op"] for c in server.calls] == ["generate", "info"]
    finally:
        server.close()


def test_a_studio_refuses_a_result_made_with_another_layout(tmp_path):
    class Downgrading(FakeEngine):
        layouts = ("blend", "free")

        def reweight(self, parent, weights, weight_mode="score", layout="blend", progress=None):
            return super().reweight(parent, weights, weight_mode, "free", progress)

    studio = Studio(Downgrading(), StudyLog(tmp_path / "a.db"), tmp_path / "out")
    studio.generate(_params(1))
    with pytest.raises(AttuneError, match="ran layout 'free' instead of 'blend'"):
        studio.reweight({"moon": 1.5})
    assert len(studio.log.versions()) == 1 and len(list((tmp_path / "out").glob("*.png"))) == 1


# ---------------------------------------------------------------------------------------------- who may call
def test_the_client_sends_the_token_as_a_bearer_header(monkeypatch):
    server = _Server(lambda request: (200, json.dumps({"ok": True, "layouts": ["blend", "free"]})))
    try:
        monkeypatch.setenv("ATTUNE_SERVER_TOKEN", "s3cret")
        RemoteEngine(server.url, timeout=10).info
        monkeypatch.delenv("ATTUNE_SERVER_TOKEN")
        RemoteEngine(server.url, timeout=10).info
        assert server.headers[0].get("Authorization") == "Bearer s3cret"
        assert "Authorization" not in server.headers[1]
    finally:
        server.close()


@pytest.mark.parametrize("status, error, expected", [
    (401, "Wrong token: ATTUNE_SERVER_TOKEN on the client differs from the server's.", "HTTP 401: Wrong token"),
    (403, "This Attune server has no ATTUNE_SERVER_TOKEN, so it answers requests from its own machine only.",
     "HTTP 403: This Attune server has no"),
    (413, "The request is 30000000 bytes; the limit is 23418197.", "HTTP 413: The request is"),
    (400, "The image is not a readable PNG image.", "The image is not a readable PNG image."),
])
def test_a_4xx_answer_is_one_line_and_never_retried(status, error, expected):
    server = _Server(lambda request: (status, json.dumps({"ok": False, "error": error})))
    try:
        started = time.time()
        with pytest.raises(AttuneError) as caught:
            RemoteEngine(server.url, timeout=30, retries=3).generate(_params())
        message = str(caught.value)
        assert expected in message and "\n" not in message and "Traceback" not in message
        assert len(server.calls) == 1 and time.time() - started < 1.0  # no retry, no pause
    finally:
        server.close()


def test_the_server_checks_the_bearer_token_in_constant_time(monkeypatch):
    import hmac

    compared, real = [], hmac.compare_digest
    monkeypatch.setattr(remote.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    remote.check_token(None, None)  # no token configured: nothing to check (serve limits callers to loopback)
    remote.check_token("s3cret", "Bearer s3cret")
    remote.check_token("s3cret", "bearer  s3cret ")
    for header in (None, "", "Bearer", "Bearer ", "Basic s3cret", "Bearer s3cre", "Bearer s3cret2", "s3cret"):
        with pytest.raises(remote.BadRequest) as caught:
            remote.check_token("s3cret", header)
        assert caught.value.status == 401 and "\n" not in str(caught.value) and "s3cret" not in str(caught.value)
    assert (b"s3cre", b"s3cret") in compared and (b"s3cret", b"s3cret") in compared


def test_a_remote_engine_offers_the_servers_model_defaults(engine):
    from engine.model.family import BUILTIN_DEFAULTS, ModelDefaults

    client = RemoteEngine("http://127.0.0.1:9")
    sd_like = ModelDefaults("sd", 512, 512, 7.5, 50, "euler", {"timestep_spacing": "leading"},
                            sources={"width": "model folder"}, notes=("a note",), phrases=("full moon",))
    client._info = json.loads(json.dumps({**remote.engine_info(engine), "defaults": dataclasses.asdict(sd_like)}))
    assert client.model_defaults == sd_like  # through JSON, as the wire carries it
    client._info = json.loads(json.dumps(remote.engine_info(engine)))
    assert client.model_defaults == engine.model_defaults
    client._info = {"layouts": ["free"]}  # a server from before model defaults
    assert client.model_defaults == BUILTIN_DEFAULTS
