"""
The built-in data sets (``register_datasets``): loaders ``loader(root=None, split="test", augment=False, **data
options) -> (dataset, info)``, the data options (``channels``, ``resize``, ``mean``, ``std``) those they take.
"""
from art_some.hookspecs import hookimpl


@hookimpl
def register_datasets(register):
    from art_some import data
    from art_some.numpy_dataset import numpy_dataset

    register("digits", data.digits, description="scikit-learn digits, 1x8x8, 10 classes (embedded)")
    register("cifar10", data.cifar10, description="CIFAR-10 via torchvision from --data-root")
    register("imagenet", data.imagenet, description="ImageNet via torchvision from --data-root")
    register("imagefolder", data.imagefolder,
             description="torchvision ImageFolder from --data-root (--channels, --resize, --mean, --std)")
    register("numpy", numpy_dataset, description=".npz file or folder of .npy (x, y) from --data-root")
