import pytest
import torch

from lightning_prune.modules.classifier import ImageClassifier


def _sgd(lr):
    return lambda params: torch.optim.SGD(params, lr=lr)


def _step_lr(optimizer):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)


def test_classifier_optimizer_holds_current_parameters_after_they_are_replaced():
    module = ImageClassifier("lenet5_mini", optimizer=_sgd(0.1))
    first = module.configure_optimizers()["optimizer"]
    # Pruning replaces parameter objects; a rebuilt optimizer must hold the new ones, not the old.
    module.model.conv1.weight = torch.nn.Parameter(module.model.conv1.weight[:5].clone())
    second = module.configure_optimizers()["optimizer"]
    held = {id(p) for group in second.param_groups for p in group["params"]}
    assert held == {id(p) for p in module.parameters()}
    assert id(module.model.conv1.weight) not in {id(p) for group in first.param_groups for p in group["params"]}
    assert first is not second


def test_classifier_start_retrain_switches_to_retrain_recipe():
    module = ImageClassifier(
        "lenet5_mini", optimizer=_sgd(0.1), lr_scheduler=_step_lr, retrain_optimizer=_sgd(0.003)
    )
    pretrain = module.configure_optimizers()
    assert pretrain["optimizer"].param_groups[0]["lr"] == pytest.approx(0.1)
    assert pretrain["lr_scheduler"]["interval"] == "epoch"
    module.start_retrain()
    retrain = module.configure_optimizers()
    assert module.phase == "retrain"
    assert retrain["optimizer"].param_groups[0]["lr"] == pytest.approx(0.003)
    assert "lr_scheduler" not in retrain  # a retrain optimizer without its own schedule runs at a constant rate


def test_classifier_without_retrain_recipe_reuses_pretrain_recipe():
    module = ImageClassifier("lenet5_mini", optimizer=_sgd(0.02), lr_scheduler=_step_lr)
    module.start_retrain()
    config = module.configure_optimizers()
    assert config["optimizer"].param_groups[0]["lr"] == pytest.approx(0.02)
    assert config["lr_scheduler"]["scheduler"].last_epoch == 0  # a fresh schedule starts at epoch zero


def test_classifier_forward_shape_and_loss_match_cross_entropy():
    module = ImageClassifier("lenet5_mini", label_smoothing=0.1)
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    logits = module(x)
    assert logits.shape == (4, 10)
    expected = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
    assert torch.allclose(module.loss_fn(logits, y), expected)
    assert module.example_input_array.shape == (1, 1, 32, 32)


def test_classifier_rejects_bad_label_smoothing():
    with pytest.raises(ValueError, match="`label_smoothing` must be in \\[0, 1\\), got 1.5"):
        ImageClassifier("lenet5_mini", label_smoothing=1.5)


def test_classifier_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="lenet5_mini"):
        ImageClassifier("lenet7")


def test_classifier_logs_epoch_mean_train_loss_and_accuracy_over_uneven_batches(tmp_path):
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    x, y = torch.randn(10, 1, 32, 32), torch.randint(0, 10, (10,))
    module = ImageClassifier("lenet5_mini", optimizer=_sgd(0.0))  # lr 0: the network stays as it is
    with torch.no_grad():
        logits = module(x)
    expected_loss = torch.nn.functional.cross_entropy(logits, y)  # over all 10 images: batches of 4, 4, 2
    expected_acc = (logits.argmax(-1) == y).float().mean()
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=4))
    assert trainer.callback_metrics["train/loss"].item() == pytest.approx(expected_loss.item(), rel=1e-5)
    assert trainer.callback_metrics["train/acc"].item() == pytest.approx(expected_acc.item())
