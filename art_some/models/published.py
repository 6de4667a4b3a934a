"""
Loaders for the classifier checkpoints the randomized-smoothing community released, mapped onto art-some models.

Every format is read with ``torch.load(..., weights_only=True)``: tensors, numbers, strings and containers only,
never pickled code. The normalisation layer these repositories put in front of the network becomes the
estimator's ``preprocessing`` (``meta["mean"]``, ``meta["std"]``), so that noise is still added in raw [0, 1]
space, exactly as the authors certified.

Formats (see ``docs/published.rst``):

``cohen``
    locuslab/smoothing, and the repositories built on its code: Hadisalman/smoothing-adversarial (SmoothAdv),
    jh-jeong/smoothing-consistency (Consistency), jh-jeong/smoothmix (SmoothMix). A dict
    ``{"arch", "state_dict", "epoch"?, "optimizer"?}`` whose ``state_dict`` is that of
    ``Sequential(NormalizeLayer, network)``: the normalize layer keeps its means and standard deviations as plain
    tensor attributes, so it has no keys, and the network's keys start with ``1.`` (``1.module.`` for ImageNet's
    ``resnet50``, which is wrapped in ``DataParallel``). ``cifar_resnet20`` / ``cifar_resnet110`` are the
    bearpaw CIFAR ResNets (blocks' projection shortcut named ``downsample``); ``resnet50`` is torchvision's.
    SmoothAdv's own repository puts an ``InputCenterLayer`` (``x - mean``, no division) in front instead, which
    its files do not record: load them with ``arch="smoothadv_<arch>"`` (std 1).
``some``
    fanghenshaometeor/smoothed-multihead-ensemble (SOME): ``{"state_dict"}`` of ``Sequential(NormalizeLayer,
    multi-head ResNet)``: ``1.conv1``, ``1.bn1``, ``1.layer1``, ``1.layer2`` (the shared trunk) and
    ``1.heads.<i>.0`` (head i's own third stage), ``1.heads.<i>.1`` (its linear layer); ImageNet's ResNet-50 is
    in ``DataParallel`` (``1.module.``) and shares layer3 too, its heads holding layer4 and the linear layer.
``macer``
    RuntianZ/macer: ``{"net", "epoch"}`` with the bare ResNet-110's state dict (no prefix) and no normalisation
    at all (MACER trains on ``ToTensor()`` inputs): mean 0, std 1.
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

from art_some.core.errors import NonFiniteError

# Channel statistics of the normalize layers (get_normalize_layer in each repository's datasets.py / utils.py).
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": ((0.0,), (1.0,)),
}
INPUT_SHAPES = {"cifar10": (3, 32, 32), "imagenet": (3, 224, 224)}

# Architecture name -> (format, art-some model name, the data set its released checkpoints were trained on, the
# layer in front of the network: "standardize" (NormalizeLayer: (x - mean) / std), "center" (SmoothAdv's
# InputCenterLayer: x - mean) or "none").
ARCHITECTURES = {
    "cifar_resnet20": ("cohen", "cifar_resnet20", "cifar10", "standardize"),
    "cifar_resnet110": ("cohen", "cifar_resnet110", "cifar10", "standardize"),
    "resnet50": ("cohen", "resnet50", "imagenet", "standardize"),
    # Hadisalman/smoothing-adversarial's files say arch "cifar_resnet110" / "resnet50" like Cohen's, but its
    # get_architecture puts get_input_center_layer in front (mean subtracted, no division): name them explicitly.
    "smoothadv_cifar_resnet20": ("cohen", "cifar_resnet20", "cifar10", "center"),
    "smoothadv_cifar_resnet110": ("cohen", "cifar_resnet110", "cifar10", "center"),
    "smoothadv_resnet50": ("cohen", "resnet50", "imagenet", "center"),
    "some_cifar_resnet20": ("some", "some_cifar_resnet20", "cifar10", "standardize"),
    "some_cifar_resnet110": ("some", "some_cifar_resnet110", "cifar10", "standardize"),
    "some_resnet50": ("some", "some_resnet50", "imagenet", "standardize"),
    "macer_resnet110": ("macer", "cifar_resnet110", "cifar10", "none"),
}
# SOME's own names for its architectures (its --arch option).
ALIASES = {"R20": "some_cifar_resnet20", "R110": "some_cifar_resnet110", "R50": "some_resnet50"}
# The attributes a normalize layer may keep as buffers in a fork (then they have keys under "0.").
NORMALIZE_KEYS = (("means", "sds"), ("mean", "std"), ("mu", "sigma"))


def published_architectures() -> list[str]:
    """The names ``load_published(arch=...)`` and ``art-some certify --arch`` accept."""
    return sorted(ARCHITECTURES)


def load_published(path: str | os.PathLike, arch: str | None = None, device: str = "cpu",
                   dataset: str | None = None):
    """
    Load a released checkpoint (Cohen et al.'s format and its descendants, SOME's, MACER's) into an art-some model.

    :param path: The checkpoint file (``.pth.tar``, ``.pth``, ...), exactly as released.
    :param arch: One of :func:`published_architectures`; default: the file's ``arch`` field (Cohen's format), else
                 what the file's keys say (a SOME multi-head network, MACER's ``net``).
    :param device: Where the model goes.
    :param dataset: The data set whose normalize layer the network was trained behind (``cifar10``,
                    ``imagenet`` or ``none``); default: the one the architecture was released for.
    :return: ``(model, meta)``: the model in eval mode, on raw inputs *after* standardisation by
             ``meta["mean"]`` / ``meta["std"]``; meta also has ``num_classes``, ``input_shape``, ``dataset``,
             ``normalize`` (standardize, center or none), ``arch``, ``format``, ``model`` (the art-some model
             name), ``model_kwargs`` and ``epoch`` when the file records it.
    :raises ValueError: one line naming the file: not a torch file, pickled objects that ``weights_only`` refuses,
                        an unknown architecture, or weights of another architecture (missing / unexpected keys).
    """
    import torch

    from art_some.models import check_finite_weights, create_model

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    blob = _read(path)
    arch = _architecture(path, blob, arch)
    fmt, model_name, default_dataset, layer = ARCHITECTURES[arch]
    dataset = dataset or default_dataset
    if dataset not in NORMALIZATION:
        raise ValueError(f"checkpoint {path}: dataset {dataset!r} has no known normalize layer; "
                         f"choose from {', '.join(sorted(NORMALIZATION))}")
    mean, std = NORMALIZATION["none" if layer == "none" else dataset]
    if layer == "center":
        std = (1.0,) * len(mean)
    field = "net" if fmt == "macer" else "state_dict"
    state = blob.get(field)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {path}: field {field!r} must be a state dict of tensors for arch {arch!r}")
    _check_finite_tensors(path, field, state)  # every tensor, the normalize layer's buffers included
    if fmt == "macer":
        network = _strip(state, "module.")
    else:
        network, buffers = _split_normalize(path, state)
        if buffers is not None:  # a fork that registered the statistics: the file's own numbers win
            mean, std = buffers
            std = std if std is not None else (1.0,) * len(mean)
        network = _strip(network, "module.")
    _check_normalisation(path, mean, std)
    mapped = _map_keys(network, fmt, model_name)
    num_classes, kwargs = _shape_kwargs(path, arch, fmt, mapped)
    model = create_model(model_name, num_classes=num_classes, **kwargs)
    _load_strict(path, arch, model, mapped)
    check_finite_weights(model, f"checkpoint {path}")
    meta = {
        "model": model_name, "model_kwargs": {"num_classes": num_classes, **kwargs}, "arch": arch, "format": fmt,
        "dataset": dataset, "normalize": layer,
        "mean": [float(m) for m in mean], "std": [float(s) for s in std],
        "num_classes": num_classes, "input_shape": list(INPUT_SHAPES.get(dataset, (3, 32, 32))),
    }
    if isinstance(blob.get("epoch"), int):
        meta["epoch"] = blob["epoch"]
    return model.to(device).eval(), meta


def is_published(path: str | os.PathLike) -> bool:
    """
    True if ``path`` is a torch file in one of the released formats (not an art-some checkpoint), or a torch file
    holding pickled objects (art-some never writes those), so that :func:`load_published` says what they are.
    """
    path = Path(path)
    if path.suffix == ".safetensors" or not path.is_file():
        return False
    try:
        blob = _read(path)
    except ValueError as err:
        return PICKLED in str(err) or "refusing to load it" in str(err)  # torch files refused for what they hold
    return "meta" not in blob and ("state_dict" in blob or "net" in blob)


def _read(path: Path) -> dict:
    blob = torch_load(path)
    if not isinstance(blob, dict):
        raise ValueError(f"checkpoint {path} holds a {type(blob).__name__}, not a dict with a 'state_dict' "
                         "(or MACER's 'net')")
    return blob


# Every wording torch has used for a global that weights_only refuses ("Unsupported global: GLOBAL x.y" before 2.6,
# "unsupported GLOBAL x.y whose module x is blocked" since).
REFUSED_GLOBAL = re.compile(r"unsupported global:?\s+(?:GLOBAL\s+)?([\w.]+)", re.IGNORECASE)
PICKLED = "which weights_only=True refuses to unpickle"  # what is_published looks for


def torch_load(path: Path, map_location="cpu", unreadable: str = "is not a readable torch file"):
    """
    ``torch.load(path, weights_only=True)`` after :func:`check_declared_sizes`, every refusal one line naming the
    file (and the pickled object that weights_only refuses, in any of torch's wordings).

    :param unreadable: What the message says of a file torch cannot read at all.
    """
    import torch

    check_declared_sizes(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        text = str(err)
        found = REFUSED_GLOBAL.search(text)
        if isinstance(err, pickle.UnpicklingError) and found:
            raise ValueError(f"checkpoint {path} holds a pickled {found.group(1)} object, {PICKLED}; re-save its "
                             "weights only, torch.save(model.state_dict(), FILE), and pass --arch NAME (a registered "
                             "model) or --model-module pkg.mod:factory (your own class)") from None
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)  # torch's reason, not its advice
        first = detail.group(1) if detail else (text.strip().splitlines()[0] if text.strip() else "")
        raise ValueError(f"checkpoint {path} {unreadable} ({type(err).__name__}"
                         f"{': ' + first if first else ''})") from None


def check_declared_sizes(path: Path) -> None:
    """
    Refuse a torch file whose entries declare more bytes than the file holds, before anything is inflated or
    allocated: torch writes its zip entries stored, so a larger entry is compressed (a zip bomb) or forged; a legacy
    (pre-1.6) file declares its storages' sizes in its pickle, and a 4 TB storage in a small file is forged too.
    """
    size = path.stat().st_size
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for entry in archive.infolist():
                if entry.file_size > size:
                    raise ValueError(f"checkpoint {path}: entry {entry.filename} declares {entry.file_size} bytes in "
                                     f"a file of {size} (compressed or forged; torch stores its entries "
                                     "uncompressed); refusing to load it")
        return
    declared = _legacy_storage_bytes(path)
    if declared > size:
        raise ValueError(f"checkpoint {path} declares tensors of {declared} bytes in a file of {size} (forged); "
                         "refusing to load it")


# Bytes per element of the legacy storage types (torch.FloatStorage, ...); others count 8.
_ELEMENT_BYTES = {"Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1,
                  "Byte": 1, "Bool": 1, "ComplexFloat": 8, "ComplexDouble": 16}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _legacy_storage_bytes(path: Path) -> int:
    """The bytes a legacy torch file's pickle declares for its storages (0 where it is not one): read, not run."""

    class Anything:  # what every global and call of the scanned pickle becomes
        def __init__(self, name=""):
            self.name = name

        def __call__(self, *args, **kwargs):
            return Anything()

        def __setitem__(self, key, value):
            pass

        def __setstate__(self, state):
            pass

        def append(self, value):
            pass

        def extend(self, values):
            pass

    storages = {}

    class Scan(pickle.Unpickler):
        def find_class(self, module, name):
            return Anything(name)

        def persistent_load(self, pid):
            if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[4], int):
                kind = getattr(pid[1], "name", "").replace("Storage", "")
                storages[pid[2]] = pid[4] * _ELEMENT_BYTES.get(kind, 8)
            return Anything()

    try:
        with open(path, "rb") as f:
            if Scan(f).load() != _LEGACY_MAGIC:
                return 0
            Scan(f).load()  # protocol version
            Scan(f).load()  # system info
            Scan(f).load()  # the object, whose storages are persistent ids
    except Exception:
        return sum(storages.values())  # not a legacy file, or a broken one: torch.load says what it is
    return sum(storages.values())
def _architecture(path: Path, blob: dict, arch: str | None) -> str:
    given = arch if arch is not None else blob.get("arch")
    if given is None:
        given = _detect(path, blob)
    if not isinstance(given, str):
        raise ValueError(f"checkpoint {path}: field 'arch' is {given!r}, not an architecture name")
    given = ALIASES.get(given, given)
    if given not in ARCHITECTURES:
        raise ValueError(f"checkpoint {path}: architecture {given!r} is not supported; --arch takes: "
                         f"{_arch_choices()}")
    return given


def _detect(path: Path, blob: dict) -> str:
    """The architecture when the file does not name it: MACER's ``net`` or a SOME network, by their keys."""
    if "net" in blob and "state_dict" not in blob:
        return "macer_resnet110"
    state = blob.get("state_dict")
    if isinstance(state, dict):
        keys = [re.sub(r"^(module\.)?1\.(module\.)?", "", k) for k in state if isinstance(k, str)]
        if any(k.startswith("heads.") for k in keys):
            if any(k.startswith("layer3.") for k in keys):  # ImageNet: the trunk keeps layer3, heads get layer4
                return "some_resnet50"
            blocks = {k.split(".")[1] for k in keys if k.startswith("layer1.")}
            name = f"some_cifar_resnet{6 * len(blocks) + 2}"
            if name in ARCHITECTURES:
                return name
    raise ValueError(f"checkpoint {path} names no architecture (no 'arch' field); give --arch: {_arch_choices()}; "
                     "or --model-module pkg.mod:factory for your own class")


def _arch_choices() -> str:
    """What ``--arch`` takes: the published architectures, and the registered models (for a plain state dict)."""
    from art_some.plugins import registered

    return (f"a published architecture ({', '.join(published_architectures())}) or, for a state dict of its "
            f"weights, a registered model ({', '.join(sorted(registered('models')))})")


def _split_normalize(path: Path, state: dict):
    """The network's keys (under ``1.``) and, if the normalize layer has keys under ``0.``, its mean and std."""
    if not any(k.startswith(("1.", "module.1.")) for k in state):
        raise ValueError(f"checkpoint {path}: no key starts with '1.', so this is not a Sequential(NormalizeLayer, "
                         f"network) state dict (first keys: {', '.join(list(state)[:3])})")
    state = _strip(state, "module.")
    network = {k[2:]: v for k, v in state.items() if k.startswith("1.")}
    head = {k[2:]: v for k, v in state.items() if k.startswith("0.")}
    other = [k for k in state if not k.startswith(("0.", "1."))]
    if other:
        raise ValueError(f"checkpoint {path}: unexpected keys outside the normalize layer and the network: "
                         f"{_few(other)}")
    if not head:
        return network, None
    for mean_key, std_key in NORMALIZE_KEYS:
        if set(head) == {mean_key, std_key}:
            mean, std = head[mean_key].reshape(-1).tolist(), head[std_key].reshape(-1).tolist()
            return network, (mean, std)
        if set(head) == {mean_key}:  # a center layer
            return network, (head[mean_key].reshape(-1).tolist(), None)
    raise ValueError(f"checkpoint {path}: unexpected normalize-layer keys {_few(['0.' + k for k in head])}")


def _check_finite_tensors(path: Path, field: str, state: dict) -> None:
    """Refuse NaN or inf in any floating tensor of the file, naming the first few keys."""
    import torch

    bad = [key for key, tensor in state.items()
           if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise NonFiniteError(f"checkpoint {path}: field {field!r} has non-finite values in {_few(bad)}; refusing to "
                             "load it")


def _check_normalisation(path: Path, mean, std) -> None:
    """The normalize layer's statistics must be finite, and its standard deviations positive (they divide)."""
    import math

    if not all(math.isfinite(m) for m in mean) or not all(math.isfinite(s) and s > 0 for s in std):
        raise ValueError(f"checkpoint {path}: its normalize layer has mean {list(mean)} and std {list(std)}; the "
                         "means must be finite and the standard deviations finite and > 0")


def _strip(state: dict, prefix: str) -> dict:
    """Remove ``prefix`` from every key when all keys have it (a DataParallel wrapper)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


# SOME's module names -> art-some's MultiHeadNet (trunk = Sequential(conv, bn, relu, stage1, stage2); head =
# Sequential(stage3, pool, flatten, linear)).
SOME_RENAMES = ((r"^conv1\.", "trunk.0."), (r"^bn1\.", "trunk.1."), (r"^layer1\.", "trunk.3."),
                (r"^layer2\.", "trunk.4."), (r"^heads\.(\d+)\.0\.", r"heads.\1.0."),
                (r"^heads\.(\d+)\.1\.", r"heads.\1.3."))
# SOME's ImageNet ResNet-50 (torchvision's blocks, ``downsample`` kept) -> art-some's resnet50_multihead (trunk =
# Sequential(conv1, bn1, relu, maxpool, layer1, layer2, layer3); head = Sequential(layer4, avgpool, flatten, fc)).
SOME_R50_RENAMES = ((r"^conv1\.", "trunk.0."), (r"^bn1\.", "trunk.1."), (r"^layer1\.", "trunk.4."),
                    (r"^layer2\.", "trunk.5."), (r"^layer3\.", "trunk.6."), (r"^heads\.(\d+)\.0\.", r"heads.\1.0."),
                    (r"^heads\.(\d+)\.1\.", r"heads.\1.3."))


def _map_keys(state: dict, fmt: str, model_name: str) -> dict:
    """
    The authors' key names onto art-some's: ``downsample`` is ``shortcut`` in art-some's CIFAR basic blocks;
    ResNet-50 is torchvision's in both, keys unchanged.
    """
    if model_name == "resnet50":
        return dict(state)
    if fmt in ("cohen", "macer"):
        return {k.replace(".downsample.", ".shortcut."): v for k, v in state.items()}
    imagenet = model_name == "some_resnet50"
    mapped = {}
    for key, value in state.items():
        new = key if imagenet else key.replace(".downsample.", ".shortcut.")
        for pattern, replacement in SOME_R50_RENAMES if imagenet else SOME_RENAMES:
            new, count = re.subn(pattern, replacement, new)
            if count:
                break
        mapped[new] = value
    return mapped


def _shape_kwargs(path: Path, arch: str, fmt: str, state: dict):
    """``num_classes`` (and SOME's ``num_heads``) read off the weights."""
    if fmt == "some":
        heads = sorted({int(k.split(".")[1]) for k in state if k.startswith("heads.")})
        if not heads:
            raise ValueError(f"checkpoint {path}: no 'heads.<i>' keys for multi-head arch {arch!r}")
        fc = state.get("heads.0.3.weight")
        kwargs = {"num_heads": len(heads)}
    else:
        fc = state.get("fc.weight")
        kwargs = {}
    if fc is None or fc.dim() != 2:
        raise ValueError(f"checkpoint {path} does not match arch {arch!r}: missing its linear layer's weight "
                         f"({'1.heads.0.1.weight' if fmt == 'some' else 'fc.weight'})")
    return int(fc.shape[0]), kwargs


def _load_strict(path: Path, arch: str, model, state: dict) -> None:
    """All of the model's tensors from ``state`` with their shapes, or one line saying which keys differ."""
    from art_some.models.own import weight_differences

    expected = model.state_dict()
    differences = weight_differences(expected, state)
    if differences:
        raise ValueError(f"checkpoint {path} does not match arch {arch!r} (art-some key names): {differences}")
    full = {k: state.get(k, v) for k, v in expected.items()}
    model.load_state_dict(full)


def _few(keys, limit: int = 5) -> str:
    keys = list(keys)
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
