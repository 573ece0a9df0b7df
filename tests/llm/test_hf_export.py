"""pruned_hf/: a physically pruned decoder saved with a matching config reloads with identical logits."""

import torch
from llm_fakes import tiny_llama, tiny_qwen2, token_batch
from torch import nn
from transformers import AutoModelForCausalLM

from lightning_prune.pruning.build import build_structure
from lightning_prune.pruning.hf_export import save_pruned_pretrained
from lightning_prune.pruning.metrics import count_params_and_macs

EXAMPLE = torch.zeros(1, 8, dtype=torch.long)


def test_uniformly_pruned_qwen2_reloads_with_identical_logits_and_parameter_count(tmp_path):
    model = tiny_qwen2()
    structure = build_structure(model, EXAMPLE)
    counts = structure.pruned_counts(structure.select({"model.layers.*.mlp": 0.25, "model.layers.*.self_attn": 0.34}))
    scores = {name: torch.rand(structure.layers[name].units, generator=torch.Generator().manual_seed(1))
              for name in counts}
    structure.prune(structure.choose_units(scores, counts))
    assert save_pruned_pretrained(model, tmp_path / "pruned_hf") is None
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned_hf").eval()
    assert (reloaded.config.num_attention_heads, reloaded.config.num_key_value_heads) == (4, 2)
    assert reloaded.config.intermediate_size == 30
    ids, _ = token_batch()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)
    assert count_params_and_macs(reloaded, EXAMPLE)[0] == count_params_and_macs(model, EXAMPLE)[0]


def test_whole_kv_groups_removed_reload(tmp_path):
    model = tiny_llama(heads=4, kv_heads=2)
    build_structure(model, EXAMPLE).prune({f"model.layers.{i}.self_attn.kv_groups": [i] for i in range(2)})
    assert save_pruned_pretrained(model, tmp_path / "out") is None
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert (reloaded.config.num_attention_heads, reloaded.config.num_key_value_heads) == (2, 1)
    ids, _ = token_batch()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)


def test_sizes_differing_per_layer_are_not_exported_and_say_why(tmp_path):
    model = tiny_llama()
    build_structure(model, EXAMPLE).prune({"model.layers.0.mlp": [0, 1, 2]})
    reason = save_pruned_pretrained(model, tmp_path / "out")
    assert reason == ("sizes differ per layer ({'intermediate_size': [45, 48]}), which a transformers config "
                      "cannot express")
    assert not (tmp_path / "out").exists()
    assert "is not a transformers PreTrainedModel" in save_pruned_pretrained(nn.Linear(2, 2), tmp_path / "x")


def test_mask_mode_fit_exports_the_physically_pruned_equivalent(tmp_path):
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_prune.callbacks.pruning import Pruning
    from lightning_prune.modules.causal_lm import CausalLM

    torch.manual_seed(0)
    module = CausalLM(config={"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
                              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                              "head_dim": 8, "max_position_embeddings": 64})
    ids = torch.randint(0, 64, (8, 12), generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(ids, ids), batch_size=4)
    pruning = Pruning(criterion="taylor", layers={"model.layers.*.self_attn": 0.5, "model.layers.*.mlp": 0.25},
                      mode="mask", prune_at_epoch=1, calibration_batches=2, measure=False)
    trainer = Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[pruning],
                      default_root_dir=tmp_path)
    trainer.fit(module, loader, loader)
    assert sum(p.numel() for p in module.model.parameters()) == pruning.pruned_metrics["prune/params_before"]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned_hf").eval()
    assert sum(p.numel() for p in reloaded.parameters()) == pruning.pruned_metrics["prune/params_after"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, module.model.eval()(ids).logits, atol=1e-5, rtol=1e-5)
