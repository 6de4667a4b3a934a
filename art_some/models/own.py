"""
A researcher's own model: the weights of a plain ``torch.save(model.state_dict(), FILE)`` (or a safetensors file
of them, or ``{"state_dict": ...}``) in a registered architecture (``--arch NAME``) or in a class of their own
(``--model-module pkg.mod:factory``, or ``path/to/file.py:factory``).

Files are read as tensors only (``weights_only=True``, safetensors); the user's module is imported only when they
name it. A model trained by ``art-some train`` from ``--model-module`` records the reference in its checkpoint, and
loading that checkpoint asks for the same ``--model-module`` rather than importing code a file names.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path

# What every checkpoint error ends with: the formats that load.
FORMATS = ("a file of art_some.models.save_checkpoint(path, model, NAME, {'num_classes': N}) (what art-some train "
           "writes), or torch.save(model.state_dict(), FILE) with --arch NAME (a registered model) or --model-module "
           "pkg.mod:factory (your own class)")


def resolve_factory(ref: str):
    """
    The class or function ``ref`` names: ``pkg.mod:attr`` (imported from ``sys.path``, i.e. PYTHONPATH and the
    current folder) or ``path/to/file.py:attr``.

    :raises ValueError: one line naming ``--model-module`` and what went wrong (no colon, import error, no attr).
    """
    module_ref, sep, attr = str(ref).rpartition(":")
    if not sep or not module_ref or not attr.isidentifier():
        raise ValueError(f"--model-module must look like pkg.mod:factory or path/to/file.py:factory, got {ref!r}")
    try:
        if module_ref.endswith(".py"):
            path = Path(module_ref)
            if not path.is_file():
                raise FileNotFoundError(f"no such file: {path}")
            name = f"art_some_user_model_{abs(hash(str(path.resolve())))}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses and pickling look their module up there
            spec.loader.exec_module(module)
        else:
            if str(Path.cwd()) not in sys.path and "" not in sys.path:
                sys.path.insert(0, str(Path.cwd()))  # python -m puts the current folder first; the console script not
            module = importlib.import_module(module_ref)
    except Exception as err:
        raise ValueError(f"--model-module {ref}: cannot import {module_ref} ({type(err).__name__}: {err}); give a "
                         "module on PYTHONPATH (pkg.mod:factory) or a file (path/to/file.py:factory)") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"--model-module {ref}: {module_ref} has no class or function {attr!r}")
    return factory


def build(constructor, name: str, *, num_classes: int | None = None, in_channels: int | None = None,
          kwargs: dict | None = None):
    """
    ``constructor(**kwargs)``, adding ``num_classes`` and ``in_channels`` (the data's) where it takes them and
    ``kwargs`` does not give them: ``(model, the arguments it was built with)``.
    """
    import torch

    kwargs = dict(kwargs or {})
    try:
        params = inspect.signature(constructor).parameters
    except (TypeError, ValueError):
        params = {}
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if value is not None and key not in kwargs and key in params:
            kwargs[key] = int(value)
    try:
        model = constructor(**kwargs)
    except Exception as err:
        raise ValueError(f"{name} cannot be built with {kwargs or 'no arguments'} ({type(err).__name__}: {err})") \
            from None
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"{name} returned a {type(model).__name__}, not a torch.nn.Module")
    return model, kwargs


def read_state_dict(path: str | os.PathLike, device: str = "cpu") -> dict:
    """
    The tensors of a weights file: a torch file holding a state dict (or ``{"state_dict": ...}`` / MACER's
    ``{"net": ...}``), or a safetensors file; a ``module.`` prefix on every key (DataParallel) is removed.

    :raises ValueError: naming the file, for anything that is not a mapping of names to tensors.
    """
    import torch

    from art_some.models.published import torch_load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device=device)
        except Exception as err:
            raise ValueError(f"checkpoint {path} is not a readable safetensors file ({err})") from None
    else:
        state = torch_load(path, map_location=device)
        if isinstance(state, dict):
            state = next((state[k] for k in ("state_dict", "net", "model") if isinstance(state.get(k), dict)), state)
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f"checkpoint {path} is not a state dict (a mapping of names to tensors); save "
                         "torch.save(model.state_dict(), FILE)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model, state: dict, path, name: str, built: str = "") -> None:
    """
    All of ``model``'s tensors from ``state``, or one line naming the keys that differ and what to pass.

    :param built: What the model was built with from the data (e.g. ``in_channels=3``), for the message.
    """
    differences = weight_differences(model.state_dict(), state)
    if differences:
        made = f" (built with {built} from the data: --channels and --resize set its inputs)" if built else ""
        raise ValueError(f"checkpoint {path} does not hold the weights of {name}{made}: {differences}; give the "
                         "--arch or --model-module the weights were saved from")
    model.load_state_dict({k: state.get(k, v) for k, v in model.state_dict().items()})


def weight_differences(expected: dict, state: dict) -> str:
    """
    The keys of ``state`` that do not fit a model's ``expected`` state dict, in words ("" when all fit). BatchNorm's
    ``num_batches_tracked`` may be missing: it does not change an eval-mode forward pass, and old files lack it.
    """
    from art_some.models.published import _few

    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    misshapen = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                 if k in state and tuple(state[k].shape) != tuple(v.shape)]
    return "; ".join(f"{label} {_few(keys)}" for label, keys in
                     (("missing keys", missing), ("unexpected keys", unexpected), ("misshapen", misshapen)) if keys)


def load_own(path, *, arch: str | None = None, model_module: str | None = None, num_classes: int | None = None,
             in_channels: int | None = None, device: str = "cpu", model_kwargs: dict | None = None):
    """
    A model of a registered architecture (``arch``) or of the user's ``model_module``, with the weights of
    ``path`` (randomly initialised when ``path`` is None): ``(model, meta)``, meta as a checkpoint's (``model``,
    ``model_kwargs``; ``model_module`` for the user's own), so that ``art-some train`` saves it like any other.
    """
    from art_some.models import check_finite_weights
    from art_some.plugins import registered

    if model_module is not None:
        constructor, name = resolve_factory(model_module), f"--model-module {model_module}"
    else:
        models = registered("models")
        if arch not in models:
            raise ValueError(f"--arch {arch!r} is not a registered model ({', '.join(sorted(models))})")
        constructor, name = models[arch], f"--arch {arch}"
    model, kwargs = build(constructor, name, num_classes=num_classes, in_channels=in_channels, kwargs=model_kwargs)
    meta = {"model": model_module or arch, "model_kwargs": kwargs}
    if model_module is not None:
        meta["model_module"] = model_module
    if path is not None:
        built = ", ".join(f"{k}={kwargs[k]}" for k in ("num_classes", "in_channels")
                          if k in kwargs and k not in (model_kwargs or {}))
        load_weights(model, read_state_dict(path, device), path, name, built)
        check_finite_weights(model, f"checkpoint {path}")
    return model.to(device).eval(), meta

