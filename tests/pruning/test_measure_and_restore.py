"""Boundary measurements against hand computation, and the checkpoint record replayed on a fresh module."""

import pytest
import torch
import torch.nn.functional as F
from pruning_toys import ToyCNN, random_batches
from torch import nn

from lightning_prune.pruning import PruningStructure, count_params_and_macs, evaluate_classifier, restore_pruning
from lightning_prune.pruning.checkpoint import mismatch_message, resolve_target, shape_mismatch


def test_count_params_and_macs_of_a_conv_and_a_linear():
    network = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.Flatten(), nn.Linear(2 * 6 * 6, 3, bias=False))
    params, macs = count_params_and_macs(network, torch.zeros(4, 1, 8, 8))
    assert params == 2 * 9 + 72 * 3
    assert macs == (2 * 6 * 6) * 9 + 72 * 3  # one MAC per kernel weight per output position, per linear weight


def test_evaluate_classifier_is_the_example_mean_cross_entropy_and_accuracy():
    network = ToyCNN().train()
    batches = random_batches((1, 8, 8), count=2, batch=5) + random_batches((1, 8, 8), count=1, batch=2, seed=3)
    loss, accuracy = evaluate_classifier(network, batches)
    assert network.training and network.bn1.training
    network.eval()
    with torch.no_grad():
        logits = torch.cat([network(x) for x, _ in batches])
    targets = torch.cat([y for _, y in batches])
    assert loss == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-6)
    assert accuracy == pytest.approx((logits.argmax(1) == targets).float().mean().item())
    assert all(v != v for v in evaluate_classifier(network, []))  # nan, nan


class Holder(nn.Module):
    """Stands for a LightningModule holding the network as `model`."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = ToyCNN()


def _physical_checkpoint() -> tuple[Holder, dict]:
    holder = Holder()
    record = PruningStructure(holder.model, torch.zeros(1, 1, 8, 8)).prune({"conv1": [0, 5], "fc1": [2]})
    pruning = {"version": 1, "target": "model", "mode": "physical", "phase": "retrain",
               "example_input": {"shape": [1, 1, 8, 8], "dtype": "float32"}, **record}
    return holder, {"state_dict": holder.state_dict(), "lightning_prune": {"pruning": pruning}}


def test_restore_pruning_replays_the_record_before_the_state_dict_loads():
    holder, checkpoint = _physical_checkpoint()
    fresh = Holder()
    restore_pruning(fresh, checkpoint)
    restore_pruning(fresh, checkpoint)  # a second call finds the shapes already right and does nothing
    fresh.load_state_dict(checkpoint["state_dict"])
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(fresh.eval().model(x), holder.eval().model(x))
    assert fresh.model.conv1.out_channels == 4 and fresh.model.fc1.out_features == 4


def test_restore_pruning_leaves_unrecorded_and_mask_checkpoints_alone():
    _, checkpoint = _physical_checkpoint()
    for untouched in ({"state_dict": {}}, {"lightning_prune": {"pruning": {**checkpoint["lightning_prune"]["pruning"],
                                                                             "mode": "mask"}}}):
        fresh = Holder()
        restore_pruning(fresh, untouched)
        assert fresh.model.conv1.out_channels == 6


def test_resolve_target_names_an_attribute_or_the_module_itself():
    holder = Holder()
    assert resolve_target(holder, "model") is holder.model and resolve_target(holder, "") is holder
    assert resolve_target(holder, "model.conv1") is holder.model.conv1
    with pytest.raises(ValueError, match=r"`target` must name an nn.Module attribute of Holder .*got 'net'"):
        resolve_target(holder, "net")


def test_restore_pruning_on_a_compiled_network_prunes_the_module_it_wraps():
    holder, checkpoint = _physical_checkpoint()
    fresh = Holder()
    fresh.model = torch.compile(fresh.model, backend="eager")
    assert resolve_target(fresh, "model") is fresh.model._orig_mod
    compiled_state = {key.replace("model.", "model._orig_mod.", 1): v for key, v in checkpoint["state_dict"].items()}
    checkpoint = {**checkpoint, "state_dict": compiled_state}  # a compiled module's keys
    restore_pruning(fresh, checkpoint)
    restore_pruning(fresh, checkpoint)  # the shapes already fit under the `_orig_mod.` prefix: nothing happens
    fresh.load_state_dict(compiled_state)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(fresh.eval().model(x), holder.eval().model(x))


def test_shape_mismatch_and_its_message_say_which_side_is_pruned():
    holder, checkpoint = _physical_checkpoint()
    fresh = Holder()
    assert shape_mismatch(holder, holder.state_dict()) is None
    name, in_memory, saved = shape_mismatch(fresh, checkpoint["state_dict"])
    assert name == "model.conv1.weight" and in_memory[0] == 6 and saved[0] == 4
    before = mismatch_message("'a.ckpt'", None, (name, saved, in_memory))
    assert before.startswith("checkpoint 'a.ckpt' was saved before pruning (it carries no pruning record) and the "
                             "model in memory is pruned (model.conv1.weight: [6, 1, 3, 3] in the file, [4, 1, 3, 3]")
    after = mismatch_message("'b.ckpt'", {"indices": {"conv1": [0, 5]}}, (name, in_memory, saved))
    assert "was saved after pruning (its record prunes 2 of conv1) and the model in memory has other shapes" in after
    weights_only = mismatch_message("'c.ckpt'", None, (name, in_memory, saved))
    assert "holds a pruned network but no pruning record (saved with `save_weights_only`?) and the model in memory " \
           "is unpruned" in weights_only
