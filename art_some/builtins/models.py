"""
The built-in model constructors (``register_models``), randomly initialised; no weights are ever downloaded.
A multi-head (SOME) network declares ``estimator="some"``, the estimator a run wraps it in by default.
"""
from art_some.hookspecs import hookimpl


def _cifar_resnet(depth: int):
    def build(num_classes: int = 10, in_channels: int = 3):
        from art_some.models.cifar_resnet import CifarResNet

        return CifarResNet(depth=depth, num_classes=num_classes, in_channels=in_channels)

    build.__doc__ = f"CIFAR ResNet-{depth} (randomly initialised)."
    return build


def _torchvision(name: str):
    def build(num_classes: int = 1000, **kwargs):
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)

    build.__doc__ = f"torchvision's {name} (randomly initialised; no weights are downloaded)."
    return build


@hookimpl
def register_models(register):
    from art_some.models.multihead import cifar_resnet_multihead, digits_cnn_multihead, resnet50_multihead
    from art_some.models.small import DigitsCNN
    from art_some.models.video import TinyVideoCNN

    register("digits_cnn", DigitsCNN, description="small CNN for 1x8x8 digits")
    register("tiny_video_cnn", TinyVideoCNN, description="two-layer 3D CNN for (C, T, H, W) clips (tests)")
    register("cifar_resnet20", _cifar_resnet(20), description="CIFAR ResNet-20")
    register("cifar_resnet110", _cifar_resnet(110), description="CIFAR ResNet-110 (Cohen et al.)")
    register("resnet50", _torchvision("resnet50"), description="torchvision ResNet-50 for ImageNet")
    register("some_digits_cnn", digits_cnn_multihead, estimator="some",
             description="multi-head DigitsCNN (SOME), num_heads=5")
    register("some_cifar_resnet20", lambda **kw: cifar_resnet_multihead(depth=20, **kw), estimator="some",
             description="multi-head CIFAR ResNet-20 (SOME), num_heads=5")
    register("some_cifar_resnet110", lambda **kw: cifar_resnet_multihead(depth=110, **kw), estimator="some",
             description="multi-head CIFAR ResNet-110 (SOME), num_heads=5")
    register("some_resnet50", resnet50_multihead, estimator="some",
             description="multi-head ResNet-50 (SOME), num_heads=5")
