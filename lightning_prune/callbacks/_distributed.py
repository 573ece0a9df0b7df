"""The Pruning callback under multi-process strategies: what it checks in `setup` and how DDP is rebuilt.

The maths of agreeing across ranks lives in `lightning_prune.pruning.distributed`; this module only knows
Lightning's strategies. Physical pruning replaces parameter objects, so a strategy's wrapper built over the old
parameters (DDP's reducer buckets, FSDP's flat parameters) is stale afterwards: DDP is rebuilt through the
strategy's public `configure_ddp`, strategies without such a hook are refused before training starts. So is
`ddp_spawn`: its launcher copies rank 0's final weights into the main process's module, which was never pruned.
"""

from __future__ import annotations

import logging

from lightning.pytorch import Trainer
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy, Strategy
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

from lightning_prune.pruning.distributed import ranks_without, world

# A child of Lightning's logger: the per-rank line shows wherever Lightning's own INFO lines do, on every rank.
_log = logging.getLogger("lightning.pytorch.lightning_prune")


def physical_pruning_problem(strategy: Strategy) -> str | None:
    """Why physical pruning cannot run under `strategy`, or None when it can (no wrapper, or a rebuildable DDP)."""
    if isinstance(strategy, SingleDeviceStrategy):
        return None
    if isinstance(strategy, DDPStrategy) and not isinstance(strategy, DeepSpeedStrategy):
        if isinstance(strategy.launcher, _MultiProcessingLauncher):
            # The launcher loads rank 0's final weights into the main process's module, which was never pruned.
            # Private `_start_method` (and launcher class): Lightning has no public accessor for either.
            return (f"{type(strategy).__name__} with start_method {strategy._start_method!r} (ddp_spawn): Lightning "
                    "loads the workers' pruned weights into the unpruned module of the main process")
        return None
    return type(strategy).__name__  # FSDP, DeepSpeed, model parallel: wrappers over flattened/sharded parameters


def check_strategy(strategy: Strategy, mode: str) -> None:
    """Refuse physical pruning under a strategy that cannot take it (FSDP, DeepSpeed, ddp_spawn, ...).

    Raises:
        ValueError: Naming the strategy, `ddp` and mask mode as the alternatives.
    """
    problem = physical_pruning_problem(strategy) if mode == "physical" else None
    if problem:
        raise ValueError(
            "`mode='physical'` must run under a strategy whose model wrapper can be rebuilt after pruning "
            f"(single device or ddp), got {problem}; use `strategy: ddp`, or `mode='mask'`, which keeps every shape."
        )


def check_train_data(criterion: str, present: bool) -> None:
    """Raise on every rank together if a data-driven criterion has no train loader on some rank.

    Raises:
        ValueError: Naming the criterion (and the ranks without data when there are several).
    """
    missing = ranks_without(present)
    if not missing:
        return
    where = f" on rank(s) {missing} of {world()[1]}" if world()[1] > 1 else ""
    raise ValueError(f"criterion {criterion!r} must have training data, got no train dataloader{where}.")


def rebuild_wrapper(trainer: Trainer) -> None:
    """Wrap the (physically pruned) LightningModule in a fresh DDP, as `DDPStrategy.setup` does at fit start.

    The old wrapper's buckets hold the replaced parameters; its replacement verifies that every rank has the same
    parameter shapes and broadcasts rank 0's values. The optimizer is rebuilt afterwards by the caller.
    """
    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and strategy.model is not strategy.lightning_module:
        strategy.model = strategy.lightning_module
        strategy.configure_ddp()


def log_rank_indices(indices: dict[str, list[int]]) -> None:
    """One line per rank with the indices it pruned (rank-zero logging would show only rank 0's)."""
    rank, size = world()
    if size > 1:
        _log.info(f"[rank: {rank}] prune/indices {indices}")
