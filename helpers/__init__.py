"""Helpers for the course book on OOD detection and neural collapse.

Notebooks narrate and call; this package computes. One module per concern, each importing only the layers
below it:

1. ``config`` (profiles) and ``artifacts`` (a run's paths, snapshots, the one atomic write);
2. ``data`` and ``synthetic`` (images; ``data.prepare`` is the one step that decodes or downloads), ``device``,
   ``model`` (CIFAR ResNet-18), ``train`` and ``checkpoint``;
3. ``features``: the one pass through the network and its cache;
4. pure functions on cached tensors: ``stats`` (class statistics), ``ood`` (the scores, registry
   ``ood.SCORES``), ``metrics`` (AUROC, FPR95, bootstrap), ``collapse`` (NC1-NC5) and ``protocol`` (the OOD
   evaluation protocol: fit every score, choose KNN's k on held-out data, summarise);
5. ``sweep``: the one loop over checkpoints and layers, behind notebooks 02-05;
6. output: ``plots`` (figures), ``report`` (a run's metrics JSON and figures), ``results`` (snapshots and
   the Results chapter);
7. command lines: ``run`` (the papermill runner) and ``evaluate`` (a snapshot against any OOD set).

A notebook starts with ``cfg, splits, device = helpers.setup(globals())``.
"""

from __future__ import annotations

from typing import Any


def setup(namespace: dict[str, Any]):
    """A notebook's setup: config from its parameters, data prepared and loaded, device; prints the plan.

    Returns ``(cfg, splits, device)``: the :class:`helpers.config.Config` built from the notebook's globals
    (``config.from_notebook``), the ID splits (``data.id_splits``, after ``data.prepare`` decoded any real set
    that is not prepared yet) and the device (``device.resolve_device``).
    """
    from . import colab, config, data
    from .device import resolve_device

    cfg = config.from_notebook(namespace)
    device = resolve_device(cfg)
    data.prepare(cfg, quiet=True)
    splits = data.id_splits(cfg)
    print(f"profile {cfg.profile} ({config.choose_profile(namespace.get('profile', 'auto'))[1]}) on {device}; "
          f"artifacts in {cfg.run_dir()}")
    print(f"ID set {cfg.id_dataset}: {splits.num_classes} classes, {len(splits.train)} train / {len(splits.val)} "
          f"val / {len(splits.test)} test images; network: width {cfg.width}, {cfg.epochs} epochs, batch "
          f"{cfg.batch_size}, lr {cfg.lr}, weight decay {cfg.weight_decay}, augmentation "
          f"{'on' if cfg.augment else 'off'}" + (f" (last {cfg.plain_epochs} epochs plain)"
                                                 if cfg.augment and cfg.plain_epochs else ""))
    print(colab.training_plan(cfg, device))
    return cfg, splits, device
