"""`CorrelationCallback` measures a causal LM as the module says (`evaluate_network`), not as a classifier."""

import copy

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune.callbacks.correlation import CorrelationCallback
from lightning_prune.modules.causal_lm import CausalLM

TINY = {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 64}


def test_correlation_pre_metrics_of_a_causal_lm_are_next_token_loss_and_accuracy(tmp_path):
    ids = torch.randint(0, 64, (6, 10), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, 5:] = -100  # padding: the token mean differs from the batch mean
    loader = DataLoader(TensorDataset(ids, labels), batch_size=3)
    torch.manual_seed(0)
    module = CausalLM(config=TINY)
    before = copy.deepcopy(module).eval()
    with torch.no_grad():  # by hand: next-token cross-entropy and accuracy over the scored tokens
        logits = before(ids)[:, :-1]
    targets, scored = labels[:, 1:], labels[:, 1:] != -100
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), targets.reshape(-1), ignore_index=-100,
                                             reduction="sum") / scored.sum()
    accuracy = ((logits.argmax(-1) == targets) & scored).sum() / scored.sum()

    callback = CorrelationCallback()
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, callbacks=[callback],
                      default_root_dir=tmp_path)
    trainer.fit(module, loader, loader)
    for split in ("train", "val"):
        assert callback.pre_metrics[f"pre/{split}_loss"] == pytest.approx(float(loss), rel=1e-5)
        assert callback.pre_metrics[f"pre/{split}_acc"] == pytest.approx(float(accuracy), rel=1e-5)
