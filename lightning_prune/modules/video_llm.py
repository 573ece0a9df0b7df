"""`VideoLLM`: a transformers video LLM answering questions about videos, as a LightningModule.

Families (`lightning_prune.dycoke.families`): LLaVA-OneVision, LLaVA-NeXT-Video, Qwen2.5-VL, Qwen3-VL, InternVL.
`predict_step` generates free-form answers; `test_step` scores multiple-choice video QA: the option whose letter
(A, B, ...) gets the highest first-token logit is the prediction, and `test/acc` is logged. The model comes from
`model_name_or_path` (a Hub id or a local folder: the family's transformers class, found from the checkpoint's
`model_type`, and `AutoProcessor`; remote code only with `trust_remote_code=True`) or, for tests and the offline quick
examples, from `tiny_config`: a randomly initialised model of `family` with an in-process byte-level tokenizer, so
nothing is downloaded. Batches come from `lightning_prune.data.VideoQADataModule` (`videos`, `question`, ...).
"""

from __future__ import annotations

import string
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from typing_extensions import override

from lightning_prune.dycoke.families import FAMILY_NAMES, family_for_model_type, get_family
from lightning_prune.dycoke.families.base import published_prompt_refusal
from lightning_prune.dycoke.families.llava_onevision import TINY_DEFAULTS  # noqa: F401  (re-exported)

DEFAULT_PROMPT = "{question}\n{options}\nAnswer with the option's letter from the given choices directly."
PROMPTS = ("chat_template", "published")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def random_llava_onevision(config: dict[str, Any] | None = None, seed: int = 0) -> tuple[torch.nn.Module, Any]:
    """A randomly initialised LLaVA-OneVision and a matching processor, built offline.

    Args:
        config: overrides of `TINY_DEFAULTS` (`text_config` / `vision_config` dicts and top-level config keys).
        seed: seed of the random weights.

    Returns:
        `(LlavaOnevisionForConditionalGeneration in eval mode, LlavaOnevisionProcessor)`.
    """
    return get_family("llava_onevision").tiny_model(dict(config or {}), seed)


class VideoLLM(LightningModule):
    """Video question answering with a transformers video LLM.

    Args:
        model_name_or_path: Hub id (e.g. `llava-hf/llava-onevision-qwen2-0.5b-ov-hf`, `Qwen/Qwen2.5-VL-7B-Instruct`)
            or local folder.
        tiny_config: instead of a checkpoint, a random model of `family`: `True` for the family's defaults, or a dict
            of overrides (`text_config` / `vision_config` merged key by key).
        dtype: weights' dtype for `from_pretrained` ("auto" keeps the checkpoint's).
        attn_implementation: the LLM's attention ("sdpa" or "eager", the two DyCoke can wrap).
        max_new_tokens: answer length limit in `predict_step`.
        prompt_template: user prompt with `{question}` and `{options}` (one "A. ..." line per option).
        seed: seed of the random model's weights.
        family: `llava_onevision`, `llava_next_video`, `qwen2_5_vl`, `qwen3_vl` or `internvl`; None: from the
            checkpoint's `model_type` (`llava_onevision` for `tiny_config`).
        trust_remote_code: passed to `from_pretrained` (never set unless you set it).
        prompt: `chat_template` (default): the processor's chat template; `published`: the prompt of the published
            DyCoke evaluation (LLaVA-OneVision only: the `qwen_1_5` conversation with its system turn), refused for
            families without published DyCoke code.
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
        family: str | None = None,
        trust_remote_code: bool = False,
        prompt: Literal["chat_template", "published"] = "chat_template",
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
        if family is not None and family not in FAMILY_NAMES:
            problems.append(f"`family` must be one of {list(FAMILY_NAMES)}, got {family!r}.")
        if prompt not in PROMPTS:
            problems.append(f"`prompt` must be one of {list(PROMPTS)}, got {prompt!r}.")
        elif prompt == "published" and family in FAMILY_NAMES and get_family(family).published_conversation is None:
            problems.append(published_prompt_refusal(family))
        if problems:
            raise ValueError(" ".join(problems))
        self.save_hyperparameters()
        if model_name_or_path is not None:
            self.family, self.model, self.processor = _load_pretrained(
                model_name_or_path, dtype, attn_implementation, family, trust_remote_code, prompt
            )
        else:
            self.family = get_family(family or "llava_onevision")
            overrides = {} if tiny_config is True else dict(tiny_config)
            self.model, self.processor = self.family.tiny_model(overrides, seed)
            self.model.set_attn_implementation({"text_config": attn_implementation})
            if dtype in _DTYPES:
                self.model.to(_DTYPES[dtype])
        self.processor.tokenizer.padding_side = "left"  # generation continues every prompt at the right end
        self.max_new_tokens = max_new_tokens
        self.prompt_template = prompt_template
        self.prompt = prompt

    def prompts(self, batch: dict[str, Any]) -> list[str]:
        """The chat-formatted prompt of every sample (one video placeholder, then the question and options)."""
        texts = []
        for question, options in zip(batch["question"], batch["options"], strict=True):
            lines = "\n".join(f"{string.ascii_uppercase[i]}. {option}" for i, option in enumerate(options))
            text = self.prompt_template.format(question=question, options=lines)
            if self.prompt == "published":
                texts.append(self.family.published_prompt(text, self.processor.video_token))
                continue
            conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
            texts.append(self.processor.apply_chat_template(conversation, add_generation_prompt=True))
        return texts

    def model_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Processor outputs: `input_ids`, `attention_mask` `[B, S]`, `pixel_values_videos` (LLaVA: `[B, F, 3, H, W]`;
        Qwen: flattened patches with `video_grid_thw`)."""
        videos = [video.cpu().numpy() for video in batch["videos"]]
        for video in videos:
            self.family.check_frames(len(video))
        inputs = self.processor(text=self.prompts(batch), videos=videos, return_tensors="pt", padding=True,
                                **self.family.processor_kwargs(videos))
        inputs = inputs.to(self.device)
        pixels = self.family.pixel_key  # InternVL's processor hands video frames over as `pixel_values`
        inputs[pixels] = inputs[pixels].to(self.model.dtype)
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


def _check_published_prompt(adapter: Any, prompt: str) -> None:
    """Refuse `prompt: published` (before any weights load) for a family without published DyCoke code."""
    if prompt == "published" and adapter.published_conversation is None:
        raise ValueError(published_prompt_refusal(adapter.name))


def _load_pretrained(
    name: str, dtype: str, attn_implementation: str, family: str | None, trust_remote_code: bool,
    prompt: str = "chat_template",
) -> tuple[Any, torch.nn.Module, Any]:
    from transformers import AutoConfig, AutoProcessor

    remote = {"trust_remote_code": True} if trust_remote_code else {}
    if family is not None:
        adapter = get_family(family)
    else:
        adapter = family_for_model_type(AutoConfig.from_pretrained(name, **remote).model_type)
    _check_published_prompt(adapter, prompt)
    model = adapter.load_class(adapter.generation_class).from_pretrained(
        name, dtype=_DTYPES.get(dtype, "auto"), attn_implementation=attn_implementation, **remote
    ).eval()
    return adapter, model, AutoProcessor.from_pretrained(name, **remote)
