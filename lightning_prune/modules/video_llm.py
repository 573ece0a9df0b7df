"""`VideoLLM`: LLaVA-OneVision (transformers) answering questions about videos, as a LightningModule.

`predict_step` generates free-form answers; `test_step` scores multiple-choice video QA: the option whose letter
(A, B, ...) gets the highest first-token logit is the prediction, and `test/acc` is logged. The model comes from
`model_name_or_path` (a Hub id or a local folder, through `from_pretrained`) or, for tests and the offline quick
example, from `tiny_config`: a randomly initialised LLaVA-OneVision with an in-process byte-level tokenizer, so nothing
is downloaded. Batches come from `lightning_prune.data.VideoQADataModule` (`videos`, `question`, `options`, ...).
"""

from __future__ import annotations

import string
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from typing_extensions import override

DEFAULT_PROMPT = "{question}\n{options}\nAnswer with the option's letter from the given choices directly."
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Defaults of the random model: 4 LLM layers of width 64, a 1-layer vision tower on 28x28 frames (7x7 patches,
# pooled to 16 tokens per frame). `tiny_config` dicts are merged over these (sub-dicts merged key by key).
TINY_DEFAULTS: dict[str, Any] = {
    "text_config": {
        "model_type": "qwen2",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
    },
    "vision_config": {
        "model_type": "siglip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 28,
        "patch_size": 4,
        "vision_use_head": False,
    },
}
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for part in message['content'] %}{% if part['type'] == 'video' %}<video>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def random_llava_onevision(config: dict[str, Any] | None = None, seed: int = 0) -> tuple[torch.nn.Module, Any]:
    """A randomly initialised LLaVA-OneVision and a matching processor, built offline.

    Args:
        config: overrides of `TINY_DEFAULTS` (`text_config` / `vision_config` dicts and top-level config keys).
        seed: seed of the random weights.

    Returns:
        `(LlavaOnevisionForConditionalGeneration in eval mode, LlavaOnevisionProcessor)`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        PreTrainedTokenizerFast,
    )

    overrides = dict(config or {})
    merged = {key: {**value, **overrides.pop(key, {})} for key, value in TINY_DEFAULTS.items()}
    merged.update(overrides)
    # Byte-level BPE without merges: every string is encodable, the vocabulary is 256 bytes + the chat's specials.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={symbol: i for i, symbol in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
    )
    vision = merged["vision_config"]
    side = vision["image_size"]
    merged["text_config"].setdefault("vocab_size", len(tokenizer))
    model_config = LlavaOnevisionConfig(
        **merged,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=[[side, side]],
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlavaOnevisionForConditionalGeneration(model_config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    size = {"height": side, "width": side}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=[[side, side]]),
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        num_image_tokens=(side // vision["patch_size"]) ** 2,
        vision_feature_select_strategy=model_config.vision_feature_select_strategy,
        chat_template=_CHAT_TEMPLATE,
    )
    return model, processor


class VideoLLM(LightningModule):
    """LLaVA-OneVision video question answering.

    Args:
        model_name_or_path: Hub id (e.g. `llava-hf/llava-onevision-qwen2-0.5b-ov-hf`) or local folder.
        tiny_config: instead of a checkpoint, a random model: `True` for `TINY_DEFAULTS`, or a dict of overrides.
        dtype: weights' dtype for `from_pretrained` ("auto" keeps the checkpoint's).
        attn_implementation: the LLM's attention ("sdpa" or "eager", the two DyCoke can wrap).
        max_new_tokens: answer length limit in `predict_step`.
        prompt_template: user prompt with `{question}` and `{options}` (one "A. ..." line per option).
        seed: seed of the random model's weights.
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        tiny_config: bool | dict[str, Any] = False,
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
        attn_implementation: Literal["sdpa", "eager"] = "sdpa",
        max_new_tokens: int = 32,
        prompt_template: str = DEFAULT_PROMPT,
        seed: int = 0,
    ) -> None:
        super().__init__()
        problems = []
        if (model_name_or_path is None) == (tiny_config is False):
            problems.append(
                "Give exactly one of `model_name_or_path` and `tiny_config`, "
                f"got model_name_or_path={model_name_or_path!r}, tiny_config={tiny_config!r}."
            )
        if dtype not in ("auto", *_DTYPES):
            problems.append(f"`dtype` must be one of {['auto', *_DTYPES]}, got {dtype!r}.")
        if attn_implementation not in ("sdpa", "eager"):
            problems.append(f"`attn_implementation` must be 'sdpa' or 'eager', got {attn_implementation!r}.")
        if max_new_tokens < 1:
            problems.append(f"`max_new_tokens` must be >= 1, got {max_new_tokens}.")
        if "{question}" not in prompt_template:
            problems.append(f"`prompt_template` must contain '{{question}}', got {prompt_template!r}.")
        if problems:
            raise ValueError(" ".join(problems))
        self.save_hyperparameters()
        if model_name_or_path is not None:
            self.model, self.processor = _load_pretrained(model_name_or_path, dtype, attn_implementation)
        else:
            overrides = {} if tiny_config is True else dict(tiny_config)
            self.model, self.processor = random_llava_onevision(overrides, seed)
            self.model.set_attn_implementation({"text_config": attn_implementation})
            if dtype in _DTYPES:
                self.model.to(_DTYPES[dtype])
        self.processor.tokenizer.padding_side = "left"  # generation continues every prompt at the right end
        self.max_new_tokens = max_new_tokens
        self.prompt_template = prompt_template

    def prompts(self, batch: dict[str, Any]) -> list[str]:
        """The chat-formatted prompt of every sample (one video placeholder, then the question and options)."""
        texts = []
        for question, options in zip(batch["question"], batch["options"], strict=True):
            lines = "\n".join(f"{string.ascii_uppercase[i]}. {option}" for i, option in enumerate(options))
            text = self.prompt_template.format(question=question, options=lines)
            conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
            texts.append(self.processor.apply_chat_template(conversation, add_generation_prompt=True))
        return texts

    def model_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Processor outputs: `input_ids`, `attention_mask` `[B, S]`, `pixel_values_videos` `[B, F, 3, H, W]`."""
        videos = [video.cpu().numpy() for video in batch["videos"]]
        inputs = self.processor(text=self.prompts(batch), videos=videos, return_tensors="pt", padding=True)
        inputs = inputs.to(self.device)
        inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(self.model.dtype)
        return dict(inputs)

    @override
    def forward(self, **inputs: torch.Tensor) -> Any:
        return self.model(**inputs)

    @override
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        inputs = self.model_inputs(batch)
        generated = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        answers = self.processor.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return [{"id": sample_id, "answer": text.strip()} for sample_id, text in zip(batch["id"], answers, strict=True)]

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        inputs = self.model_inputs(batch)
        output = self.model.generate(
            **inputs, max_new_tokens=1, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        first_logits = output.logits[0]  # [B, vocab]
        predictions = torch.tensor(
            [int(first_logits[row, self.option_token_ids(len(options))].argmax())
             for row, options in enumerate(batch["options"])],
            device=self.device,
        )
        answers = torch.as_tensor(batch["answer_index"], device=self.device)
        accuracy = (predictions == answers).float().mean()
        self.log("test/acc", accuracy, batch_size=len(predictions), on_step=False, on_epoch=True)
        return accuracy

    def option_token_ids(self, count: int) -> list[int]:
        """Token id of each option letter "A", "B", ... as the answer's first token."""
        tokenizer = self.processor.tokenizer
        return [tokenizer.encode(letter, add_special_tokens=False)[-1] for letter in string.ascii_uppercase[:count]]


def _load_pretrained(name: str, dtype: str, attn_implementation: str) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(
        name, dtype=_DTYPES.get(dtype, "auto"), attn_implementation=attn_implementation
    ).eval()
    return model, AutoProcessor.from_pretrained(name)
