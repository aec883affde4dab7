"""engine.remote.client without Ray: a stdlib HTTP server stands in for engine.remote.server (same JSON), so the client, its
error messages and the Studio's storage are checked on every CI machine."""
from __future__ import annotations

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
from engine.remote.client import RemoteEngine, ServerError, make_engine
from engine.study.studio import Studio

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

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                calls.append(request)
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
    """What engine.remote.server's replica does, without Ray."""

    def answer(request):
        try:
            if request["op"] == "info":
                c = engine.components
                return 200, json.dumps({"ok": True, "model_id": c.model_id, "weights_hash": c.weights_hash,
                                        "backend": engine.backend_name, "device": engine.device,
                                        "vae_scale_factor": c.vae_scale_factor})
            if request["op"] == "tokenize":
                tokens = engine.tokenize(request["prompt"], request["syntax"])
                return 200, json.dumps({"ok": True, "word_tokens": remote.dataclasses.asdict(tokens)})
            if request["op"] == "inpaint":
                result = engine.inpaint(remote.inpaint_params_from(request))
            else:
                result = engine.generate(remote.params_from(request["params"]))
            return 200, json.dumps({"ok": True, **remote.result_dict(result)})
        except AttuneError as error:
            return 400, json.dumps({"ok": False, "error": str(error)})

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
