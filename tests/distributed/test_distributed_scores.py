"""Scores and choices under torch.distributed (2 CPU processes on gloo) equal the single-process ones."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
from gloo_workers import rank_data, run_gloo, scores_job, small_cnn

from lightning_prune.pruning import PruningStructure, lowest_units, oracle_scores, taylor_scores

# Spawns processes (gloo ranks): `make test-fast` skips it.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("gloo")
    mp.spawn(run_gloo, args=(2, str(folder / "init"), str(folder), scores_job), nprocs=2, join=True)
    results = [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    for result in results:
        assert "error" not in result, result.get("trace")
    return [result["value"] for result in results]


def test_distributed_scores_are_the_single_process_scores_over_all_ranks_batches(two_ranks):
    structure = PruningStructure(small_cnn(), torch.zeros(1, 1, 8, 8))
    union = rank_data(0) + rank_data(1)
    expected_taylor = taylor_scores(structure, ["conv1", "conv2"], union)
    expected_oracle = oracle_scores(structure, ["conv1", "conv2"], union)
    local = [taylor_scores(structure, ["conv1"], rank_data(rank))["conv1"] for rank in range(2)]
    assert not torch.allclose(local[0], local[1])  # the ranks' own data disagree...
    for result in two_ranks:  # ...the reduced scores do not, and equal one process over the union
        for name in ("conv1", "conv2"):
            torch.testing.assert_close(result["taylor"][name], expected_taylor[name], rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(result["oracle"][name], expected_oracle[name], rtol=1e-9, atol=1e-12)
            assert torch.equal(result["taylor"][name], two_ranks[0]["taylor"][name])
    assert two_ranks[0]["chosen"] == two_ranks[1]["chosen"] == lowest_units(expected_taylor, {"conv1": 3, "conv2": 2})


def test_distributed_agreement_check_fails_on_every_rank_naming_the_rank(two_ranks):
    for result in two_ranks:
        assert result["disagreement"].startswith("pruned indices must be the same on every rank, got a different "
                                                 "choice on rank(s) [1] than on rank 0")


def test_distributed_helpers_shard_batches_and_find_missing_ranks(two_ranks):
    assert [result["shard"] for result in two_ranks] == [[0, 2, 4], [1, 3, 5]]
    assert two_ranks[0]["without"] == two_ranks[1]["without"] == [1]


def test_distributed_helpers_are_identities_in_one_process():
    from lightning_prune.pruning.distributed import agreed, rank_batches, ranks_without, sum_across_ranks, world

    assert world() == (0, 1)
    tensor = torch.arange(3.0)
    assert torch.equal(sum_across_ranks(tensor), tensor)
    assert rank_batches(iter(range(10)), 3) == [0, 1, 2]
    assert agreed({"a": [1]}, "x") == {"a": [1]} and ranks_without(False) == [0]
