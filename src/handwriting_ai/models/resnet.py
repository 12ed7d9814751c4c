"""ResNet-18, CIFAR-style stem (3x3 conv, no max-pool) for 1-channel 28x28 input."""

from __future__ import annotations

from torch import nn

from handwriting_ai.models.registry import register_model


@register_model("resnet18")
def resnet18() -> nn.Module:
    # Imported here: `import torchvision` pulls in torch._dynamo (~2.5 s on this machine), and
    # every process that knows the registry (the API, each worker) would pay it at start.
    from torchvision.models import resnet18 as tv_resnet18

    model: nn.Module = tv_resnet18(num_classes=10)
    # A 7x7 stride-2 stem and a max-pool would shrink 28x28 to 7x7 before the first block.
    model.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model
