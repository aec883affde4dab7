"""Ray Serve deployment: a local Ray on CPU with the built-in model; 4 concurrent participants; a replica killed
mid-batch. Needs requirements-serve.txt (skipped with the reason where Ray is not installed)."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install -r requirements-serve.txt)")

from engine.batching import exact_rows, rows_exact_forced_off  # noqa: E402
from engine.errors import AttuneError  # noqa: E402
from engine.log import StudyLog  # noqa: E402
from engine.pipeline import Attune, GenerateParams  # noqa: E402
from engine.remote import RemoteEngine, ServerError  # noqa: E402
from engine.studio import Studio  # noqa: E402

PROMPT = "a house by the lake under the full moon"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from ray import serve

    from engine.serve import build_app

    try:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024 * 1024, log_to_driver=False,
                 _temp_dir=str(tmp_path_factory.mktemp("ray")))
    except Exception as error:  # e.g. no /dev/shm or no free ports in a sandbox
        pytest.skip(f"Ray cannot start here: {type(error).__name__}: {str(error)[:200]}")
    port = _free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"num_cpus": 1, "threads": 1, "window_ms": 20}), name="attune", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


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
    # the replica stacks requests where rows are bit-exact (engine.batching; not on AMD's MKL, nor with
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

