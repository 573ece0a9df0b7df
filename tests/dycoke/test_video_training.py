"""`VideoLLM` training pieces: answer-token labels and loss, the word tokenizer, trained files written and read back."""

import pytest
import torch
import torch.nn.functional as F
from _support.synthetic_batches import synthetic_batch

from lightning_prune.modules.video_llm import VideoLLM
from lightning_prune.modules.video_training import BUILD_SCRIPT, read_trained, write_trained

TINY_WORDS = {"tokenizer": "words", "text_config": {"num_hidden_layers": 2}}


@pytest.fixture(scope="module")
def module():
    return VideoLLM(tiny_config=TINY_WORDS, family="qwen2_5_vl", answer_prefix="Answer: ")


def _batch(count=2, frames=8):
    return synthetic_batch(9, range(count), frames=frames)


def test_word_tokenizer_keeps_special_ids_and_spells_a_prompt_in_words(module):
    tokenizer = module.processor.tokenizer
    assert max(tokenizer.get_vocab().values()) < module.model.config.text_config.vocab_size
    assert tokenizer.convert_tokens_to_ids("<|video_pad|>") == module.model.config.video_token_id
    ids = tokenizer.encode("What colour is the brief flash?", add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(ids) == ["What", "colour", "is", "the", "brief", "flash", "?"]
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("zebra", add_special_tokens=False)) == ["<unk>"]


def test_training_labels_cover_exactly_the_answer_tokens(module):
    batch = _batch()
    inputs, labels = module.training_inputs(batch)
    tokenizer = module.processor.tokenizer
    for row, index in enumerate(batch["answer_index"]):
        kept = labels[row][labels[row] != -100]
        assert tokenizer.convert_ids_to_tokens(kept) == ["Answer", ":", "ABCD"[index], "<|im_end|>"]
        assert torch.equal(inputs["input_ids"][row, -4:], kept)


def test_training_step_is_the_mean_cross_entropy_of_the_answer_tokens(module):
    batch = _batch()
    inputs, labels = module.training_inputs(batch)
    with torch.no_grad():
        loss = module.training_step(batch, 0)
        logits = module.model(**inputs, use_cache=False).logits
    # by hand: the logits at position t predict token t + 1; 4 answer tokens per row
    expected = torch.stack([F.cross_entropy(logits[row, -5:-1], inputs["input_ids"][row, -4:])
                            for row in range(len(labels))]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_answer_indices_read_the_letter_after_the_greedy_prefix(module):
    batch = _batch(3)
    predicted = module.answer_indices(batch)
    inputs = module.model_inputs(batch)
    letters = module.option_token_ids(4)
    with torch.inference_mode():
        out = module.model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False,
                                    output_logits=True, return_dict_in_generate=True)
    assert predicted.tolist() == out.logits[2][:, letters].argmax(-1).tolist()
    assert module.answer_prefix_length() == 2


def test_a_written_trained_file_rebuilds_the_same_model(module, tmp_path):
    path = write_trained(tmp_path / "qwen2_5_vl.safetensors", module.model, "qwen2_5_vl", TINY_WORDS, "Answer: ",
                         {"note": 1})
    weights, info = read_trained(str(path))
    assert info == {"family": "qwen2_5_vl", "tiny_config": TINY_WORDS, "answer_prefix": "Answer: ", "note": 1}
    assert all(value.dtype == torch.float16 for value in weights.values())
    loaded = VideoLLM(checkpoint=str(path))
    assert loaded.family.name == "qwen2_5_vl" and loaded.answer_prefix == "Answer: "
    for name, value in module.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value.half().float())


def test_a_missing_or_truncated_trained_file_names_itself_and_the_build_script(module, tmp_path):
    missing = tmp_path / "gone.safetensors"
    with pytest.raises(FileNotFoundError, match=rf"Trained video model not found: {missing}; rebuild it with "
                                                rf"`python {BUILD_SCRIPT} --family gone`"):
        VideoLLM(checkpoint=str(missing))
    path = write_trained(tmp_path / "qwen2_5_vl.safetensors", module.model, "qwen2_5_vl", TINY_WORDS, "")
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"Trained video model {truncated} cannot be read, it is truncated or "
                                         rf"damaged .*python {BUILD_SCRIPT}"):
        VideoLLM(checkpoint=str(truncated))


def test_checkpoint_refuses_a_second_model_source_or_another_family(module, tmp_path):
    path = write_trained(tmp_path / "m.safetensors", module.model, "qwen2_5_vl", TINY_WORDS, "")
    with pytest.raises(ValueError, match=r"`checkpoint` brings its own model: leave `model_name_or_path` and "
                                         r"`tiny_config` unset"):
        VideoLLM(checkpoint=str(path), tiny_config=True)
    with pytest.raises(ValueError, match=r"`family` must match the checkpoint's \('qwen2_5_vl'\) or be unset, "
                                         r"got 'llava_onevision'"):
        VideoLLM(checkpoint=str(path), family="llava_onevision")
    with pytest.raises(ValueError, match=r"`tiny_config.tokenizer` must be 'bytes' or 'words', got 'bpe'"):
        VideoLLM(tiny_config={"tokenizer": "bpe"})


def test_a_step_interval_schedule_moves_the_learning_rate_every_optimizer_step(tmp_path):
    from functools import partial

    import lightning as L
    from torch.utils.data import DataLoader

    batches = [_batch(count=1) for _ in range(3)]
    module = VideoLLM(tiny_config=TINY_WORDS, family="qwen2_5_vl", answer_prefix="Answer: ",
                      optimizer=partial(torch.optim.SGD, lr=0.1),
                      lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
                      lr_scheduler_interval="step")
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    assert not module.model.training  # the family builder hands the model over in eval mode
    modes = []

    class RecordModes(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.append({name for name, part in pl_module.named_modules() if not part.training})

    trainer.callbacks.append(RecordModes())
    trainer.fit(module, DataLoader(batches, batch_size=None))
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 3)  # 3 steps, 3 halvings
    assert modes == [set()] * 3  # every module trains in train mode (dropout on where a config has it)


def test_lr_scheduler_interval_must_be_epoch_or_step():
    with pytest.raises(ValueError, match=r"`lr_scheduler_interval` must be 'epoch' or 'step', got 'batch'"):
        VideoLLM(tiny_config=TINY_WORDS, family="qwen2_5_vl", lr_scheduler_interval="batch")
