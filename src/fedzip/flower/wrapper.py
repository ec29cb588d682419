"""A strategy that wraps another: what it does not define, the inner strategy does."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


def inner_chain(strategy: Strategy) -> list[Strategy]:
    """``strategy`` and the strategies it wraps, outermost first."""
    chain = [strategy]
    while isinstance(getattr(chain[-1], "strategy", None), Strategy) and len(chain) < 64:
        chain.append(chain[-1].strategy)
    return chain


class StrategyWrapper(Strategy):
    """Base of fedzip's wrappers, like Flower's DP wrappers: every phase goes to ``self.strategy``.

    Attribute reads and writes the wrapper does not define go to the inner
    strategy too (``wrapper.fraction_train = 0.2``), so a wrapped strategy is
    configured as the bare one. Subclasses set ``self.strategy`` last in
    ``__init__``: from then on, unknown attributes are the inner strategy's.
    """

    outermost: ClassVar[bool] = False  # True: no fedzip wrapper may wrap this one

    def _check_inner(self, strategy: Any) -> Strategy:
        """``strategy``, if this wrapper may wrap it; a ValueError saying what to do otherwise."""
        name = type(self).__name__
        if not isinstance(strategy, Strategy):
            raise ValueError(
                f"strategy must be a flwr.serverapp.strategy.Strategy, got {type(strategy).__name__}"
            )
        for inner in inner_chain(strategy):
            if isinstance(inner, type(self)):
                raise ValueError(f"{name} cannot wrap another {name}")
            if getattr(type(inner), "outermost", False):
                raise ValueError(
                    f"{type(inner).__name__} must be the outermost strategy: "
                    f"{type(inner).__name__}({name}(...)), not the reverse"
                )
        return strategy

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "strategy" or "strategy" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["strategy"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        inner = self.__dict__.get("strategy")
        own = name in self.__dict__ or hasattr(type(self), name)
        if inner is not None and not own and hasattr(inner, name):
            setattr(inner, name, value)
        else:
            object.__setattr__(self, name, value)

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)
