"""The model zoo: plain ``nn.Module``s chosen by name.

``build_model("lenet5_mini", num_classes=10)`` builds a registered network; ``available_models()`` lists the names.
Every model carries ``input_shape`` (``(channels, height, width)`` of one example) for example inputs and summaries.
"""

from lightning_prune.models import cifar_resnet, lenet, torchvision_zoo, vgg  # noqa: F401  (fills the registry)
from lightning_prune.models.cifar_resnet import BasicBlock, CifarResNet
from lightning_prune.models.lenet import LeNet5Mini
from lightning_prune.models.registry import available_models, build_model, register_model
from lightning_prune.models.torchvision_zoo import resolve_weights
from lightning_prune.models.vgg import CifarVGG

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "CifarVGG",
    "LeNet5Mini",
    "available_models",
    "build_model",
    "register_model",
    "resolve_weights",
]
