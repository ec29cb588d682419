"""The package users install: built as a wheel, it holds the library alone and works with numpy alone."""

import os
import shutil
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
    """The wheel, built from a private copy of what it is made of: test workers building at once in
    the source tree would share its build/ folder."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
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
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
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


def test_the_extras_split_flower_from_the_experiments(wheel):
    metadata = next(
        zipfile.ZipFile(wheel).read(n).decode()
        for n in zipfile.ZipFile(wheel).namelist()
        if n.endswith(".dist-info/METADATA")
    )
    requires = [
        line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")
    ]
    flower = [r for r in requires if 'extra == "flower"' in r]
    experiments = [r for r in requires if 'extra == "experiments"' in r]
    assert [r.split(";")[0].replace(" ", "") for r in flower] == ["flwr<1.43,>=1.41"]
    assert any(r.startswith("torch") for r in experiments)
    assert any(r.startswith("flwr[simulation]") for r in experiments)
    assert [r.split(";")[0] for r in requires if "extra" not in r] == ["numpy>=1.26"]


FLOWER_ROUND = """
import importlib.util, numpy as np, fedzip
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity
from fedzip.flower import FedZipStrategy, TrafficTracker, fedzip_mod
assert importlib.util.find_spec("torch") is None, "the flower extra must not bring torch"
TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1

class Grid:
    def get_node_ids(self):
        return [0, 1]

rng = np.random.default_rng(0)
model = {"w": rng.standard_normal((64, 32)).astype(np.float32), "b": np.zeros(32, np.float32)}
record = lambda d: ArrayRecord({k: Array(v) for k, v in d.items()})
inner = FedZipStrategy(FedAvg(min_available_nodes=2), compressor=fedzip.FedZip(rank=2))
strategy = TrafficTracker(inner)

def app(msg, context):
    got = {k: a.numpy() for k, a in msg.content["arrays"].items()}
    trained = record({k: v + 0.01 for k, v in got.items()})
    return Message(RecordDict({"arrays": trained, "metrics": MetricRecord({"num-examples": 5})}), reply_to=msg)

replies = []
for msg in strategy.configure_train(1, record(model), ConfigRecord({}), Grid()):
    node = msg.metadata.dst_node_id
    msg = Message(RecordDict(dict(msg.content.items())), dst_node_id=node, message_type="train")
    context = Context(run_id=1, node_id=node, node_config={}, state=RecordDict(), run_config={})
    replies.append(fedzip_mod(msg, context, app))
arrays, _ = strategy.aggregate_train(1, replies)
assert arrays is not None and inner.history[-1].accepted == 2
assert strategy.totals("train").accepted_up_bytes == inner.history[-1].uplink_bytes
print(fedzip.__file__, round(inner.history[-1].ratio))
"""


def test_the_flower_extra_runs_a_round_without_torch(wheel, tmp_path):
    """A user's Flower app brings its own framework: fedzip[flower] installs Flower and nothing else."""
    env = tmp_path / "flower-env"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=120)
    python = env / "bin" / "python"
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), f"{wheel}[flower]"],
        capture_output=True,
        text=True,
        timeout=600,
        env=clean,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    result = subprocess.run(
        [str(python), "-c", FLOWER_ROUND], capture_output=True, text=True, timeout=300, env=clean
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(env) in result.stdout
    assert int(result.stdout.split()[-1]) > 5  # rank-2 factors of a 64x32 matrix: several times smaller
