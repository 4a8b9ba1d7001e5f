"""Helpers for the course book on OOD detection and neural collapse.

Notebooks narrate and call; this package computes. One module per concern:
``config`` (profiles), ``data`` and ``synthetic`` (images), ``model`` (CIFAR ResNet-18),
``train`` and ``checkpoint`` (training), ``features`` (the one pass through the network),
``stats`` (class statistics), ``ood`` and ``metrics`` (OOD scores), ``collapse`` (NC1-NC5),
``plots`` (figures) and ``run`` (the papermill runner).
"""
