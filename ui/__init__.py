"""Shared Streamlit UI pieces. Pages import this package first, so process-wide settings go here."""
import os

# PyTorch's OpenMP threads busy-wait by default; on a shared 2-core host (Community Cloud) that slows every call
# several times over (measured in docs/onnx.md). It must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
