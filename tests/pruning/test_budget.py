"""Compute budgets: the fewest lowest-scored units that bring measured MACs / parameters within the target."""

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from pruning_toys import ToyCNN
from torch import nn

from lightning_prune.pruning import PruningStructure, l1_scores
from lightning_prune.pruning.budget import budget_problems, global_order, indices_for_budget, pruned_cost

EXAMPLE = torch.zeros(1, 1, 8, 8)
CAPS = {"conv1": 5, "conv2": 3, "fc1": 4}


class NarrowCNN(nn.Module):
    """ToyCNN built directly with c1 / c2 / f1 channels: what physical pruning must produce."""

    def __init__(self, c1: int, c2: int, f1: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1)
        self.conv2, self.fc1, self.fc2 = nn.Conv2d(c1, c2, 3, padding=1), nn.Linear(c2 * 4, f1), nn.Linear(f1, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        return self.fc2(F.relu(self.fc1(F.max_pool2d(F.relu(self.conv2(x)), 2).flatten(1))))


def _setup():
    torch.manual_seed(0)
    network = ToyCNN()
    scores = l1_scores(PruningStructure(network, EXAMPLE), list(CAPS))
    return network, scores


@pytest.mark.parametrize("metric, share", [("macs", 0.5), ("params", 0.6)])
def test_indices_for_budget_is_the_smallest_prefix_within_the_target(metric, share):
    network, scores = _setup()
    indices, report = indices_for_budget(network, EXAMPLE, scores, CAPS, {metric: share})
    order = global_order(scores, CAPS)
    before = pruned_cost(network, EXAMPLE, {}, metric)
    costs = []  # brute force over every prefix of the global order
    for count in range(len(order) + 1):
        chosen = {name: sorted(i for n, i in order[:count] if n == name) for name in CAPS}
        costs.append(pruned_cost(network, EXAMPLE, chosen, metric))
    smallest = next(count for count, cost in enumerate(costs) if cost <= share * before)
    assert sum(map(len, indices.values())) == smallest and costs[smallest - 1] > share * before  # within one unit
    kept = [ToyCNN().get_submodule(name).weight.shape[0] - len(indices[name]) for name in CAPS]
    macs, params = tp.utils.count_ops_and_params(NarrowCNN(*kept), EXAMPLE)  # independently built narrow network
    assert report[f"budget/{metric}_after"] == (macs if metric == "macs" else params)
    assert report[f"budget/{metric}_reached"] == pytest.approx(report[f"budget/{metric}_after"] / before)
    assert report[f"budget/{metric}_reached"] <= share


def test_global_order_respects_caps_and_takes_lowest_scores_first():
    scores = {"a": torch.tensor([0.1, 0.5, 0.2]), "b": torch.tensor([0.05, 0.3])}
    assert global_order(scores, {"a": 2, "b": 1}) == [("b", 0), ("a", 0), ("a", 2)]


def test_indices_for_budget_refuses_a_budget_the_layers_cannot_reach():
    network, scores = _setup()
    with pytest.raises(ValueError, match=r"`budget` \{'macs': 0.05\} must be reachable by the selected layers: "
                                         r"pruning \['conv1', 'conv2', 'fc1'\] as far as allowed leaves 0\.\d+ of"):
        indices_for_budget(network, EXAMPLE, scores, CAPS, {"macs": 0.05})


@pytest.mark.parametrize("budget", [{"flops": 0.5}, {"macs": 1.5}, {"macs": 0.5, "params": 0.5}, {"params": True}])
def test_budget_problems_name_the_argument_and_the_choices(budget):
    assert budget_problems(budget) == [
        f"`budget` must be one of {{'macs': f}} or {{'params': f}} with f in (0, 1), got {budget!r}."
    ]
    assert budget_problems(None) == budget_problems({"macs": 0.5}) == []
