"""Shared by the benchmarks: what machine the numbers came from, and printing a result as JSON or as a table.

Imports nothing beyond the standard library, so bench/gpu_torch.py stays runnable on a bare GPU box.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Callable


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(**extra) -> dict:
    """CPU, cores, Python and OS, with the bench's own fields (threads, library versions) in between."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), **extra, "python": platform.python_version(),
            "platform": platform.platform()}


def print_result(result: dict, as_json: bool, print_table: Callable[[dict], None], indent: int | None = None) -> int:
    """One JSON object (--json) or the bench's human table; the exit code 0 for main() to return."""
    if as_json:
        print(json.dumps(result, indent=indent))
    else:
        print_table(result)
    return 0
