"""`bn_scale` (a criterion added through its own module and one registry line) and the typed plan + engine step."""

import pytest
import torch
from pruning_toys import ToyCNN, ToyResNet

from lightning_prune.pruning.bn_scale import bn_scale_scores
from lightning_prune.pruning.criteria import CRITERIA, build_criterion, criterion_options
from lightning_prune.pruning.engine import PruneState, prune_step
from lightning_prune.pruning.plan import CriterionChoice, PrunePlan
from lightning_prune.pruning.structure import PruningStructure

INPUT = torch.zeros(1, 3, 8, 8)


def _signed_gammas(network: torch.nn.Module) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(torch.randn(module.num_features, generator=generator))
    return network


def test_bn_scale_is_the_sum_of_abs_gamma_over_the_group():
    network = _signed_gammas(ToyResNet())
    structure = PruningStructure(network, INPUT)
    scores = bn_scale_scores(structure, ["stem", "blocks.0.conv_a"])
    # By hand: the stem's channels are also the residual stream, normalised by bn and both blocks' bn_b.
    stem = network.bn.weight.abs() + network.blocks[0].bn_b.weight.abs() + network.blocks[1].bn_b.weight.abs()
    torch.testing.assert_close(scores["stem"], stem.detach().double())
    torch.testing.assert_close(scores["blocks.0.conv_a"], network.blocks[0].bn_a.weight.abs().detach().double())
    mean = build_criterion("bn_scale", reduction="mean").scores(structure, ["stem"])["stem"]
    torch.testing.assert_close(mean, stem.detach().double() / 3)


def test_bn_scale_refuses_layers_without_batchnorm_and_bad_options():
    structure = PruningStructure(ToyCNN(), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"criterion 'bn_scale' must score layers whose group has a BatchNorm, "
                                         r"got none for \['conv2'\]"):
        bn_scale_scores(structure, ["conv1", "conv2"])
    with pytest.raises(ValueError, match=r"`bn_scale` option `reduction` must be one of \['sum', 'mean'\], got 'max'"):
        build_criterion("bn_scale", reduction="max")


def test_the_registry_names_bn_scale_and_its_options():
    assert "bn_scale" in CRITERIA and criterion_options("bn_scale") == ("reduction",)
    assert criterion_options("oracle") == ("chunk_size",)


def test_plan_lists_every_problem_at_once():
    plan = PrunePlan(criterion=CriterionChoice("bn_scale", {"reduce": "sum"}), mode="hard", given_options=True)
    problems = plan.problems()
    assert problems == [
        "`mode` must be one of ['physical', 'mask'], got 'hard'.",
        "`prune_at: start` or `prune_at_epoch: N` must be given, got neither.",
        "`layers` must map at least one glob pattern to a ratio, e.g. {'conv1': 0.5}, got none.",
        "`criterion_options` must be among ['reduction'] for criterion 'bn_scale', got ['reduce'].",
    ]


def test_prune_step_with_bn_scale_removes_the_lowest_abs_gamma_channels():
    network = _signed_gammas(ToyResNet())
    expected = sorted(torch.argsort(network.blocks[0].bn_a.weight.abs(), stable=True)[:3].tolist())
    plan = PrunePlan.from_arguments("bn_scale", {}, None, None, layers={"blocks.0.conv_a": 0.5}, prune_at="start")
    assert plan.problems() == []
    loss_fn = torch.nn.functional.cross_entropy
    result = prune_step(network, INPUT, plan, plan.steps(), 0, PruneState(), lambda: [], loss_fn)
    assert result.state.indices == {"blocks.0.conv_a": expected}
    assert network.blocks[0].conv_a.out_channels == 3 and network.blocks[0].bn_a.num_features == 3
    assert result.metrics["prune/params_after"] < result.metrics["prune/params_before"]
    assert network(torch.randn(2, 3, 8, 8)).shape == (2, 3)


def test_the_callback_takes_bn_scale_with_criterion_options_and_records_them():
    from lightning_prune.callbacks import Pruning

    callback = Pruning(criterion="bn_scale", criterion_options={"reduction": "mean"}, layers={"stem": 0.5},
                       prune_at="start")
    assert callback.prune_plan.criterion == CriterionChoice("bn_scale", {"reduction": "mean"})
    assert callback.plan["criterion_options"] == {"reduction": "mean"}
    assert "criterion_options" not in Pruning(layers={"stem": 0.5}, prune_at="start").plan  # old records match
    with pytest.raises(ValueError, match=r"`criterion_options` must be among \['reduction'\] for criterion "
                                         r"'bn_scale', got \['seed'\]"):
        Pruning(criterion="bn_scale", criterion_options={"seed": 1}, layers={"stem": 0.5}, prune_at="start")
