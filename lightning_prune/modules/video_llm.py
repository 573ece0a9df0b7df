"""`VideoLLM`: a transformers video LLM answering questions about videos, as a LightningModule.

Families (`lightning_prune.dycoke.families`): LLaVA-OneVision, LLaVA-NeXT-Video, Qwen2.5-VL, Qwen3-VL, InternVL.
`predict_step` generates free-form answers; `test_step` scores multiple-choice video QA: the option whose letter
(A, B, ...) gets the highest first-token logit is the prediction, and `test/acc` is logged. The model comes from
`model_name_or_path` (a Hub id or a local folder: the family's transformers class, found from the checkpoint's
`model_type`, and `AutoProcessor`; remote code only with `trust_remote_code=True`) or, for tests and the offline quick
examples, from `tiny_config`: a randomly initialised model of `family` with an in-process byte-level tokenizer, so
nothing is downloaded; or from `checkpoint`: a tiny model trained here (`VideoLLM(checkpoint="llava_onevision")` loads
the shipped asset, see `lightning_prune.modules.video_training`). `fit` trains with the answer-token loss on
`<answer_prefix><letter><end of turn>` and logs `train/loss`, `val/acc` (teacher-forced letter). Batches come from
`lightning_prune.data.VideoQADataModule` or `SyntheticVideoQADataModule` (`videos`, `question`, ..., `kind`).
"""

from __future__ import annotations

import string
from collections import defaultdict
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from typing_extensions import override

from lightning_prune.compression.base import generates_one_sample_at_a_time
from lightning_prune.dycoke.families import FAMILY_NAMES, family_for_model_type, get_family
from lightning_prune.dycoke.families.base import published_prompt_refusal
from lightning_prune.dycoke.families.llava_onevision import TINY_DEFAULTS  # noqa: F401  (re-exported)
from lightning_prune.modules.video_augment import AugmentedForward, LayoutAugmentation, frame_length
from lightning_prune.modules.video_training import answer_labels, answer_text, read_trained, word_tokenizer
from lightning_prune.pruning.lm_loss import IGNORE_INDEX, causal_lm_loss

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
            of overrides (`text_config` / `vision_config` merged key by key; `tokenizer: words` swaps the byte-level
            tokenizer for a word-level one over the synthetic task's words, same special ids).
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
        checkpoint: instead of the two above, a tiny model trained here: a `.safetensors` file written by
            `scripts/build_tiny_video_models.py` (or `write_trained`), or a shipped asset's name (`llava_onevision`,
            `qwen2_5_vl`, ...); its metadata give the family, the config and the answer prefix.
        answer_prefix: text the model writes before the option letter (`test` generates it greedily and scores the
            letter after it, so decode-time compression acts on the answer); None: the checkpoint's, else "".
        optimizer: `fit`'s optimizer over all parameters (default AdamW, lr 1e-3).
        lr_scheduler: its schedule, or None.
        lr_scheduler_interval: step `lr_scheduler` once per `epoch` (default) or once per optimizer `step` (for a
            warm-up then cosine schedule such as `OneCycleLR`, whose `total_steps` counts optimizer steps).
        augmentation: `fit` only: varied visual layouts and partial visual context at the answer
            (`lightning_prune.modules.video_augment.LayoutAugmentation`); None: none.
        patch_position_loss: `fit` only: weight of a self-supervised loss on the frame tokens the LLM gets: a linear
            head predicts each token's place in its frame from the token alone (the "where is this patch" pretext
            task of self-supervised vision), added to the answer loss; 0.0: off. A pretrained vision tower brings
            this for free; a tiny tower trained from scratch on the answers alone leaves the place to the LLM's
            token positions, which token dropping renumbers. Needs a fixed number of tokens per frame (not Qwen).
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
        checkpoint: str | None = None,
        answer_prefix: str | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        augmentation: LayoutAugmentation | None = None,
        patch_position_loss: float = 0.0,
    ) -> None:
        super().__init__()
        problems = []
        if checkpoint is not None and (model_name_or_path is not None or tiny_config is not False):
            problems.append(f"`checkpoint` brings its own model: leave `model_name_or_path` and `tiny_config` unset, "
                            f"got model_name_or_path={model_name_or_path!r}, tiny_config={tiny_config!r}.")
        elif checkpoint is None and (model_name_or_path is None) == (tiny_config is False):
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
        if lr_scheduler_interval not in ("epoch", "step"):
            problems.append(f"`lr_scheduler_interval` must be 'epoch' or 'step', got {lr_scheduler_interval!r}.")
        if prompt not in PROMPTS:
            problems.append(f"`prompt` must be one of {list(PROMPTS)}, got {prompt!r}.")
        elif prompt == "published" and family in FAMILY_NAMES and get_family(family).published_conversation is None:
            problems.append(published_prompt_refusal(family))
        if augmentation is not None and not isinstance(augmentation, LayoutAugmentation):
            problems.append(f"`augmentation` must be a LayoutAugmentation or None, got {type(augmentation).__name__}.")
        if isinstance(patch_position_loss, bool) or not isinstance(patch_position_loss, (int, float)) \
                or not patch_position_loss >= 0:
            problems.append(f"`patch_position_loss` must be a number >= 0, got {patch_position_loss!r}.")
        if problems:
            raise ValueError(" ".join(problems))
        self.augmentation = augmentation
        self.patch_position_loss = float(patch_position_loss)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self._optimizer, self._lr_scheduler = optimizer, lr_scheduler
        weights, trained = (None, {}) if checkpoint is None else read_trained(checkpoint)
        if trained:
            if family is not None and family != trained["family"]:
                raise ValueError(f"`family` must match the checkpoint's ({trained['family']!r}) or be unset, "
                                 f"got {family!r}.")
            family, tiny_config = trained["family"], trained["tiny_config"] or True
        self.answer_prefix = answer_prefix if answer_prefix is not None else trained.get("answer_prefix", "")
        if model_name_or_path is not None:
            self.family, self.model, self.processor = _load_pretrained(
                model_name_or_path, dtype, attn_implementation, family, trust_remote_code, prompt
            )
        else:
            self.family = get_family(family or "llava_onevision")
            overrides = {} if tiny_config is True else dict(tiny_config)
            words = overrides.pop("tokenizer", "bytes")
            if words not in ("bytes", "words"):
                raise ValueError(f"`tiny_config.tokenizer` must be 'bytes' or 'words', got {words!r}.")
            self.model, self.processor = self.family.tiny_model(overrides, seed)
            if words == "words":  # the synthetic task's words, same ids for the special tokens
                self.processor.tokenizer = word_tokenizer(self.processor.tokenizer)
            if weights is not None:
                self.model.load_state_dict(weights)
            self.model.set_attn_implementation({"text_config": attn_implementation})
            if dtype in _DTYPES:
                self.model.to(_DTYPES[dtype])
        self.processor.tokenizer.padding_side = "left"  # generation continues every prompt at the right end
        if self.hparams.get("family") != self.family.name:
            # Record the family found (a trained checkpoint's, a Hub config's): loggers merge the initial hparams
            # with a data module's, which names its family too.
            self.hparams["family"] = self._hparams_initial["family"] = self.family.name
        self.max_new_tokens = max_new_tokens
        self.prompt_template = prompt_template
        self.prompt = prompt
        if augmentation is not None and augmentation.position_shuffle > 0:  # refused now, not at a random step
            frame_length(self.family, self.family.find_base(self.model), "augmentation.position_shuffle")
        self.patch_position_head = None
        if self.patch_position_loss > 0:  # a training-only head: the shipped assets hold `self.model` alone
            base = self.family.find_base(self.model)
            width = self.model.config.get_text_config().hidden_size
            self.patch_position_head = torch.nn.Linear(width, frame_length(self.family, base, "patch_position_loss"))

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

    def model_inputs(self, batch: dict[str, Any], suffixes: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Processor outputs: `input_ids`, `attention_mask` `[B, S]`, `pixel_values_videos` (LLaVA: `[B, F, 3, H, W]`;
        Qwen: flattened patches with `video_grid_thw`). `suffixes`: text appended to each prompt (training targets)."""
        videos = [video.cpu().numpy() for video in batch["videos"]]
        for video in videos:
            self.family.check_frames(len(video))
        texts = self.prompts(batch)
        if suffixes is not None:
            texts = [text + suffix for text, suffix in zip(texts, suffixes, strict=True)]
        inputs = self.processor(text=texts, videos=videos, return_tensors="pt", padding=True,
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
        answers = self.processor.batch_decode(self.generated_tokens(batch), skip_special_tokens=True)
        return [{"id": sample_id, "answer": text.strip()} for sample_id, text in zip(batch["id"], answers, strict=True)]

    def generation_batches(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """The batches `generate` gets: `batch` itself, or, while a token-compression method that runs one prompt at
        a time is installed (FrameFusion, PruneVid: `CompressionMethod.one_sample`), one batch per sample, so each
        prompt is processed unpadded, exactly as in a batch-1 run."""
        size = len(batch["question"])
        if size == 1 or not generates_one_sample_at_a_time(self.model):
            return [batch]
        return [{key: value[row:row + 1] for key, value in batch.items()} for row in range(size)]

    def generated_tokens(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        """Per sample, the greedily generated token ids after its prompt (`[T]`, padded with the pad id where a
        batch's samples stop at different lengths)."""
        tokens = []
        for part in self.generation_batches(batch):
            inputs = self.model_inputs(part)
            generated = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            tokens += list(generated[:, inputs["input_ids"].shape[1] :])
        return tokens

    def answer_indices(self, batch: dict[str, Any]) -> torch.Tensor:
        """`[B]` predicted option indices: greedy generation through `answer_prefix`, then the option letter with the
        highest logit at the next step (without a prefix: at the first generated token)."""
        steps = self.answer_prefix_length() + 1
        predictions = []
        for part in self.generation_batches(batch):
            output = self.model.generate(**self.model_inputs(part), max_new_tokens=steps, min_new_tokens=steps,
                                         do_sample=False, output_logits=True, return_dict_in_generate=True)
            letter_logits = output.logits[steps - 1]  # [b, vocab]
            predictions += [int(letter_logits[row, self.option_token_ids(len(options))].argmax())
                            for row, options in enumerate(part["options"])]
        return torch.tensor(predictions, device=self.device)

    def answer_prefix_length(self) -> int:
        """Tokens of `answer_prefix`."""
        if not self.answer_prefix:
            return 0
        return len(self.processor.tokenizer.encode(self.answer_prefix, add_special_tokens=False))

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        predictions = self.answer_indices(batch)
        answers = torch.as_tensor(batch["answer_index"], device=self.device)
        correct = (predictions == answers).float()
        self.log("test/acc", correct.mean(), batch_size=len(predictions), on_step=False, on_epoch=True)
        self._log_per_kind("test", correct, batch)
        return correct.mean()

    def _log_per_kind(self, stage: str, correct: torch.Tensor, batch: dict[str, Any]) -> None:
        groups: dict[str, list[int]] = defaultdict(list)
        for row, kind in enumerate(batch.get("kind") or []):
            if kind:
                groups[kind].append(row)
        for kind, rows in groups.items():
            self.log(f"{stage}/acc_{kind}", correct[rows].mean(), batch_size=len(rows), on_step=False, on_epoch=True)

    def training_inputs(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Prompts followed by their gold answers, and labels `[B, S]` on the answer tokens only."""
        end = self.processor.tokenizer.eos_token
        targets = [answer_text(self.answer_prefix, int(index), end) for index in batch["answer_index"]]
        inputs = self.model_inputs(batch, suffixes=targets)
        length = len(self.processor.tokenizer.encode(targets[0], add_special_tokens=False))
        return inputs, answer_labels(inputs["input_ids"], length)

    def training_logits(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Logits `[B, S', V]` of a training forward, through this step's `augmentation` when one is set (dropped
        visual tokens shorten the sequence: the answer tokens stay its last `S'` columns' labels)."""
        if self.augmentation is None or not self.augmentation.enabled(self.current_epoch):
            return self.model(**inputs, use_cache=False).logits
        answer_length = int((labels[0] != IGNORE_INDEX).sum())
        with AugmentedForward(self.model, self.family.name, self.augmentation, self.global_step, answer_length):
            return self.model(**inputs, use_cache=False).logits

    def with_patch_position_loss(self, inputs: dict[str, torch.Tensor]) -> tuple[dict[str, Any], torch.Tensor]:
        """`inputs` with the video encoded once (`mm_encoder_outputs` instead of pixels) and the mean cross-entropy
        of `patch_position_head` predicting each frame token's index in its frame from the token."""
        video = self.family.encode_video(self.family.find_base(self.model), inputs)
        tokens = torch.cat(video.frames)  # [frames in the batch, N, D]
        logits = self.patch_position_head(tokens.to(self.patch_position_head.weight.dtype))
        places = torch.arange(tokens.shape[1], device=tokens.device).expand(tokens.shape[0], -1)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), places.flatten())
        encoded = {key: value for key, value in inputs.items() if key != self.family.pixel_key}
        encoded["mm_encoder_outputs"] = {self.family.encoder_key: video.output}
        return encoded, loss

    @override
    def on_fit_start(self) -> None:
        self.train()  # the family builders and from_pretrained give eval mode; Lightning keeps modules' modes

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        inputs, labels = self.training_inputs(batch)
        if self.patch_position_head is not None:
            inputs, position_loss = self.with_patch_position_loss(inputs)
            self.log("train/patch_position_loss", position_loss, on_step=False, on_epoch=True,
                     batch_size=len(labels))
        logits = self.training_logits(inputs, labels)
        loss = causal_lm_loss(logits, labels[:, labels.shape[1] - logits.shape[1]:])
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(labels))
        if self.patch_position_head is not None:
            loss = loss + self.patch_position_loss * position_loss
        return loss

    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Teacher-forced: the option letter with the highest logit after the prompt and the gold `answer_prefix`."""
        inputs = self.model_inputs(batch, suffixes=[self.answer_prefix] * len(batch["question"]))
        logits = self.model(**inputs, use_cache=False).logits[:, -1]
        predictions = torch.stack([logits[row, self.option_token_ids(len(options))].argmax()
                                   for row, options in enumerate(batch["options"])])
        correct = (predictions == torch.as_tensor(batch["answer_index"], device=self.device)).float()
        self.log("val/acc", correct.mean(), batch_size=len(correct), on_step=False, on_epoch=True, prog_bar=True)
        self._log_per_kind("val", correct, batch)

    @override
    def configure_optimizers(self) -> Any:
        optimizer = (self._optimizer or _adamw)(self.parameters())
        if self._lr_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self._lr_scheduler(optimizer),
                                                         "interval": self.hparams.lr_scheduler_interval}}

    def option_token_ids(self, count: int) -> list[int]:
        """Token id of each option letter "A", "B", ... as the answer's first token."""
        tokenizer = self.processor.tokenizer
        return [tokenizer.encode(letter, add_special_tokens=False)[-1] for letter in string.ascii_uppercase[:count]]


def _check_published_prompt(adapter: Any, prompt: str) -> None:
    """Refuse `prompt: published` (before any weights load) for a family without published DyCoke code."""
    if prompt == "published" and adapter.published_conversation is None:
        raise ValueError(published_prompt_refusal(adapter.name))


def _adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3)


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
