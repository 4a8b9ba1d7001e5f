"""Bring your own model: load any image classifier, find its linear head, and read its penultimate features.

``python -m helpers.evaluate --model SPEC`` accepts three kinds of SPEC:

* ``torchvision:NAME`` with ``--weights PATH``: a torchvision architecture and a state dict; the number of
  classes K is read from the last 2-D ``*.weight`` tensor of the state dict (the classifier's W, (K, D));
* ``torchscript:PATH``: a scripted or traced model whose output is its linear head's output;
* ``helpers:PATH``: a checkpoint of this project (``artifacts/.../checkpoints/epoch-*.pt``).

The head is the linear layer that maps the penultimate features h (N, D) to the logits z = W h + b (N, K);
it is found among :data:`HEADS` (``fc``, the last layer of ``classifier``, ``heads.head``, ``head``) or named
with ``--feature-layer``. :func:`extract` is the inference loop of this route (as
:func:`helpers.features.extract` is for the project's own network): one pass in batches, h captured by a
forward hook on the head, so scores and collapse metrics then take cached tensors and never call the model.
Every bad input raises :class:`ModelError` with one line that says what to do.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import SIZE, ImageSet, normalize
from .features import Features
from .progress import progress_bar

KINDS = ("torchvision", "torchscript", "helpers")
HEADS = ("fc", "classifier", "heads.head", "head")        # where the usual architectures keep their classifier


class ModelError(ValueError):
    """A model, its weights, its head or a feature layer cannot be used; the message says what to do."""


@dataclass
class Loaded:
    """A model in eval mode, what it was loaded from, and the checkpoint's run configuration (``helpers:`` only)."""

    model: nn.Module
    spec: str
    config: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------------- loading
def load_model(spec: str, weights: Path | None = None, device: torch.device | str = "cpu") -> Loaded:
    """The model named by ``spec`` (see the module docstring), in eval mode on ``device``."""
    kind, _, rest = spec.partition(":")
    if kind not in KINDS or not rest:
        raise ModelError(f"model {spec!r} is not of the form KIND:NAME; use torchvision:NAME --weights PATH, "
                         "torchscript:PATH or helpers:PATH.")
    if kind != "torchvision" and weights is not None:
        raise ModelError(f"--weights is only for torchvision models; {kind}:PATH already holds its weights.")
    loader = {"torchvision": lambda: _torchvision(rest, weights), "torchscript": lambda: _torchscript(Path(rest)),
              "helpers": lambda: _helpers(Path(rest))}[kind]
    loaded = loader()
    loaded.spec = spec
    loaded.model = loaded.model.to(device).eval()
    return loaded


def _read_state(path: Path | None) -> dict[str, Tensor]:
    """A state dict from ``path``: a plain one, or one under ``state_dict``/``model``; DataParallel's ``module.``
    prefix is dropped."""
    if path is None:
        raise ModelError("a torchvision model needs its weights; pass --weights PATH (a state dict saved with "
                         "torch.save(model.state_dict(), PATH)).")
    if not Path(path).is_file():
        raise ModelError(f"weights file {path} does not exist; pass --weights PATH of a saved state dict.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickles, truncated zips, text files: all mean "not a state dict"
        raise ModelError(f"cannot read weights {path} ({type(err).__name__}); save them with "
                         "torch.save(model.state_dict(), PATH).") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelError(f"{path} does not hold a state dict of tensors; save torch.save(model.state_dict(), PATH).")
    return {k.removeprefix("module."): v for k, v in state.items()}


def num_classes_of(state: dict[str, Tensor]) -> int:
    """K, the rows of the last 2-D ``*.weight`` tensor of a state dict (the classifier's W, (K, D))."""
    last = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    if not last:
        raise ModelError("the weights hold no linear layer (no 2-D '*.weight' tensor), so the number of classes "
                         "cannot be read; pass the state dict of a classifier.")
    return int(last[-1].shape[0])


def _torchvision(name: str, weights: Path | None) -> Loaded:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise ModelError(f"unknown torchvision architecture {name!r}; use one of "
                         f"torchvision.models.list_models(), e.g. {', '.join(sorted(known)[:6])}, ...")
    state = _read_state(weights)
    K = num_classes_of(state)
    model = torchvision.models.get_model(name, weights=None, num_classes=K)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()] or [str(err)]
        raise ModelError(f"weights {weights} do not fit torchvision {name} with {K} classes ({lines[0][:200]}); "
                         "pass the state dict of this architecture.") from None
    return Loaded(model, f"torchvision:{name}")


def _torchscript(path: Path) -> Loaded:
    if not path.is_file():
        raise ModelError(f"TorchScript file {path} does not exist; save one with torch.jit.save(scripted, PATH).")
    try:
        return Loaded(torch.jit.load(str(path), map_location="cpu"), f"torchscript:{path}")
    except Exception as err:  # noqa: BLE001 - any failure means the file is not TorchScript
        raise ModelError(f"{path} is not a TorchScript model ({type(err).__name__}); save one with "
                         "torch.jit.save(torch.jit.script(model), PATH), or use torchvision:NAME --weights.") from None


def _helpers(path: Path) -> Loaded:
    from .checkpoint import load
    from .model import build_model

    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist; pass helpers:PATH of an epoch-*.pt of this project.")
    blob = load(path)
    model = build_model(blob["num_classes"], blob["config"]["width"])
    model.load_state_dict(blob["model"])
    return Loaded(model, f"helpers:{path}", dict(blob["config"]))


# ------------------------------------------------------------------------------------------------ head
def _is_linear(m: nn.Module) -> bool:
    """An ``nn.Linear``, eager or scripted."""
    return isinstance(m, nn.Linear) or getattr(m, "original_name", "") == "Linear"


def _module(model: nn.Module, name: str) -> nn.Module | None:
    """The submodule at dotted ``name`` (``classifier.1``), eager or scripted (which has no ``get_submodule``)."""
    m: Any = model
    for part in name.split("."):
        m = getattr(m, part, None)
        if not isinstance(m, nn.Module):
            return None
    return m


def linear_layers(model: nn.Module) -> list[str]:
    """Names of every linear layer of ``model``, in definition order."""
    return [n for n, m in model.named_modules() if n and _is_linear(m)]


def find_head(model: nn.Module) -> str:
    """Name of the linear head: the first of :data:`HEADS` that is a linear layer, or whose last child is one
    (``classifier[-1]`` of VGG, AlexNet, MobileNet, EfficientNet)."""
    for name in HEADS:
        m = _module(model, name)
        if m is not None and _is_linear(m):
            return name
        children = list(m.named_children()) if m is not None else []
        if children and _is_linear(children[-1][1]):
            return f"{name}.{children[-1][0]}"
    found = linear_layers(model)
    hint = f" (its linear layers: {', '.join(found[-4:])})" if found else " (it has no linear layer)"
    raise ModelError(f"no linear head found in {type(model).__name__}: none of fc, classifier[-1], heads.head, "
                     f"head is a linear layer{hint}; pass --feature-layer NAME.")


@dataclass
class Head:
    """Where the features are read and the classifier that maps them to the logits: z = W h + b."""

    head: str                    # the linear head's module name
    feature: str                 # the module whose input (the head) or flattened output (any other) is h
    W: Tensor                    # (K, D)
    b: Tensor                    # (K,)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.W.shape)


def resolve_head(model: nn.Module, feature_layer: str | None = None) -> Head:
    """The head found by :func:`find_head`, or ``feature_layer`` when it names a linear layer; a non-linear
    ``feature_layer`` is read as the features h (its output, flattened) in front of the found head."""
    if feature_layer is not None and _module(model, feature_layer) is None:
        names = [n for n, _ in model.named_modules() if n]
        raise ModelError(f"--feature-layer {feature_layer!r} is not a module of {type(model).__name__}; use one "
                         f"of its module names, e.g. {', '.join(names[-5:])}.")
    if feature_layer is not None and _is_linear(_module(model, feature_layer)):
        head = feature_layer
    else:
        head = find_head(model)
    lin = _module(model, head)
    b = lin.bias if lin.bias is not None else torch.zeros(lin.weight.shape[0])
    return Head(head, feature_layer or head, lin.weight.detach().float().cpu(), b.detach().float().cpu())


# -------------------------------------------------------------------------------------------- features
@contextmanager
def _hooks(model: nn.Module, head: Head, store: dict[str, Any]):
    """Forward hooks that put h (the head's input, or the feature layer's flattened output) and the head's
    output z into ``store``; removed on exit."""
    take_input = head.feature == head.head

    def on_feature(_m: nn.Module, args: tuple, out: Tensor) -> None:
        store["h"] = (args[0] if take_input else out).flatten(1).float()

    def on_head(_m: nn.Module, _args: tuple, out: Tensor) -> None:
        store["z"] = out.float()

    handles = [_module(model, head.feature).register_forward_hook(on_feature),
               _module(model, head.head).register_forward_hook(on_head)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _scripted(model: nn.Module, head: Head, store: dict[str, Any]):
    """TorchScript takes no Python hooks: the head's W and b are swapped for the identity (D, D) and zeros,
    so the model's output is h; z = W h + b is computed here. ``store["original"]`` runs the unchanged model
    (for the first batch's check). Restored on exit."""
    if head.feature != head.head:
        raise ModelError("a TorchScript model's features are read at its linear head; pass --feature-layer with the "
                         "head's name (or none).")
    lin = _module(model, head.head)
    W, b = lin.weight, lin.bias
    eye = torch.eye(W.shape[1], dtype=W.dtype, device=W.device)              # (D, D)
    zeros = torch.zeros(W.shape[1], dtype=W.dtype, device=W.device)          # (D,)

    def original(x: Tensor) -> Tensor:
        lin.weight, lin.bias = W, b
        try:
            return model(x)
        finally:
            lin.weight, lin.bias = eye, zeros

    lin.weight, lin.bias, store["original"] = eye, zeros, original
    try:
        yield
    finally:
        lin.weight, lin.bias = W, b


def _batch(model: nn.Module, head: Head, x: Tensor, store: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """(z, h) of one normalised batch, float32; the first batch is checked by :func:`check_logits` against
    the model's own output (TorchScript) or the head's output (hooks)."""
    out = model(x)
    if "original" in store:
        h = out.flatten(1).float()                                      # (B, D)
        z = F.linear(h, head.W.to(h.device), head.b.to(h.device))      # (B, K)
        seen = store["original"](x).float() if "checked" not in store else z
    else:
        z, h = store["z"], store["h"]
        seen = z
    if "checked" not in store:
        check_logits(seen, h, head)
        store["checked"] = True
    return z, h


def check_logits(z: Tensor, h: Tensor, head: Head) -> None:
    """Refuse features h that do not give the logits: z must equal W h + b (a head that is not the last step,
    or a feature layer that is not right before the head)."""
    if h.shape[1] != head.W.shape[1]:
        raise ModelError(f"features of {head.feature!r} have D={h.shape[1]} but head {head.head!r} takes "
                         f"D={head.W.shape[1]}; pass --feature-layer with the layer right before the head.")
    expected = F.linear(h.cpu(), head.W, head.b)                        # (B, K)
    if expected.shape != z.shape or not torch.allclose(expected, z.cpu(), rtol=1e-3, atol=1e-3 * (1 + z.abs().max())):
        raise ModelError(f"the logits are not W h + b of head {head.head!r} and the features of {head.feature!r}; "
                         "pass --feature-layer with the linear layer that produces the model's output.")


@torch.no_grad()
def extract(model: nn.Module, head: Head, ds: ImageSet, mean: Tensor, std: Tensor, device: torch.device,
            batch_size: int = 256, image_size: int = SIZE, progress: bool = True) -> Features:
    """One pass of ``model`` over ``ds`` in batches: logits z (N, K) and features h (N, D), float32 on the CPU.

    Images (uint8, 32×32) are normalised, (x/255 - mean)/std, and resized on the fly to ``image_size``
    (bilinear) when it is not 32; the first batch checks z = W h + b (:func:`check_logits`).
    """
    store: dict[str, Any] = {}
    scripted = isinstance(model, torch.jit.ScriptModule)
    outs: list[tuple[Tensor, Tensor]] = []
    with (_scripted if scripted else _hooks)(model, head, store):
        for start in progress_bar(range(0, len(ds), batch_size), desc=f"features {ds.name}", disable=not progress,
                                  leave=False):
            x = normalize(ds.images[start:start + batch_size].to(device), mean, std)   # (B, 3, 32, 32)
            if image_size != SIZE:
                x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
            z, h = _batch(model, head, x, store)
            outs.append((z.cpu(), h.cpu()))
    return Features(torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs]), ds.labels.clone())


def extract_all(model: nn.Module, head: Head, sets: dict[str, ImageSet], mean: Tensor, std: Tensor,
                device: torch.device, batch_size: int = 256, image_size: int = SIZE,
                progress: bool = True) -> dict[str, Features]:
    """:func:`extract` of every named set, after :func:`check_memory` on their total size."""
    check_memory(sum(len(ds) for ds in sets.values()), *reversed(head.shape))
    return {name: extract(model, head, ds, mean, std, device, batch_size, image_size, progress)
            for name, ds in sets.items()}


# ---------------------------------------------------------------------------------------------- memory
def available_memory() -> int:
    """Bytes of memory available to this process now (psutil's ``available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(n: int, D: int, K: int, available: int | None = None) -> int:
    """Refuse features that would not fit: N (D + K) float32 values must take at most half the free memory.

    Returns the bytes needed; raises :class:`ModelError` naming ``--subset`` and ``--batch-size`` otherwise.
    """
    need = 4 * n * (D + K)
    free = available_memory() if available is None else available
    if need > free // 2:
        fits = max(1, free // 2 // (4 * (D + K)))
        raise ModelError(f"the features of {n:,} images (D={D}, K={K}) need {need / 1e9:.1f} GB, more than half of "
                         f"the {free / 1e9:.1f} GB free; pass --subset N (OOD images per set) and --train-subset N "
                         f"(about {fits:,} images in all fit), a smaller --batch-size, or fewer --ood sets.")
    return need
