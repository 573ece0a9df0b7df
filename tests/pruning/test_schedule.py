"""Schedule maths without Lightning: original numbering across physical steps, masked units excluded, old records."""

import torch

from lightning_prune.pruning.checkpoint import read_record
from lightning_prune.pruning.schedule import exclude_pruned, merge_indices, to_original


def test_to_original_maps_indices_of_a_shrunk_layer_back_like_deleting_from_a_list():
    units = list(range(10))  # brute force: delete positions from the live list, remember which originals went
    steps = [[1, 4], [0, 6], [2]]
    removed: list[int] = []
    for step in steps:
        expected = sorted(units[i] for i in step)
        assert to_original(step, 10, removed) == expected
        units = [u for i, u in enumerate(units) if i not in step]
        removed = merge_indices({"conv": removed}, {"conv": expected})["conv"]
    assert removed == sorted(set(range(10)) - set(units))


def test_exclude_pruned_gives_masked_units_infinite_scores_and_leaves_the_input_alone():
    scores = {"a": torch.tensor([0.0, 3.0, 0.0, 1.0]), "b": torch.tensor([2.0, 1.0])}
    result = exclude_pruned(scores, {"a": [0, 2]})
    assert result["a"].tolist() == [float("inf"), 3.0, float("inf"), 1.0]
    assert torch.equal(result["b"], scores["b"]) and scores["a"][0] == 0.0


def test_read_record_reads_a_version_1_record_as_one_step():
    old = {"lightning_prune": {"pruning": {"version": 1, "mode": "physical", "indices": {"conv1": [0, 2]},
                                           "history": [], "heads": {}}}}
    record = read_record(old)
    assert record["steps"] == [{"epoch": None, "fraction": 1.0, "indices": {"conv1": [0, 2]}}]
    assert "steps" not in old["lightning_prune"]["pruning"]  # the checkpoint itself is not changed
