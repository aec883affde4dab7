"""Shared by the concurrency tests: run one piece of work in parallel threads and collect what they raised."""

from __future__ import annotations

import threading
from typing import Callable


def run_in_threads(work: Callable[[int], None], count: int = 8) -> list[Exception]:
    """Run work(n) for n in range(count), each in its own thread, all at once; the exceptions they raised."""
    errors: list[Exception] = []

    def guarded(n: int) -> None:
        try:
            work(n)
        except Exception as error:  # reported to the test, which asserts there are none
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
