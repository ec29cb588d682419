"""The package users install: built as a wheel, it holds the library alone and works with numpy alone."""

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (path,) = out.glob("fedzip-*.whl")
    return path


def test_the_wheel_holds_the_library_and_no_research(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    modules = [n for n in names if n.endswith(".py")]
    assert "fedzip/codec.py" in modules and "fedzip/flower/strategy.py" in modules
    assert all(n.startswith("fedzip/") for n in modules), [n for n in modules if not n.startswith("fedzip/")]
    for research in (
        "research/",
        "results.py",
        "convergence.py",
        "frontier.py",
        "reproduce.py",
        "targets.py",
    ):
        assert not any(research in n for n in names), research
    text = "\n".join(zipfile.ZipFile(wheel).read(n).decode() for n in modules)
    for marker in ("docs/results", "findings.md", "1085"):
        assert marker not in text


def test_the_wheel_encodes_and_decodes_with_numpy_alone(wheel, tmp_path):
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    python = env / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    # numpy, and nothing else, from this interpreter's installation (no registry needed)
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    source = Path(numpy.__file__).parent.parent
    for name in ("numpy", "numpy.libs"):
        if (source / name).exists():
            (site / name).symlink_to(source / name)
    script = """
import importlib.util, numpy as np, fedzip
assert importlib.util.find_spec("torch") is None and importlib.util.find_spec("flwr") is None
update = {"w": np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32), "b": np.zeros(32, np.float32)}
for codec in (fedzip.FedZip(keep=0.1), fedzip.FedZip(rank=2), fedzip.get_compressor("stc")):
    payload = codec.encode(update)
    restored = fedzip.decode(payload)
    assert all((restored[k] == v).all() for k, v in codec.approximate(update).items())
print(fedzip.__file__, len(fedzip.FedZip(keep=0.1).encode(update)))
"""
    # a clean environment: Flower's Ray backend exports this process's sys.path as PYTHONPATH
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run(
        [str(python), "-c", script], capture_output=True, text=True, timeout=120, env=clean
    )
    assert result.returncode == 0, result.stderr
    assert str(env) in result.stdout  # the installed wheel, not the source tree
    assert sysconfig.get_paths()["purelib"] not in result.stdout
