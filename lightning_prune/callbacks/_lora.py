"""LoRA recovery in the retrain phase of `Pruning` (`retrain: {method: lora, ...}`), through peft.

LLM-Pruner recovers a pruned LLaMA with LoRA rather than full fine-tuning (`post_training.py`: r 8, alpha 16,
dropout 0.05 on q/k/v/o/gate/down/up); those are the defaults here. At the prune step the adapters are injected in
place (the network keeps its class and module names, so the LightningModule's `model` stays the same object) and
only they train: `configure_optimizers` builds its fresh optimizer over parameters that require gradients.

Checkpoints always hold merged weights (`W + alpha / r * B A`) under the network's own names, so they load into the
pruned network with or without adapters; at the end of the fit the adapters are merged before `pruned_hf/` is
written. Mask mode keeps removed units exactly zero: a unit's rows of `B` (output rows) and columns of `A` (input
columns) are masked too, so the merged delta is zero wherever the base weight is masked.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_prune._checks import is_int
from lightning_prune.pruning.masks import MaskGuard

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj", "up_proj")
DEFAULTS: dict[str, Any] = {"r": 8, "alpha": 16.0, "dropout": 0.05, "target_modules": list(DEFAULT_TARGETS)}
METHODS = ("full", "lora")
ADAPTER = "default"


def retrain_problems(retrain: dict[str, Any] | None, schedule: Any = None) -> list[str]:
    """Every problem with a `retrain` argument (and LoRA with a pruning `schedule`), each as "`arg` must be <rule>,
    got <value>."."""
    if retrain is None:
        return []
    if lora_settings(retrain) and schedule:
        return [*retrain_problems(retrain), "`retrain.method` 'lora' must be used with one pruning step, got a "
                "`schedule`."]
    if not isinstance(retrain, dict):
        return [f"`retrain` must be a dict such as {{method: lora, r: 8}}, got {retrain!r}."]
    problems = []
    method = retrain.get("method", "full")
    if method not in METHODS:
        problems.append(f"`retrain.method` must be one of {list(METHODS)}, got {method!r}.")
    unknown = sorted(set(retrain) - {"method", *DEFAULTS})
    if unknown:
        problems.append(f"`retrain` keys must be among {['method', *DEFAULTS]}, got {unknown}.")
    if method == "full" and set(retrain) & set(DEFAULTS):
        problems.append(f"`retrain` LoRA settings {sorted(set(retrain) & set(DEFAULTS))} must come with "
                        "`method: lora`, got method 'full'.")
    r, alpha, dropout = retrain.get("r", 8), retrain.get("alpha", 16.0), retrain.get("dropout", 0.05)
    if not is_int(r, 1):
        problems.append(f"`retrain.r` must be an integer >= 1, got {r!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha <= 0:
        problems.append(f"`retrain.alpha` must be a number > 0, got {alpha!r}.")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        problems.append(f"`retrain.dropout` must be in [0, 1), got {dropout!r}.")
    targets = retrain.get("target_modules", DEFAULTS["target_modules"])
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
        problems.append(f"`retrain.target_modules` must be a non-empty list of module names, got {targets!r}.")
    return problems


def resume_problem(mode: str) -> str | None:
    """Why a retrain with LoRA cannot resume in `mode` (mask mode: the adapters' masks start at the pruning step)."""
    if mode != "mask":
        return None
    return ("`retrain.method` 'lora' must start from the pruning step in mask mode, got a resumed retrain: resume in "
            "physical mode, or retrain from the pruned checkpoint.")


def lora_settings(retrain: dict[str, Any] | None) -> dict[str, Any] | None:
    """The LoRA settings (defaults filled in), or None for full retraining."""
    if not isinstance(retrain, dict) or retrain.get("method", "full") != "lora":
        return None
    return {**DEFAULTS, **{key: value for key, value in retrain.items() if key != "method"}}


def linear_names(network: nn.Module) -> list[str]:
    """Names of every `nn.Linear` in `network`."""
    return [name for name, module in network.named_modules() if isinstance(module, nn.Linear)]


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith(f".{target}")  # peft's rule for a list of names


def check_targets(network: nn.Module, settings: dict[str, Any]) -> None:
    """Raise unless the network has linear layers and every target module names some of them.

    Raises:
        ValueError: No `nn.Linear` at all, or a target matching none (the message lists the linear layers).
    """
    linears = linear_names(network)
    if not linears:
        raise ValueError(f"`retrain.method` 'lora' must be used on a network with nn.Linear layers, got "
                         f"{type(network).__name__} without any; use `method: full`.")
    for target in settings["target_modules"]:
        if not any(_matches(name, target) for name in linears):
            suffixes = sorted({name.rsplit(".", 1)[-1] for name in linears})
            raise ValueError(f"`retrain.target_modules` entry {target!r} must match a linear layer (by name or "
                             f"name suffix), got none; linear layers: {suffixes} (e.g. {linears[:4]}).")


class LoraAdapters:
    """LoRA adapters injected in place into `network`; only they require gradients.

    Args:
        network: The (pruned) network; changed in place.
        settings: `lora_settings(...)` (r, alpha, dropout, target_modules).
    """

    def __init__(self, network: nn.Module, settings: dict[str, Any]) -> None:
        from peft import LoraConfig
        from peft.tuners.lora import LoraModel

        check_targets(network, settings)
        config = LoraConfig(r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
                            target_modules=list(settings["target_modules"]), bias="none")
        self.network = network
        self._tuner = LoraModel(network, config, ADAPTER)  # injects into `network` and freezes everything else
        self.merged = False
        self.base_masks: dict[str, torch.Tensor] = {}  # mask mode: the masks of the frozen base weights

    def wrapped(self) -> dict[str, nn.Module]:
        """`{module name: LoRA layer}` of every adapted linear."""
        from peft.tuners.lora import LoraLayer

        return {name: module for name, module in self.network.named_modules() if isinstance(module, LoraLayer)}

    def trainable_parameters(self) -> int:
        """Number of parameters that train (the adapters')."""
        return sum(p.numel() for p in self.network.parameters() if p.requires_grad)

    def merged_state_dict(self, state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        """`state_dict` (keys relative to the LightningModule; the network lives under `prefix`) with the adapters
        merged: `<m>.base_layer.weight + delta -> <m>.weight`, `<m>.base_layer.bias -> <m>.bias`, no `lora_` keys."""
        deltas = {f"{prefix}{name}": module.get_delta_weight(ADAPTER) for name, module in self.wrapped().items()}
        merged: dict[str, torch.Tensor] = {}
        for key, value in state_dict.items():
            if ".lora_" in key:
                continue
            if ".base_layer." not in key:
                merged[key] = value
                continue
            owner, _, leaf = key.rpartition(".base_layer.")
            if leaf == "weight" and owner in deltas:
                value = value + deltas[owner].to(value.device, value.dtype)
            merged[f"{owner}.{leaf}"] = value.detach().clone()
        return merged

    def merge(self) -> nn.Module:
        """Merge the adapters into the base weights and remove them; the network is plain again (same object)."""
        if not self.merged:
            self._tuner.merge_and_unload()
            for module in self.network.modules():
                if "peft_config" in module.__dict__:
                    del module.__dict__["peft_config"]
            for parameter in self.network.parameters():
                parameter.requires_grad_(True)
            self.merged = True
        return self.network


def lora_masks(network: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mask-mode masks of the adapters, for a network with adapters injected: for every adapted linear whose
    weight is masked, `B`'s rows and `A`'s columns of the removed output rows / input columns (then `B A` is zero
    wherever the weight is masked). The base weights are frozen, so their masks, once applied, need no guard.

    Raises:
        ValueError: If a masked weight of an adapted linear is not masked by whole rows and columns (no LoRA delta
            `B A` can then stay zero exactly there).
    """
    from peft.tuners.lora import LoraLayer

    adapted = {name: module for name, module in network.named_modules() if isinstance(module, LoraLayer)}
    out: dict[str, torch.Tensor] = {}
    for param, mask in masks.items():
        owner, _, leaf = param.rpartition(".")
        if owner not in adapted or leaf != "weight":
            continue
        kept_rows, kept_cols = mask.any(dim=1), mask.any(dim=0)
        if not torch.equal(mask.bool(), kept_rows[:, None] & kept_cols[None, :]):
            raise ValueError(f"`retrain.method` 'lora' in mask mode must adapt weights masked by whole rows and "
                             f"columns, got a partial mask on {param!r}; leave it out of `retrain.target_modules` "
                             "or use physical mode.")
        module = adapted[owner]
        lora_a, lora_b = module.lora_A[ADAPTER].weight, module.lora_B[ADAPTER].weight
        out[f"{owner}.lora_B.{ADAPTER}.weight"] = kept_rows[:, None].to(lora_b.dtype).expand_as(lora_b).clone()
        out[f"{owner}.lora_A.{ADAPTER}.weight"] = kept_cols[None, :].to(lora_a.dtype).expand_as(lora_a).clone()
    return out


def start_lora(network: nn.Module, settings: dict[str, Any], guard: MaskGuard | None):
    """Inject the adapters; mask mode (a `guard`): the frozen base weights stay masked and the new guard keeps
    `B A` zero there. Returns `(adapters, guard)`; the base masks are kept on the adapters for the merge."""
    adapters = LoraAdapters(network, settings)
    if guard is not None:
        adapters.base_masks = guard.masks
        guard.remove()
        guard = MaskGuard(network, lora_masks(network, adapters.base_masks))
    return adapters, guard


def merge_into_checkpoint(adapters: LoraAdapters | None, checkpoint: dict[str, Any], target: str) -> None:
    """Checkpoints hold merged weights: while the adapters train, a checkpoint about to be saved gets the merged
    state dict (the network lives under the LightningModule's attribute `target`; `""`: the module itself)."""
    if adapters is not None and not adapters.merged:
        prefix = f"{target}." if target else ""
        checkpoint["state_dict"] = adapters.merged_state_dict(checkpoint["state_dict"], prefix)


def merge_lora(adapters: LoraAdapters | None, guard: MaskGuard | None) -> MaskGuard | None:
    """Merge the adapters (once); mask mode: the guard goes back to the base weights' masks. Returns the guard."""
    if adapters is None or adapters.merged:
        return guard
    adapters.merge()
    if guard is not None:
        guard.remove()
        guard = MaskGuard(adapters.network, adapters.base_masks)
    return guard
