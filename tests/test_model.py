"""Tests for helpers.model: the CIFAR ResNet-18's sizes, its block outputs and its parameter count."""

from __future__ import annotations

import pytest
import torch

from helpers.model import ResNet18, build_model

K = 7


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("width", [4, 8, 16, 64])
def test_feature_and_logit_sizes(width: int, images: torch.Tensor) -> None:
    model = build_model(K, width).eval()
    with torch.no_grad():
        out = model.run(images, blocks=True)
    assert model.feature_dim == 8 * width
    assert out.features.shape == (2, 8 * width) and out.logits.shape == (2, K)
    assert [b.shape for b in out.blocks] == [(2, c) for c in [width, width, 2 * width, 2 * width, 4 * width,
                                                               4 * width, 8 * width, 8 * width]]
    assert model.block_dims == [width, width, 2 * width, 2 * width, 4 * width, 4 * width, 8 * width, 8 * width]
    assert torch.equal(out.blocks[-1], out.features)                   # the last block, pooled, is h
    assert model.fc.weight.shape == (K, 8 * width)


def test_forward_is_the_logits_of_run_and_blocks_are_optional(images: torch.Tensor) -> None:
    model = build_model(K, 4).eval()
    with torch.no_grad():
        out = model.run(images)
        assert out.blocks is None
        assert torch.equal(model(images), out.logits)
        assert torch.allclose(out.logits, out.features @ model.fc.weight.T + model.fc.bias)


def test_cifar_stem_keeps_the_resolution_into_the_first_stage(images: torch.Tensor) -> None:
    model = build_model(K, 4).eval()
    sizes, x = [], model.stem(images)
    assert x.shape[-2:] == (32, 32)
    with torch.no_grad():
        for block in model.blocks:
            x = block(x)
            sizes.append(x.shape[-1])
    assert sizes == [32, 32, 16, 16, 8, 8, 4, 4]


def test_parameter_count_of_the_standard_resnet18() -> None:
    """Width 64 with 10 classes is the usual CIFAR ResNet-18: 11,173,962 parameters (He et al., 2016)."""
    model = ResNet18(num_classes=10, width=64)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
