"""LoRA recovery in Pruning's retrain phase: merged logits equal the adapters', only adapters train, checkpoints and
pruned_hf/ hold merged weights, mask mode keeps removed units exactly zero; bad settings refused before compute."""

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from llm_fakes import tiny_llama, token_batch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import AutoModelForCausalLM

from lightning_prune.callbacks._lora import DEFAULT_TARGETS, LoraAdapters, check_targets, lora_settings
from lightning_prune.callbacks.pruning import Pruning
from lightning_prune.modules.causal_lm import CausalLM
from lightning_prune.pruning.transformer import prune_attention_heads, prune_mlp_channels

TINY = {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 64}
LORA = {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0}


def _randomise_adapters(adapters: LoraAdapters, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in adapters.wrapped().values():
            weight = module.lora_B["default"].weight
            weight.copy_(torch.randn(weight.shape, generator=generator) * 0.2)  # peft starts B at zero


def test_merged_logits_equal_adapter_logits_on_a_per_layer_size_model():
    model = tiny_llama(seed=1)
    prune_mlp_channels(model.model.layers[0].mlp, [1, 5, 9])
    prune_attention_heads(model.model.layers[1].self_attn, [0, 2], [])
    ids, _ = token_batch(2, 10)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    adapters = LoraAdapters(model, lora_settings({"method": "lora", "dropout": 0.05}))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in name for name in trainable)
    expected = sum(8 * (m.in_features + m.out_features) for name, m in tiny_llama().named_modules()
                   if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in DEFAULT_TARGETS)
    shrunk = 8 * (3 + 3 + 3) + 8 * (2 * 8 + 2 * 8)  # 3 channels fewer (gate, up, down) and 2 heads fewer (q, o)
    assert adapters.trainable_parameters() == expected - shrunk  # r (in + out) per adapted linear
    _randomise_adapters(adapters)
    model.eval()
    with torch.no_grad():
        adapter_logits = model(ids).logits
        state = adapters.merged_state_dict(model.state_dict(), prefix="")
        merged = adapters.merge()
        merged_logits = merged(ids).logits
    assert merged is model and not adapters.wrapped()
    torch.testing.assert_close(merged_logits, adapter_logits, rtol=1e-5, atol=1e-5)
    assert set(state) == set(before)  # the network's own names, no adapter keys
    for name, value in model.state_dict().items():
        torch.testing.assert_close(state[name], value)  # merged_state_dict == peft's merge


def _fit(tmp_path, mode, retrain, epochs=3, layers=None):
    ids = torch.randint(0, 64, (8, 12), generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(ids, ids), batch_size=4)
    torch.manual_seed(0)
    module = CausalLM(config=TINY)
    pruning = Pruning(criterion="l1", layers=layers or {"model.layers.*.mlp": 0.5, "model.layers.*.self_attn": 0.5},
                      prune_at_epoch=1, measure=False, mode=mode, retrain=retrain)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    trainer = Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[pruning, checkpoint], default_root_dir=tmp_path)
    return trainer, module, pruning, loader, ids


def test_pruning_with_lora_physical_trains_adapters_only_and_exports_merged(tmp_path):
    trainer, module, pruning, loader, ids = _fit(tmp_path, "physical", LORA)
    snapshots = {}

    from lightning.pytorch import Callback

    class Watch(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:  # Pruning (listed first) has just pruned and injected the adapters
                snapshots["base"] = {n: p.detach().clone() for n, p in pl_module.named_parameters()
                                     if ".base_layer." in n}
                snapshots["lora_B"] = {n: p.detach().clone() for n, p in pl_module.named_parameters()
                                       if ".lora_B." in n}

        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch != trainer.max_epochs - 1:
                return
            snapshots["base_end"] = {n: p.detach().clone() for n, p in pl_module.named_parameters()
                                     if ".base_layer." in n}
            snapshots["lora_B_end"] = {n: p.detach().clone() for n, p in pl_module.named_parameters()
                                       if ".lora_B." in n}

    trainer.callbacks.insert(1, Watch())
    trainer.fit(module, loader, loader)
    assert pruning.pruned_metrics["retrain/trainable_params"] > 0
    for name, value in snapshots["base"].items():
        torch.testing.assert_close(snapshots["base_end"][name], value, rtol=0, atol=0)  # frozen
    assert any(not torch.equal(snapshots["lora_B_end"][n], v) for n, v in snapshots["lora_B"].items())  # trained
    assert not any(".lora_" in name for name, _ in module.named_parameters())  # merged at the end
    module.eval()
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned_hf").eval()
    reloaded = CausalLM.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt").eval()
    with torch.no_grad():
        expected = module(ids)
        torch.testing.assert_close(exported(ids).logits, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(reloaded(ids), expected, rtol=1e-5, atol=1e-5)


def test_pruning_with_lora_mask_mode_keeps_removed_units_exactly_zero_after_merging(tmp_path):
    trainer, module, pruning, loader, ids = _fit(tmp_path, "mask", {**LORA, "r": 2})
    trainer.fit(module, loader, loader)
    assert not any(".lora_" in name for name, _ in module.named_parameters())
    for layer_index, layer in enumerate(module.model.model.layers):
        channels = pruning.pruned_indices[f"model.layers.{layer_index}.mlp"]
        heads = pruning.pruned_indices[f"model.layers.{layer_index}.self_attn"]
        assert channels and heads
        mlp, attention = layer.mlp, layer.self_attn
        assert mlp.gate_proj.weight[channels].abs().sum() == 0 and mlp.up_proj.weight[channels].abs().sum() == 0
        assert mlp.down_proj.weight[:, channels].abs().sum() == 0
        rows = [h * 8 + j for h in heads for j in range(8)]
        assert attention.q_proj.weight[rows].abs().sum() == 0 and attention.o_proj.weight[:, rows].abs().sum() == 0
        kept = [c for c in range(48) if c not in channels]
        assert mlp.down_proj.weight[:, kept].abs().sum() > 0


def test_lora_bad_settings_are_refused_before_compute():
    with pytest.raises(ValueError, match=r"`retrain.method` must be one of \['full', 'lora'\], got 'qlora'"):
        Pruning(layers={"model.layers.*.mlp": 0.5}, prune_at="start", retrain={"method": "qlora"})
    with pytest.raises(ValueError, match="`retrain.r` must be an integer >= 1, got 0"):
        Pruning(layers={"model.layers.*.mlp": 0.5}, prune_at="start", retrain={"method": "lora", "r": 0})
    with pytest.raises(ValueError, match="must be used with one pruning step, got a `schedule`"):
        Pruning(layers={"model.layers.*.mlp": 0.5}, prune_at="start", retrain={"method": "lora"},
                schedule={"steps": 2, "every_n_epochs": 1})
    with pytest.raises(ValueError, match=r"entry 'qkv_proj' must match a linear layer .* linear layers: \['down_proj'"):
        check_targets(tiny_llama(), lora_settings({"method": "lora", "target_modules": ["q_proj", "qkv_proj"]}))
    convolutional = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with pytest.raises(ValueError, match="must be used on a network with nn.Linear layers, got Sequential"):
        check_targets(convolutional, lora_settings({"method": "lora"}))


def test_lora_target_matching_nothing_stops_the_fit_before_training(tmp_path):
    trainer, module, _, loader, _ = _fit(tmp_path, "physical", {**LORA, "target_modules": ["query"]})
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    with pytest.raises(ValueError, match="entry 'query' must match a linear layer"):
        trainer.fit(module, loader, loader)
    assert all(torch.equal(p, before[n]) for n, p in module.named_parameters())  # no step was taken


def test_lora_fit_resumes_mid_recovery_from_its_merged_checkpoint(tmp_path):
    trainer, module, _, loader, ids = _fit(tmp_path, "physical", LORA, epochs=2)
    trainer.fit(module, loader, loader)
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert not any(".lora_" in key or ".base_layer." in key for key in saved["state_dict"])  # merged weights
    resumed_trainer, resumed, pruning, loader, _ = _fit(tmp_path / "resumed", "physical", LORA, epochs=3)
    resumed_trainer.fit(resumed, loader, loader, ckpt_path=tmp_path / "checkpoints" / "last.ckpt")
    assert pruning._lora is not None and pruning._lora.merged  # adapters re-attached on resume, merged at the end
    assert resumed_trainer.current_epoch == 3
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "resumed" / "pruned_hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, resumed.eval()(ids), rtol=1e-5, atol=1e-5)


def test_lora_mask_mode_refuses_to_resume_mid_recovery(tmp_path):
    trainer, module, _, loader, _ = _fit(tmp_path, "mask", LORA, epochs=2)
    trainer.fit(module, loader, loader)
    resumed_trainer, resumed, _, loader, _ = _fit(tmp_path / "resumed", "mask", LORA, epochs=3)
    with pytest.raises(ValueError, match="must start from the pruning step in mask mode, got a resumed retrain"):
        resumed_trainer.fit(resumed, loader, loader, ckpt_path=tmp_path / "checkpoints" / "last.ckpt")
