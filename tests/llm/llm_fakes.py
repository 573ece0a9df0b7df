"""Tiny random decoder LMs, a tiny tokenizer and tiny text files, built offline for the LLM tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

VOCAB = 64
SENTENCES = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "the bird sang a song",
    "we read the book in the morning",
    "she wrote a letter to the dog",
    "the sun rose over the park",
]


def tiny_llama(heads: int = 4, kv_heads: int = 2, seed: int = 0, **overrides) -> LlamaForCausalLM:
    """2 layers, hidden 32, head_dim 8, MLP 48, vocabulary 64; eval mode, eager-free defaults (SDPA)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=heads,
        num_key_value_heads=kv_heads, head_dim=8, max_position_embeddings=64, **overrides,
    )
    return LlamaForCausalLM(config).eval()


def tiny_qwen2(seed: int = 0) -> Qwen2ForCausalLM:
    """Qwen2 with q/k/v biases (what Torch-Pruning's GQA issues were about): 6 heads in 2 KV groups."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=40, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=64,
    )
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # random biases, so that forgetting one would show
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(std=0.5)
    return model


def token_batch(batch: int = 2, length: int = 12, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids, labels)` of random tokens, labels = inputs (causal LM)."""
    ids = torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
    return ids, ids.clone()


def save_tiny_tokenizer(folder: Path) -> Path:
    """A word-level tokenizer trained on `SENTENCES`, saved as a transformers tokenizer folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    special = ["<unk>", "<pad>", "<s>", "</s>", "<image>"]
    tokenizer.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=special))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return folder


def write_text_files(folder: Path) -> tuple[Path, Path]:
    """`train.jsonl` ({"text": ...} per line) and `val.txt` (one document per line)."""
    folder.mkdir(parents=True, exist_ok=True)
    train = folder / "train.jsonl"
    train.write_text("".join(json.dumps({"text": s}) + "\n" for s in SENTENCES * 4))
    val = folder / "val.txt"
    val.write_text("\n".join(SENTENCES[:3]) + "\n")
    return train, val


LLAVA_WORDS = ["USER : ASSISTANT what animal is in the picture which colour cat dog bird red green blue"]


def save_tiny_llava_processor(folder: Path) -> tuple[Path, int, int]:
    """A LlavaProcessor (word-level tokenizer with `<image>`, 28x28 CLIP image processor, patch 14 -> 4 image
    tokens), saved to `folder`. Returns the folder, the `<image>` token id and the tokenizer size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<unk>", "<pad>", "<s>", "</s>", "<image>"]
    tokenizer.train_from_iterator(LLAVA_WORDS + SENTENCES, trainers.WordLevelTrainer(special_tokens=specials))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", extra_special_tokens={"image_token": "<image>"})
    images = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(image_processor=images, tokenizer=fast, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    processor.save_pretrained(folder)
    return folder, fast.convert_tokens_to_ids("<image>"), len(fast)


def tiny_llava_config(image_token_id: int) -> dict:
    """A LlavaConfig dict: CLIP vision tower (28x28, patch 14, hidden 16) and a GQA Llama LM (hidden 32)."""
    return {
        "text_config": {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48,
                        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
                        "max_position_embeddings": 128},
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": 16, "intermediate_size": 32,
                          "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
        "image_token_id": image_token_id, "vision_feature_layer": -1, "vision_feature_select_strategy": "default",
    }


def write_llava_files(folder: Path) -> tuple[Path, Path, Path]:
    """Coloured-square images and LLaVA-format train/val JSON (val with multiple-choice `options`)."""
    from PIL import Image

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    for name, rgb in colours.items():
        Image.new("RGB", (32, 24), rgb).save(images / f"{name}.png")

    def record(i: int, colour: str, options: bool) -> dict:
        item = {"id": str(i), "image": f"{colour}.png", "conversations": [
            {"from": "human", "value": "<image>\nwhich colour is in the picture"},
            {"from": "gpt", "value": colour}]}
        if options:
            item["options"] = list(colours)
        return item

    train = folder / "train.json"
    train.write_text(json.dumps([record(i, c, False) for i, c in enumerate(list(colours) * 3)]))
    val = folder / "val.json"
    val.write_text(json.dumps([record(i, c, True) for i, c in enumerate(colours)]))
    return train, val, images
