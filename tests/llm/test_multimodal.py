"""TinyLLaVA-style MLLM: LLaVA instruction data, multiple-choice accuracy, pruning its LM with the same callback."""

import json

import pytest
import torch
from lightning.pytorch import Trainer
from llm_fakes import save_tiny_llava_processor, tiny_llava_config, write_llava_files
from transformers import AutoProcessor, LlavaForConditionalGeneration

from lightning_prune.callbacks.pruning import Pruning
from lightning_prune.data.llava_instruct import LlavaInstructDataModule
from lightning_prune.modules.multimodal_lm import MultimodalLM
from lightning_prune.pruning.lm_loss import multiple_choice_accuracy


@pytest.fixture(scope="module")
def llava_files(tmp_path_factory):
    base = tmp_path_factory.mktemp("llava")
    processor, image_id, _ = save_tiny_llava_processor(base / "processor")
    train, val, images = write_llava_files(base)
    return {"train": train, "val": val, "images": images, "processor": processor, "image_id": image_id}


def _data(files, **kwargs):
    return LlavaInstructDataModule(str(files["train"]), str(files["val"]), str(files["images"]),
                                   str(files["processor"]), **kwargs)


def test_llava_items_label_only_the_answer_and_give_one_item_per_option(llava_files):
    data = _data(llava_files)
    data.setup()
    tokenizer = AutoProcessor.from_pretrained(llava_files["processor"]).tokenizer
    val = data._datasets["val"]
    assert len(val) == 9  # 3 questions x 3 options
    item = val[4]  # question 1 (green), option 1 (green)
    assert (item["question"], item["option"], item["gold"]) == (1, 1, 1)
    answer = item["input_ids"][item["labels"] != -100].tolist()
    assert answer == tokenizer.convert_tokens_to_ids(["green", "</s>"])
    assert (item["input_ids"] == llava_files["image_id"]).sum() == 4  # (28 / 14)^2 patches
    inputs, labels, meta = next(iter(data.val_dataloader()))
    assert inputs["pixel_values"].shape[1:] == (3, 28, 28) and labels.shape == inputs["input_ids"].shape
    assert meta["gold"].tolist()[:3] == [1, 0, 0]


@pytest.mark.parametrize(
    ("records", "error", "message"),
    [
        ([{"image": "nope.png", "conversations": []}], FileNotFoundError, r"image 'nope.png' must exist"),
        ([{"conversations": []}], ValueError, r"must have `image` and `conversations`, got keys \['conversations'\]"),
        ([{"image": "red.png", "conversations": [{"from": "gpt", "value": "x"}]}], ValueError,
         r"must alternate 'human' and 'gpt' turns, got \['gpt'\]"),
        ([{"image": "red.png", "options": ["blue"], "conversations": [{"from": "human", "value": "q"},
                                                                      {"from": "gpt", "value": "red"}]}],
         ValueError, r"`options` must hold the answer 'red', got \['blue'\]"),
    ],
)
def test_llava_bad_records_are_one_clear_message(llava_files, tmp_path, records, error, message):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(records))
    data = LlavaInstructDataModule(str(bad), str(llava_files["val"]), str(llava_files["images"]),
                                   str(llava_files["processor"]))
    with pytest.raises(error, match=message):
        data.setup()


def test_multiple_choice_accuracy_by_hand():
    losses = torch.tensor([2.0, 1.0, 3.0, 0.5, 0.5, 9.0, 7.0])
    question = torch.tensor([0, 0, 0, 1, 1, 2, 3])
    option = torch.tensor([0, 1, 2, 0, 1, -1, 0])
    gold = torch.tensor([0, 1, 0, 0, 1, 1, 1])
    # q0: option 1 lowest (gold) -> right; q1: tie -> option 0 (not gold) -> wrong; q2 not multiple choice; q3 right
    assert multiple_choice_accuracy(losses, question, option, gold) == pytest.approx(2 / 3)


def test_multimodal_lm_without_llava_folder_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="must be given, got neither"):
        MultimodalLM()


def test_pruning_a_tiny_llava_lm_retrains_and_reloads_with_identical_logits(llava_files, tmp_path):
    torch.manual_seed(0)
    module = MultimodalLM(config=tiny_llava_config(llava_files["image_id"]))
    pruning = Pruning(criterion="oracle", layers={"model.language_model.layers.*.mlp": 0.5,
                                                  "model.language_model.layers.*.self_attn": 0.5},
                      prune_at_epoch=1, calibration_batches=2)
    trainer = Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[pruning],
                      default_root_dir=tmp_path)
    data = _data(llava_files, batch_size=3)
    trainer.fit(module, datamodule=data)
    assert set(pruning.pruned_indices) == {f"model.language_model.layers.{i}.{u}" for i in range(2)
                                           for u in ("mlp", "self_attn")}
    assert 0.0 <= pruning.pruned_metrics["pruned/val_acc"] <= 1.0
    assert pruning.pruned_metrics["prune/params_after"] < pruning.pruned_metrics["prune/params_before"]
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "pruned_hf").eval()
    text = reloaded.config.text_config
    assert (text.num_attention_heads, text.num_key_value_heads, text.intermediate_size) == (2, 2, 24)
    inputs, _, _ = next(iter(data.val_dataloader()))
    module.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, module.model(**inputs).logits)
