"""Tests for helpers.config: profiles, overrides and their checks, notebook globals, the run key."""

from __future__ import annotations

import math
import types

import pytest
import torch

from helpers import config


def test_profiles_have_their_documented_fields() -> None:
    smoke = config.make_config("smoke")
    assert (smoke.profile, smoke.id_dataset) == ("smoke", "synthetic")
    assert all(name.startswith("synthetic-") for name in smoke.ood_datasets)
    cpu = config.make_config("cpu")
    assert (cpu.profile, cpu.id_dataset, cpu.width) == ("cpu", "cifar100", 16)
    full = config.make_config("full")
    assert (full.profile, full.id_dataset, full.width, full.epochs) == ("full", "cifar100", 64, 200)
    assert (full.lr, full.momentum, full.nesterov, full.weight_decay, full.augment) == (0.1, 0.9, True, 5e-4, True)
    assert full.val_ood_dataset not in full.ood_datasets          # choosing on a test OOD set is not allowed


def test_smoke_penultimate_layer_admits_a_simplex_etf() -> None:
    """K class means span at most K - 1 dimensions; the simplex ETF needs D >= K - 1 (issue 14, point 2)."""
    from helpers.model import ResNet18

    smoke = config.make_config("smoke")
    D = ResNet18(smoke.num_classes, smoke.width).feature_dim
    assert D >= smoke.num_classes - 1
    assert smoke.num_classes >= 10                                   # still a many-class problem, not a toy


def test_smoke_training_stays_small() -> None:
    """The smoke book builds in about 90 s on 2 cores: bound its training work (images x epochs)."""
    smoke = config.make_config("smoke")
    assert smoke.num_classes * smoke.per_class * smoke.epochs <= 30_000
    assert smoke.num_classes * smoke.per_class * (1 - smoke.val_fraction) >= 4 * smoke.batch_size   # >= 4 steps


def test_auto_is_smoke_without_cuda_and_full_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config.choose_profile("auto")[0] == "smoke"
    assert config.make_config("auto").profile == "smoke"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Test GPU")
    profile, reason = config.choose_profile("auto")
    assert profile == "full" and "Test GPU" in reason
    assert config.choose_profile("cpu") == ("cpu", "asked for explicitly")


def test_unknown_profile_lists_the_profiles() -> None:
    with pytest.raises(ValueError, match=r"unknown profile 'gpu'; choose one of smoke, cpu, full, auto"):
        config.make_config("gpu")


def test_unknown_parameter_is_named_with_a_close_match() -> None:
    with pytest.raises(ValueError, match=r"unknown parameter 'epoch'; did you mean 'epochs'\?") as err:
        config.make_config("smoke", epoch=3)
    assert "\n" not in str(err.value) and "valid names:" in str(err.value)
    with pytest.raises(ValueError, match=r"unknown parameter 'zzz'; valid names: .*weight_decay") as err:
        config.make_config("smoke", zzz=1)
    assert "profile" not in str(err.value)                            # the profile is chosen, not overridden


def test_wrong_type_message_shows_a_value_that_would_work() -> None:
    with pytest.raises(ValueError, match=r"e\.g\. -p ood_datasets synthetic-digits,synthetic-near,"):
        config.make_config("smoke", ood_datasets=5)
    example = "synthetic-digits,synthetic-near"                        # the suggested spelling is accepted
    assert config.make_config("smoke", ood_datasets=example).ood_datasets == ("synthetic-digits", "synthetic-near")
    with pytest.raises(ValueError, match=rf"e\.g\. -p epochs {config.make_config('smoke').epochs}\.$"):
        config.make_config("smoke", epochs="ten")


@pytest.mark.parametrize("name, value, want", [
    ("epochs", "abc", "int"), ("epochs", 3.5, "int"), ("epochs", True, "int"), ("augment", 3, "bool"),
    ("augment", "yes", "bool"), ("lr", "fast", "float"), ("lr", False, "float"), ("id_dataset", 5, "str"),
    ("ood_datasets", 5, "tuple"), ("ood_datasets", ["svhn", 3], "tuple"),
])
def test_wrong_types_are_rejected(name: str, value: object, want: str) -> None:
    with pytest.raises(ValueError, match=rf"parameter '{name}' must be {want}, got {type(value).__name__}"):
        config.make_config("smoke", **{name: value})


def test_values_are_coerced_to_the_field_type() -> None:
    cfg = config.make_config("smoke", lr=1, ood_datasets="svhn, dtd", extra_ood=["imagefolder:/x"])
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0
    assert cfg.ood_datasets == ("svhn", "dtd") and cfg.extra_ood == ("imagefolder:/x",)


@pytest.mark.parametrize("name, value, message", [
    ("epochs", 0, "'epochs' must be positive"), ("batch_size", -8, "'batch_size' must be positive"),
    ("width", 0, "'width' must be positive"), ("val_fraction", 0.5, "val_fraction must lie in"),
    ("val_fraction", -0.1, "val_fraction must lie in"), ("lr", 0.0, "lr must be positive"),
    ("eval_batch_size", -1, "'eval_batch_size' must be 0 \\(auto\\) or positive"),
])
def test_out_of_range_values_are_rejected(name: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config.make_config("smoke", **{name: value})


def test_from_notebook_reads_injected_globals_and_ignores_the_rest() -> None:
    namespace = {"profile": "smoke", "seed": 3, "epochs": 2, "augment": True, "torch": torch, "_private": 1,
                 "In": ["x"], "Out": {}, "math": math, "f": lambda: 0}
    cfg = config.from_notebook(namespace)
    assert (cfg.profile, cfg.seed, cfg.epochs, cfg.augment) == ("smoke", 3, 2, True)


def test_from_notebook_rejects_an_unknown_global() -> None:
    with pytest.raises(ValueError, match=r"unknown parameter 'epoch'; did you mean 'epochs'"):
        config.from_notebook({"profile": "smoke", "seed": 0, "epoch": 3})


def test_from_notebook_resolves_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config.from_notebook({"profile": "auto", "seed": 0, "sys": types}).profile == "smoke"


@pytest.mark.parametrize("name, value", [
    ("epochs", 11), ("lr", 0.05), ("seed", 1), ("width", 16), ("augment", True), ("weight_decay", 0.0),
    ("num_classes", 10), ("per_class", 5), ("id_dataset", "cifar10"), ("batch_size", 32), ("nesterov", False),
])
def test_key_changes_with_training_fields(name: str, value: object) -> None:
    base = config.make_config("smoke")
    assert config.make_config("smoke", **{name: value}).key() != base.key()


@pytest.mark.parametrize("name, value", [
    ("device", "cpu"), ("eval_batch_size", 64), ("artifacts", "/tmp/elsewhere"), ("compile", True),
    ("ood_datasets", ("svhn",)), ("checkpoint_every", 7), ("data_root", "/tmp/data"),
    ("plain_epochs", 5),                                  # smoke trains unaugmented: plain epochs change nothing
])
def test_key_ignores_fields_that_do_not_change_the_weights(name: str, value: object) -> None:
    base = config.make_config("smoke")
    assert config.make_config("smoke", **{name: value}).key() == base.key()


def test_plain_epochs_change_the_key_only_of_an_augmented_training() -> None:
    augmented = config.make_config("cpu")
    assert augmented.augment and augmented.plain_epochs
    assert config.make_config("cpu", plain_epochs=0).key() != augmented.key()
    assert config.make_config("cpu", augment=False).key() == config.make_config("cpu", augment=False,
                                                                                plain_epochs=0).key()


def test_run_dir_lives_under_artifacts_and_names_profile_seed_and_key(tmp_path) -> None:
    cfg = config.make_config("smoke", seed=4, artifacts=str(tmp_path))
    assert cfg.run_dir() == tmp_path / f"smoke-synthetic-s4-{cfg.key()}"
    folder = config.make_config("smoke", id_dataset="imagefolder:/data/my/pets/", artifacts=str(tmp_path))
    assert "/" not in folder.run_dir().name and folder.run_dir().parent == tmp_path


def test_config_is_frozen() -> None:
    cfg = config.make_config("smoke")
    with pytest.raises(AttributeError):
        cfg.epochs = 5  # type: ignore[misc]


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config.resolve_device(config.make_config("smoke")) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"device 'cuda' asked for but CUDA is not available"):
        config.resolve_device(config.make_config("smoke", device="cuda"))
