"""`CausalLM`: any transformers causal LM (Hub id, folder, or a tiny random config), LM loss and perplexity.

Pretrain and retrain recipes as in `ImageClassifier`: `configure_optimizers` builds a fresh optimizer over the
current parameters each time (pruning replaces them). What the Pruning callback reads from it: `model` (the
`PreTrainedModel`, patterns such as `model.layers.*.mlp` are relative to it), `loss_fn` (next-token loss of
`(input_ids, labels)` batches), `evaluate_network` (loss and next-token accuracy over a loader) and
`example_input_array` (token ids `[1, T]` to trace the MLP groups).
"""

from __future__ import annotations

import pickle
import re
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics.text import Perplexity
from typing_extensions import override

from lightning_prune._checks import check_int
from lightning_prune.contracts import VocabData
from lightning_prune.modules.two_phase import TwoPhaseModule
from lightning_prune.pruning.lm_loss import IGNORE_INDEX, causal_lm_loss, evaluate_causal_lm, predicted_tokens

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_LM_HEAD_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def _adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3)


def causal_lm_types() -> list[str]:
    """Model types transformers can build with a causal LM head (`AutoModelForCausalLM`)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def build_causal_lm(model: str | None, config: dict[str, Any] | None, dtype: str, attn_implementation: str):
    """The transformers model: pretrained from `model` (Hub id or folder) or random from `config`.

    Raises:
        ValueError: Unless exactly one of `model`/`config` is given, or if the model has no LM head.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if (model is None) == (config is None):
        raise ValueError("`model` (Hub id or folder) or `config` (a random model's config) must be given, got "
                         f"{'both' if model else 'neither'}. Choose one.")
    if config is not None:
        config = dict(config)
        model_type = config.pop("model_type", None)
        if model_type not in causal_lm_types():
            raise ValueError(f"`config.model_type` must be a model type with a causal LM head, got {model_type!r}; "
                             f"e.g. llama, qwen2, qwen3, mistral (all: {', '.join(causal_lm_types())}).")
        built = AutoConfig.for_model(model_type, **config)
        return AutoModelForCausalLM.from_config(built, dtype=_DTYPES[dtype], attn_implementation=attn_implementation)
    pretrained = AutoConfig.from_pretrained(model)
    architectures = pretrained.architectures or []
    if pretrained.model_type not in causal_lm_types() or (
        architectures and not any(arch.endswith(_LM_HEAD_SUFFIXES) for arch in architectures)
    ):
        raise ValueError(f"`model` must be a causal LM with an LM head (architectures ending in "
                         f"{' or '.join(_LM_HEAD_SUFFIXES)}), got {model!r} with model_type "
                         f"{pretrained.model_type!r} and architectures {architectures}.")
    try:
        return AutoModelForCausalLM.from_pretrained(
            model, dtype=_DTYPES[dtype], attn_implementation=attn_implementation
        )
    except pickle.UnpicklingError as error:  # a pickle weights file that safe loading refuses: not torch's advice
        called = re.search(r"GLOBAL (\S+)", str(error))
        what = f"whose loading would call {called.group(1)}" if called else "that safe loading refuses"
        raise ValueError(
            f"`model` {model!r} must hold safetensors, or weights of tensors only, got a pickle weights file {what}: "
            "refused. Use a model saved as safetensors (save_pretrained(..., safe_serialization=True) where you "
            "trust it)."
        ) from None


class CausalLM(TwoPhaseModule):
    """Causal language modelling with separate pretrain and retrain recipes.

    Logs `train/loss`, `val/loss`, `val/ppl` (torchmetrics perplexity) and `val/acc` (next-token accuracy, which
    the Pruning callback's `final/*` picks the best epoch by), and the same under `test/`.

    Args:
        model: Hub id or folder of a pretrained causal LM (offline: a local folder).
        config: Instead of `model`, a random model's config, e.g. `{model_type: llama, hidden_size: 64, ...}`.
        optimizer: Pretrain optimizer, called with the current parameters.
        lr_scheduler: Pretrain schedule (stepped per epoch) or None.
        retrain_optimizer: Retrain optimizer; None reuses `optimizer`.
        retrain_lr_scheduler: Retrain schedule; None reuses `lr_scheduler` when `retrain_optimizer` is None too.
        example_length: Tokens of the example input that traces the network.
        dtype: Parameter dtype: `float32`, `bfloat16` or `float16`.
        attn_implementation: transformers attention kernel (`sdpa` or `eager`).
    """

    def __init__(
        self,
        model: str | None = None,
        config: dict[str, Any] | None = None,
        optimizer: OptimizerCallable = _adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
        retrain_optimizer: OptimizerCallable | None = None,
        retrain_lr_scheduler: LRSchedulerCallable | None = None,
        example_length: int = 16,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        attn_implementation: Literal["sdpa", "eager"] = "sdpa",
    ) -> None:
        super().__init__()
        if dtype not in _DTYPES:
            raise ValueError(f"`dtype` must be one of {list(_DTYPES)}, got {dtype!r}.")
        check_int("example_length", example_length, 2)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "retrain_optimizer", "retrain_lr_scheduler"])
        self.model = build_causal_lm(model, config, dtype, attn_implementation)
        self.loss_fn = causal_lm_loss
        self.evaluate_network = evaluate_causal_lm
        self._set_recipes(optimizer, lr_scheduler, retrain_optimizer, retrain_lr_scheduler)
        self.val_ppl = Perplexity(ignore_index=IGNORE_INDEX)
        self.test_ppl = Perplexity(ignore_index=IGNORE_INDEX)
        self.example_input_array = torch.zeros(1, example_length, dtype=torch.long)

    @override
    def setup(self, stage: str) -> None:
        try:
            trainer = self.trainer
        except RuntimeError:  # not attached to a Trainer (setup called by hand): no DataModule to check against
            trainer = None
        datamodule = getattr(trainer, "datamodule", None)
        vocab = datamodule.vocab_size if isinstance(datamodule, VocabData) else None
        embeddings = self.model.get_input_embeddings().num_embeddings
        if isinstance(vocab, int) and vocab > embeddings:
            raise ValueError(f"the model's vocabulary must cover the tokenizer's {vocab} tokens, got "
                             f"{embeddings} embeddings; raise `config.vocab_size` or use the model's own tokenizer.")

    @override
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits `[B, T, V]` of token ids `[B, T]`."""
        return self.model(input_ids, use_cache=False).logits  # training never decodes

    @override
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        input_ids, labels = batch[0], batch[1]
        loss = causal_lm_loss(self(input_ids), labels)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=predicted_tokens(labels))
        return loss

    def _eval_step(self, batch, stage: str, perplexity: Perplexity) -> torch.Tensor:
        input_ids, labels = batch[0], batch[1]
        logits = self(input_ids)
        loss = causal_lm_loss(logits, labels)
        targets = labels[:, 1:]
        scored = targets != IGNORE_INDEX
        tokens = int(scored.sum())
        accuracy = ((logits[:, :-1].argmax(-1) == targets) & scored).sum() / max(tokens, 1)
        perplexity.update(logits[:, :-1].float(), targets)
        # Token-weighted epoch means (batch_size = tokens), as evaluate_causal_lm computes them.
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=tokens)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, batch_size=tokens)
        self.log(f"{stage}/ppl", perplexity, on_step=False, on_epoch=True)
        return loss

    @override
    def on_train_epoch_end(self) -> None:
        self._log_phase()

    @override
    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "val", self.val_ppl)

    @override
    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "test", self.test_ppl)
