import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def _private_onnx_cache(tmp_path_factory):
    """Engines built with backend="auto" export ONNX graphs; keep them out of the user's ~/.cache."""
    if "ATTUNE_CACHE" not in os.environ:
        os.environ["ATTUNE_CACHE"] = str(tmp_path_factory.mktemp("attune-cache"))
    yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_inpaint_model_dir(tmp_path_factory):
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-inpaint-model"), in_channels=9)
