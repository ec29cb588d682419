import importlib.util

import numpy as np
import pytest
from hypothesis import settings

# derandomized: the same examples every run, so that a run's result does not depend on luck
settings.register_profile("default", deadline=None, max_examples=60, derandomize=True)
settings.load_profile("default")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def heavy_tailed(rng, shape, dtype=np.float32, scale=0.01):
    """Values shaped like real model updates: Student-t with 3 degrees of freedom."""
    return (rng.standard_t(3, size=shape) * scale).astype(dtype)


@pytest.fixture
def task_identity():
    """Outside an engine, Flower needs to be told which run and node it is."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


def delivered(message):
    """``message`` as its node receives it over the wire: a message of its own with a copy of the content."""
    from flwr.app import Message, RecordDict

    return Message(
        RecordDict(dict(message.content.items())),
        dst_node_id=message.metadata.dst_node_id,
        message_type=message.metadata.message_type,
    )


class FakeGrid:
    """The part of Flower's Grid that strategies use to sample nodes."""

    def __init__(self, nodes):
        self.nodes = list(range(nodes)) if isinstance(nodes, int) else list(nodes)

    def get_node_ids(self):
        return self.nodes


if importlib.util.find_spec("xdist"):  # the hook exists only with pytest-xdist

    def pytest_xdist_make_scheduler(config, log):
        """Under xdist, the tests of a ``TestShared...`` class share one Flower session (a fixture of
        theirs) and run on one worker, so the session starts once; every other test runs on its own.
        (xdist's loadgroup marks do not group on pytest 9.2: it renames node ids pytest no longer reads.)"""
        from xdist.scheduler import LoadScopeScheduling

        class SharedSessionsTogether(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                module, _, rest = nodeid.partition("::")
                cls = rest.split("::", 1)[0]
                return f"{module}::{cls}" if cls.startswith("TestShared") and "::" in rest else nodeid

        return SharedSessionsTogether(config, log)


# Modules whose tests run Flower (minutes each): started first, so that the short tests fill the
# workers' time around them instead of all of them ending together.
SLOW_MODULES = (
    "test_flower_apps.py",
    "test_research_reproduce.py",
    "test_deployment.py",
    "test_simulation.py",
    "test_hostile_simulation.py",
)


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return SLOW_MODULES.index(name) if name in SLOW_MODULES else len(SLOW_MODULES)

    items.sort(key=rank)  # stable: the order within a module is kept
