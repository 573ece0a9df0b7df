"""`lightning-prune study` over LM units: a tiny CausalLM study through to results.csv and summary.json."""

import csv
import json

import pytest
import torch
from llm_fakes import save_tiny_tokenizer, write_text_files

from lightning_prune.data import TextDataModule
from lightning_prune.modules import CausalLM
from lightning_prune.pruning.lm_loss import causal_lm_loss
from lightning_prune.pruning.structure import build_structure
from lightning_prune.study.run import load_network_state
from lightning_prune.study.runner import run_study
from lightning_prune.study.spec import MaskConfig, RecipeConfig, StudyConfig

_ADAMW = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3.0e-3}}
_LLAMA = {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 16, "num_hidden_layers": 1,
          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 32}


def test_lm_study_samples_kv_group_and_mlp_masks_and_records_the_pruned_train_loss(tmp_path):
    train, val = write_text_files(tmp_path / "text")
    tokenizer = save_tiny_tokenizer(tmp_path / "tok")
    config = StudyConfig(
        name="lm", study_dir=tmp_path / "study",
        module={"class_path": "lightning_prune.modules.CausalLM", "init_args": {"config": _LLAMA, "example_length": 8}},
        data={"class_path": "lightning_prune.data.TextDataModule",
              "init_args": {"train_files": [str(train)], "val_files": [str(val)], "tokenizer": str(tokenizer),
                            "block_size": 8, "batch_size": 4, "eval_batch_size": 8}},
        pretrain=RecipeConfig(epochs=1, optimizer=_ADAMW, lr_scheduler=None),
        masks=MaskConfig(layers={"model.layers.0.mlp": 0.5, "model.layers.0.self_attn.kv_groups": 0.5}, sample=2,
                         criteria=["l1", "oracle"], calibration_batches=2),
        retrain=RecipeConfig(epochs=1, optimizer=_ADAMW, lr_scheduler=None),
        repeats=1, accelerator="cpu", wandb=False,
    )
    summary = run_study(config)
    rows = list(csv.DictReader((tmp_path / "study" / "results.csv").open()))
    assert 3 <= len(rows) <= 4 and json.loads((tmp_path / "study" / "summary.json").read_text()) == summary
    masks = json.loads((tmp_path / "study" / "masks.json").read_text())["masks"]
    trial = json.loads(next((tmp_path / "study" / "trials").glob("m00000-r0.json")).read_text())

    # pre: the pruned train loss, by hand: prune the pretrained Llama with mask 0, token-mean loss over train blocks
    network = CausalLM(config=_LLAMA).model
    network.load_state_dict(load_network_state(tmp_path / "study" / "pretrained.ckpt"))
    build_structure(network.eval(), torch.zeros(1, 8, dtype=torch.long)).prune(masks[0]["layer_masks"])
    data = TextDataModule([str(train)], str(tokenizer), val_files=[str(val)], block_size=8)
    data.setup()
    blocks = torch.cat([b[0] for b in data.train_eval_dataloader()])
    with torch.no_grad():
        expected = causal_lm_loss(network(blocks), blocks)
    assert trial["pruned_train_loss"] == pytest.approx(float(expected), rel=1e-4)
    assert len(masks[0]["layer_masks"]["model.layers.0.mlp"]) == 8



@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"module": {"class_path": "torch.nn.Linear"}},
         r"`--module.class_path` must name a subclass of LightningModule"),
        ({"batching": "on"}, r"`--batching on` must not be used with `--module`"),
        ({"module": {"class_path": "lightning_prune.modules.CausalLM", "extra": 1}}, r"extra keys \['extra'\]"),
    ],
)
def test_lm_study_bad_module_spec_is_one_clear_message(overrides, message):
    from lightning_prune.study.validation import validate

    fields = {"module": {"class_path": "lightning_prune.modules.CausalLM", "init_args": {"config": _LLAMA}},
              "data": {"class_path": "lightning_prune.data.TextDataModule", "init_args": {}},
              "masks": MaskConfig(layers={"model.layers.0.mlp": 0.5}), **overrides}
    with pytest.raises(ValueError, match=message):
        validate(StudyConfig(**fields))
