"""The LightningModule a study trains: `ImageClassifier` over a registry network, or any module given as `module`.

With `module` (e.g. `CausalLM` with a random Llama config, `MultimodalLM` with a LLaVA config) the study samples
masks over that module's `model` units (MLP channels, query heads, KV groups of a transformers decoder), scores
its criteria with the module's `loss_fn`, and measures pre/post with its `evaluate_network` through the same
`Pruning` callback; the recipe's optimizer and schedule are injected as they are into `ImageClassifier`.
"""

from __future__ import annotations

import itertools

import torch
from lightning.pytorch import LightningModule

from lightning_prune.study.building import optimizer_factory, scheduler_factory
from lightning_prune.study.spec import RecipeConfig, StudyConfig, resolve_class


def study_module(config: StudyConfig, recipe: RecipeConfig | None) -> LightningModule:
    """A fresh module of the study, with `recipe`'s optimizer and schedule for both phases (None: defaults)."""
    kwargs = {}
    if recipe is not None:
        optimizer, scheduler = optimizer_factory(recipe.optimizer), scheduler_factory(recipe.lr_scheduler)
        kwargs = {"optimizer": optimizer, "lr_scheduler": scheduler, "retrain_optimizer": optimizer,
                  "retrain_lr_scheduler": scheduler}
    if config.module is not None:
        cls = resolve_class(config.module["class_path"], LightningModule)
        return cls(**config.module.get("init_args", {}), **kwargs)
    from lightning_prune.modules import ImageClassifier

    return ImageClassifier(model=config.model, model_kwargs=config.model_kwargs, **kwargs)


def study_network(config: StudyConfig) -> torch.nn.Module:
    """The network the study prunes, freshly built (registry network, or the module's `model`)."""
    if config.module is not None:
        return study_module(config, None).model
    from lightning_prune.models import build_model

    return build_model(config.model, **config.model_kwargs)


def study_scoring(config: StudyConfig, network: torch.nn.Module, batches: list) -> tuple[object, object]:
    """The example input that traces `network` and the loss the criteria score with.

    A registry network traces on zeros of its `input_shape` and scores with cross-entropy; a configured module's
    network traces on the first calibration example and scores with the module's `loss_fn`.
    """
    import torch.nn.functional as F

    if config.module is None:
        return torch.zeros(1, *network.input_shape), F.cross_entropy
    from lightning_prune.pruning.inputs import first_example

    loss_fn = getattr(study_module(config, None), "loss_fn", None) or F.cross_entropy
    return first_example(batches[0][0]), loss_fn


def first_batches(loader, count: int) -> list:
    """The first `count` `(inputs, targets)` of a loader."""
    return [(batch[0], batch[1]) for batch in itertools.islice(loader, count)]
