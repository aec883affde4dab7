"""Four users at once: each its own Studio (as each browser session gets) over the one engine the app shares
through st.cache_resource. Generations must queue (never interleave) and every version must be logged with its ids.

Threads drive Studios directly: Streamlit's AppTest swaps a process-global mock Runtime per run, so four AppTests
cannot run at the same time in one process.
"""
from __future__ import annotations

import threading
import time

from tests.app_support import app_env, log  # noqa: F401


def test_four_concurrent_sessions_queue_and_log_every_version_with_their_ids(app_env, tiny_model_dir):
    from engine.pipeline.attune import GenerateParams
    from engine.study.studio import Studio
    from ui import settings
    from ui.engine_cache import shared_engine, shared_log

    engine = shared_engine(str(tiny_model_dir), "torch")
    assert shared_engine(str(tiny_model_dir), "torch") is engine  # one engine for every session
    study_log = shared_log(str(settings.log_path()))
    steps_seen: list[tuple[int, int]] = []  # (session, step) in the order the engine ran them
    depth_seen: list[int] = []
    results, errors = {}, []
    start = threading.Barrier(4)
    running = threading.Event()
    running.set()

    def watch_queue() -> None:
        while running.is_set():
            depth_seen.append(engine.queue_depth)
            time.sleep(0.005)

    def session(i: int) -> None:
        try:
            studio = Studio(engine, study_log, app_env / f"s{i}", participant_id=f"P{i}", study_id="crowd", condition="full")
            studio.event("generate", "page_view")
            params = GenerateParams(prompt="a painting of a wolf in front of the full moon", seed=100 + i, steps=6, width=64, height=64)
            start.wait(timeout=60)  # all four press Generate together
            v1 = studio.generate(params, progress=lambda step, total: steps_seen.append((i, step)))
            v2 = studio.reweight({"moon": 1.5}, "score", progress=lambda step, total: steps_seen.append((i, step)))
            results[i] = (studio.session_id, [v1.id, v2.id])
        except BaseException as error:  # reported below with the session's index
            errors.append((i, repr(error)))

    watcher = threading.Thread(target=watch_queue, daemon=True)
    watcher.start()
    threads = [threading.Thread(target=session, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    running.clear()
    assert not errors, errors
    assert max(depth_seen) >= 1  # someone waited in the queue

    # Each run's 6 steps are one unbroken block: the lock kept runs from interleaving.
    blocks = [steps_seen[k : k + 6] for k in range(0, len(steps_seen), 6)]
    assert len(blocks) == 8
    for block in blocks:
        assert len({who for who, _ in block}) == 1 and [step for _, step in block] == [1, 2, 3, 4, 5, 6]

    versions = log(app_env).versions_df()
    assert len(versions) == 8
    assert len({session_id for session_id, _ in results.values()}) == 4
    for i, (session_id, version_ids) in results.items():
        mine = versions[versions["session_id"] == session_id]
        assert sorted(mine["id"]) == sorted(version_ids)
        assert set(mine["participant_id"]) == {f"P{i}"}
        assert set(mine["study_id"]) == {"crowd"} and set(mine["condition"]) == {"full"}
        assert list(mine.sort_values("number")["seed"]) == [100 + i, 100 + i]
        assert list(mine.sort_values("number")["kind"]) == ["generate", "reweight"]
    events = log(app_env).events_df()
    for i, (session_id, _) in results.items():
        assert set(events[events["session_id"] == session_id]["participant_id"]) == {f"P{i}"}
