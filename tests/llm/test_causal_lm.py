"""CausalLM: built from a folder or a random config, perplexity = exp(token-mean loss), clear build errors."""

import pytest
import torch
from lightning.pytorch import Trainer
from llm_fakes import tiny_llama, token_batch
from torch.utils.data import DataLoader, TensorDataset
from transformers import LlamaConfig, LlamaModel

from lightning_prune.modules.causal_lm import CausalLM

TINY = {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 64}


def test_causal_lm_loads_a_model_folder_with_its_logits(tmp_path):
    reference = tiny_llama()
    reference.save_pretrained(tmp_path / "m")
    module = CausalLM(model=str(tmp_path / "m")).eval()
    ids, _ = token_batch()
    with torch.no_grad():
        torch.testing.assert_close(module(ids), reference(ids).logits)


def test_causal_lm_validation_perplexity_is_exp_of_the_token_mean_loss():
    module = CausalLM(config=TINY)
    ids = torch.randint(0, 64, (5, 9), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, 4:] = -100  # padding: fewer tokens in one block, so token- and batch-means differ
    loader = DataLoader(TensorDataset(ids, labels), batch_size=2)
    trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    metrics = trainer.validate(module, loader, verbose=False)[0]
    with torch.no_grad():
        logits = module(ids)
    token_losses = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 64), labels[:, 1:].reshape(-1),
                                                     ignore_index=-100, reduction="none")
    mean = token_losses.sum() / (labels[:, 1:] != -100).sum()
    assert metrics["val/loss"] == pytest.approx(float(mean), rel=1e-5)
    assert metrics["val/ppl"] == pytest.approx(float(mean.exp()), rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, r"`model` \(Hub id or folder\) or `config` .* must be given, got neither"),
        ({"model": "x", "config": TINY}, "must be given, got both"),
        ({"config": {"model_type": "vit"}}, r"`config.model_type` must be a model type with a causal LM head, got 'v"),
        ({"config": TINY, "dtype": "int8"}, r"`dtype` must be one of \['float32', 'bfloat16', 'float16'\]"),
    ],
)
def test_causal_lm_bad_arguments_are_one_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CausalLM(**kwargs)


def test_causal_lm_folder_without_lm_head_is_rejected(tmp_path):
    LlamaModel(LlamaConfig(**{k: v for k, v in TINY.items() if k != "model_type"})).save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=r"`model` must be a causal LM with an LM head .* \['LlamaModel'\]"):
        CausalLM(model=str(tmp_path / "m"))


def test_globally_pruned_llama_reloads_from_its_lightning_checkpoint(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_prune.callbacks.pruning import Pruning

    ids = torch.randint(0, 64, (8, 12), generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(ids, ids), batch_size=4)
    torch.manual_seed(0)
    module = CausalLM(config=TINY)
    with torch.no_grad():  # layer 1's channels weigh 3x more: global L1 ranking takes most units from layer 0
        for linear in module.model.model.layers[1].mlp.children():
            if isinstance(linear, torch.nn.Linear):
                linear.weight.mul_(3.0)
    pruning = Pruning(criterion="l1", layers={"model.layers.*.mlp": 0.5}, global_pruning=True, prune_at_epoch=1,
                      measure=False)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[pruning, checkpoint], default_root_dir=tmp_path)
    with pytest.warns(UserWarning, match=r"no pruned_hf/ written: sizes differ per layer"):
        trainer.fit(module, loader, loader)
    sizes = [layer.mlp.down_proj.in_features for layer in module.model.model.layers]
    assert sum(sizes) == 48 and sizes[0] < sizes[1]  # global ranking: per-layer sizes differ
    reloaded = CausalLM.load_from_checkpoint(tmp_path / "last.ckpt").eval()
    assert [layer.mlp.down_proj.in_features for layer in reloaded.model.model.layers] == sizes
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids), module.eval()(ids))


def test_a_pretrained_folder_trains_in_train_mode(tmp_path):
    from lightning.pytorch import Callback

    tiny_llama().save_pretrained(tmp_path / "m")
    module = CausalLM(model=str(tmp_path / "m"))
    assert not module.model.training  # from_pretrained hands it over in eval mode
    modes = []

    class RecordModes(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.append({name for name, part in pl_module.named_modules() if not part.training})

    ids = torch.randint(0, 64, (4, 9), generator=torch.Generator().manual_seed(0))
    trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                      enable_checkpointing=False, max_epochs=1, callbacks=[RecordModes()], default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(TensorDataset(ids, ids.clone()), batch_size=2))
    assert modes == [set(), set()]  # dropout (where the config has any) is on while training
