"""`MultimodalLM`: a TinyLLaVA-style model (vision tower, projector, LM) through `LlavaForConditionalGeneration`.

Fine-tuning on LLaVA instruction batches (`LlavaInstructDataModule`), LM loss on the answers, and held-out
multiple-choice VQA accuracy (highest answer log-likelihood among the options). For the Pruning callback: `model`
is the `LlavaForConditionalGeneration`, called with the batch's dict of keyword inputs; its LM's units are named
`model.language_model.layers.<i>.mlp` / `.self_attn` (the vision tower's CLIP/SigLIP blocks are not decoder
units); `loss_fn` is the answer-token LM loss and `evaluate_network` returns (LM loss on the gold answers,
multiple-choice accuracy).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from typing_extensions import override

from lightning_prune.modules.two_phase import TwoPhaseModule
from lightning_prune.pruning.inputs import to_device
from lightning_prune.pruning.lm_loss import answer_losses, answer_matches, causal_lm_loss, multiple_choice_accuracy
from lightning_prune.pruning.modes import modes_restored

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4)


def build_llava(model: str | None, config: dict[str, Any] | None, dtype: str):
    """`LlavaForConditionalGeneration` from a folder / Hub id, or random from a `LlavaConfig` dict.

    Raises:
        ValueError: Unless exactly one of `model`/`config` is given, or if the folder is not a LLaVA model.
    """
    from transformers import AutoConfig, LlavaConfig, LlavaForConditionalGeneration

    if (model is None) == (config is None):
        raise ValueError("`model` (Hub id or folder) or `config` (a random LLaVA config) must be given, got "
                         f"{'both' if model else 'neither'}. Choose one.")
    if config is not None:
        return LlavaForConditionalGeneration(LlavaConfig(**config)).to(_DTYPES[dtype])
    found = AutoConfig.from_pretrained(model)
    if found.model_type != "llava":
        raise ValueError(f"`model` must be a LLaVA model (model_type 'llava', vision tower + projector + LM with an "
                         f"LM head), got {model!r} with model_type {found.model_type!r}.")
    return LlavaForConditionalGeneration.from_pretrained(model, dtype=_DTYPES[dtype])


def summarize_answers(entries: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]]) -> tuple[float, float]:
    """(LM loss per answer token of the gold items, VQA accuracy) from per-batch `(losses, tokens, matches, meta)`.

    The accuracy is multiple-choice when the items have options, else the share of answers whose every token is
    the teacher-forced argmax (exact match), so a training set without options still gets an accuracy.
    """
    loss = torch.cat([entry[0] for entry in entries])
    count = torch.cat([entry[1] for entry in entries])
    matches = torch.cat([entry[2] for entry in entries])
    meta = {key: torch.cat([entry[3][key] for entry in entries]) for key in ("question", "option", "gold")}
    gold = meta["gold"].bool()
    lm_loss = float(loss[gold].sum() / count[gold].sum().clamp(min=1))
    if (meta["option"] >= 0).any():
        return lm_loss, multiple_choice_accuracy(loss, meta["question"], meta["option"], meta["gold"])
    return lm_loss, float(matches[gold].float().mean())


def _answer_entry(logits, labels, meta) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    return (answer_losses(logits, labels).cpu(), (labels[:, 1:] != -100).sum(1).cpu(),
            answer_matches(logits, labels).cpu(), {key: value.cpu() for key, value in meta.items()})


def evaluate_multimodal(network, batches, device=None) -> tuple[float, float]:
    """(LM loss per answer token of the gold items, VQA accuracy) over `(inputs, labels, meta)` batches."""
    entries = []
    with modes_restored(network):
        with torch.no_grad():
            for inputs, labels, meta in batches:
                inputs, labels = to_device(inputs, device), labels.to(device) if device is not None else labels
                entries.append(_answer_entry(network(**inputs, use_cache=False).logits, labels, meta))
    return summarize_answers(entries) if entries else (float("nan"), float("nan"))


class MultimodalLM(TwoPhaseModule):
    """LLaVA-style instruction fine-tuning with pretrain/retrain recipes.

    Logs `train/loss`, `val/loss` (answer-token LM loss of the gold answers) and `val/acc` (multiple-choice VQA
    accuracy; exact match of the answer tokens for sets without options), the same under `test/`.

    Args:
        model: Folder or Hub id of a LLaVA model (e.g. a TinyLLaVA checkpoint converted to transformers' format).
        config: Instead of `model`, a random `LlavaConfig` as a dict (`text_config`, `vision_config`, ...).
        optimizer: Pretrain (fine-tuning) optimizer, called with the trainable parameters.
        lr_scheduler: Its schedule (stepped per epoch) or None.
        retrain_optimizer: Retrain optimizer; None reuses `optimizer`.
        retrain_lr_scheduler: Retrain schedule; None reuses `lr_scheduler` when `retrain_optimizer` is None too.
        freeze_vision: Keep the vision tower fixed (LLaVA fine-tuning trains projector and LM).
        dtype: Parameter dtype.
    """

    def __init__(
        self,
        model: str | None = None,
        config: dict[str, Any] | None = None,
        optimizer: OptimizerCallable = _adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
        retrain_optimizer: OptimizerCallable | None = None,
        retrain_lr_scheduler: LRSchedulerCallable | None = None,
        freeze_vision: bool = True,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    ) -> None:
        super().__init__()
        if dtype not in _DTYPES:
            raise ValueError(f"`dtype` must be one of {list(_DTYPES)}, got {dtype!r}.")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "retrain_optimizer", "retrain_lr_scheduler"])
        self.model = build_llava(model, config, dtype)
        if freeze_vision:
            self.model.model.vision_tower.requires_grad_(False)
        self.loss_fn = causal_lm_loss
        self.evaluate_network = evaluate_multimodal
        self._set_recipes(optimizer, lr_scheduler, retrain_optimizer, retrain_lr_scheduler)
        self._eval: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]] = []

    @override
    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits `[B, T, V]` of a dict of `input_ids`, `attention_mask`, `pixel_values`."""
        return self.model(**inputs, use_cache=False).logits

    @override
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        inputs, labels = batch[0], batch[1]
        loss = causal_lm_loss(self(inputs), labels)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(labels))
        return loss

    @override
    def on_train_epoch_end(self) -> None:
        self._log_phase()

    def _eval_step(self, batch) -> None:
        inputs, labels, meta = batch
        self._eval.append(_answer_entry(self(inputs), labels, meta))

    def _eval_epoch_end(self, stage: str) -> None:
        if not self._eval:
            return
        loss, accuracy = summarize_answers(self._eval)
        self._eval = []
        self.log(f"{stage}/loss", loss)
        self.log(f"{stage}/acc", accuracy)

    @override
    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch)

    @override
    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    @override
    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch)

    @override
    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
