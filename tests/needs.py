"""What a test module needs before it can run; skips the module otherwise."""

import pytest


def simulation() -> None:
    """Flower's simulation engine (torch, Ray) and Fashion-MNIST installed (``make data``)."""
    pytest.importorskip("torch")
    pytest.importorskip("ray")
    from fedzip.fl.data import DataError, find_data_dir

    try:
        find_data_dir()
    except DataError:
        pytest.skip("Fashion-MNIST is not installed (make data)", allow_module_level=True)
