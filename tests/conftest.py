import os

# Busy-waiting OpenMP threads slow every torch call several times over on a loaded 2-core CI machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

try:  # the light install (.ci/light.sh) has no torch: its tests are marked `light` and never need it
    import torch
except ImportError:
    torch = None
else:
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


# The ONNX suites (test_onnx_export.py, test_onnx_runner.py) share one export of the tiny model per test process.
@pytest.fixture(scope="session")
def onnx_cache():
    """ATTUNE_CACHE for the ONNX tests' engines: the shared test cache, never ~/.cache."""
    from tests.onnx_support import cache_dir

    mp = pytest.MonkeyPatch()
    mp.setenv("ATTUNE_CACHE", str(cache_dir()))
    yield cache_dir()
    mp.undo()


@pytest.fixture(scope="session")
def tiny_export(tiny_model_dir, onnx_cache):
    from tests.onnx_support import exported

    return exported(tiny_model_dir)


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dir):
    """A PyTorch engine on the tiny model, one per test module (the layout and injection tests)."""
    from engine.pipeline.attune import Attune

    engine = Attune(tiny_model_dir, backend="torch")
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def tiny_components(tiny_model_dir):
    from engine.model.loading import load_components

    return load_components(tiny_model_dir)
