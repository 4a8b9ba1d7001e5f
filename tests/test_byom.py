"""Bring your own model (``helpers.own_model`` and ``python -m helpers.evaluate --model``): loading, head detection,
feature hooks with known answers, and the one-line errors of every bad input. Everything is tiny: a randomly
initialised torchvision ResNet-18 on a 10-class image folder of 32x32 images made here."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

from helpers import data, evaluate, html_report, own_model
from helpers.data import ImageSet
from helpers.ood import SCORES

from .browser import chromium, render

CPU = torch.device("cpu")
MEAN, STD = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])


def _images(folder, n, rng, size=32):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def byom(tmp_path_factory):
    """(root, weights of a random resnet18 with 10 classes, ID folder with train/ and test/, an OOD folder)."""
    root = tmp_path_factory.mktemp("byom")
    rng = np.random.default_rng(0)
    for c in range(10):
        _images(root / "id" / "train" / f"c{c}", 3, rng)
        _images(root / "id" / "test" / f"c{c}", 2, rng)
    _images(root / "ood" / "x", 12, rng, size=40)
    _images(root / "val" / "x", 8, rng)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), root / "r18.pt")
    return root


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def _set(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ImageSet("t", torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8), torch.arange(n) % 3, [])


# ------------------------------------------------------------------------------------------- heads
class WithHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 8), nn.ReLU())
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(8, 3)))

    def forward(self, x):
        return self.heads(self.body(x))


class WithClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(4, 3))

    def forward(self, x):
        return self.classifier(self.features(x))


class NoHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


@pytest.mark.parametrize("model, name", [(lambda: torchvision.models.resnet18(num_classes=4), "fc"),
                                         (WithClassifier, "classifier.1"), (WithHeads, "heads.head")])
def test_head_is_found_for_the_usual_layouts(model, name):
    assert own_model.find_head(model()) == name


def test_no_linear_head_is_one_line():
    with pytest.raises(own_model.ModelError, match="no linear head found in NoHead") as err:
        own_model.resolve_head(NoHead())
    assert "\n" not in str(err.value) and "--feature-layer" in str(err.value)


def test_features_are_the_heads_input_and_logits_its_output():
    """Known answer: h = ReLU(A x), z = B h + c for a two-layer network, x normalised as (x/255 - mean)/std."""
    torch.manual_seed(1)
    model = WithHeads().eval()
    ds = _set()
    f = own_model.extract(model, own_model.resolve_head(model), ds, MEAN, STD, CPU, batch_size=4, progress=False)
    x = data.normalize(ds.images, MEAN, STD)
    with torch.no_grad():
        h = model.body(x)
        torch.testing.assert_close(f.features, h)
        torch.testing.assert_close(f.logits, model(x))
    assert torch.equal(f.labels, ds.labels)


def test_image_size_resizes_each_batch():
    torch.manual_seed(2)
    model = WithClassifier().eval()
    seen = []
    model.features.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape[-2:])))
    ds = _set(5)
    f = own_model.extract(model, own_model.resolve_head(model), ds, MEAN, STD, CPU, batch_size=2, image_size=48,
                          progress=False)
    assert set(seen) == {(48, 48)} and len(seen) == 3
    x = F.interpolate(data.normalize(ds.images, MEAN, STD), size=(48, 48), mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(f.features, model.features(x))


def test_feature_layer_before_the_head_gives_the_same_features(resnet):
    ds = _set(4)
    auto = own_model.extract(resnet, own_model.resolve_head(resnet), ds, MEAN, STD, CPU, progress=False)
    pool = own_model.resolve_head(resnet, "avgpool")
    assert (pool.head, pool.feature) == ("fc", "avgpool")
    named = own_model.extract(resnet, pool, ds, MEAN, STD, CPU, progress=False)
    torch.testing.assert_close(named.features, auto.features)
    torch.testing.assert_close(named.logits, auto.logits)


@pytest.mark.parametrize("layer, message", [("nope", "--feature-layer 'nope' is not a module of ResNet"),
                                            ("layer3", "features of 'layer3' have D=1024 but head 'fc' takes D=512")])
def test_bad_feature_layer_is_one_line(resnet, layer, message):
    with pytest.raises(own_model.ModelError, match=message) as err:
        own_model.extract(resnet, own_model.resolve_head(resnet, layer), _set(2), MEAN, STD, CPU, progress=False)
    assert "\n" not in str(err.value)


def test_torchscript_features_equal_the_eager_ones(resnet, tmp_path):
    ds = _set(4)
    eager = own_model.extract(resnet, own_model.resolve_head(resnet), ds, MEAN, STD, CPU, progress=False)
    torch.jit.save(torch.jit.script(resnet), tmp_path / "m.pt")
    loaded = own_model.load_model(f"torchscript:{tmp_path / 'm.pt'}")
    head = own_model.resolve_head(loaded.model)
    scripted = own_model.extract(loaded.model, head, ds, MEAN, STD, CPU, progress=False)
    torch.testing.assert_close(scripted.features, eager.features, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(scripted.logits, eager.logits, rtol=1e-4, atol=1e-4)
    assert loaded.model.fc.weight.shape == (10, 512)                 # the head's weights are restored


def test_torchscript_whose_output_is_not_the_head_is_refused(tmp_path):
    torch.manual_seed(3)
    model = nn.Sequential(OrderedDict(flat=nn.Flatten(), fc=nn.Linear(3 * 32 * 32, 3), soft=nn.Softmax(1))).eval()
    torch.jit.save(torch.jit.script(model), tmp_path / "soft.pt")
    loaded = own_model.load_model(f"torchscript:{tmp_path / 'soft.pt'}")
    with pytest.raises(own_model.ModelError, match="the logits are not W h \\+ b of head 'fc'"):
        own_model.extract(loaded.model, own_model.resolve_head(loaded.model), _set(2), MEAN, STD, CPU, progress=False)


# ------------------------------------------------------------------------------------------ memory
def test_memory_estimate_is_n_times_d_plus_k_floats():
    assert own_model.check_memory(1000, 512, 10, available=10**9) == 4 * 1000 * 522
    with pytest.raises(own_model.ModelError, match="more than half of the 0.0 GB free"):
        own_model.check_memory(1000, 512, 10, available=3 * 10**6)  # fits in memory, but not in half of it
    fits = r"need 2\.1 GB.*--subset N .*--train-subset N \(about 95,785 images in all fit\)"
    with pytest.raises(own_model.ModelError, match=fits):
        own_model.check_memory(1_000_000, 512, 10, available=4 * 10**8)


# --------------------------------------------------------------------------------------- loading
def test_num_classes_is_read_from_the_last_linear_layer():
    state = torchvision.models.mobilenet_v3_small(num_classes=7).state_dict()
    assert own_model.num_classes_of(state) == 7
    with pytest.raises(own_model.ModelError, match="no linear layer"):
        own_model.num_classes_of({"conv.weight": torch.zeros(3, 3, 1, 1)})


@pytest.mark.parametrize("spec, weights, message", [
    ("torchvision:resnet_nope", "r18.pt", "unknown torchvision architecture 'resnet_nope'; use one of"),
    ("torchvision:resnet34", "r18.pt", "weights R do not fit torchvision resnet34 with 10 classes ("),
    ("torchvision:resnet18", "bad.pt", "weights R do not fit torchvision resnet18 with 10 classes (size mismatch"),
    ("torchvision:resnet18", None, "a torchvision model needs its weights; pass --weights PATH"),
    ("keras:model.h5", None, "model 'keras:model.h5' is not of the form KIND:NAME"),
    ("torchscript:nowhere.pt", None, "TorchScript file nowhere.pt does not exist"),
    ("torchscript:r18.pt", None, "R is not a TorchScript model"),
])
def test_bad_models_give_one_line(byom, capsys, spec, weights, message):
    state = torch.load(byom / "r18.pt", weights_only=True)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)        # weights of another shape
    torch.save(state, byom / "bad.pt")
    spec = spec.replace("r18.pt", str(byom / "r18.pt"))
    argv = ["--model", spec, "--id", f"imagefolder:{byom / 'id'}", "--ood", f"imagefolder:{byom / 'ood'}"]
    argv += ["--weights", str(byom / weights)] if weights else []
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    expected = "error: " + message.replace("R", str(byom / (weights or "r18.pt")))
    assert err.startswith(expected) and err.count("\n") == 1, err


@pytest.mark.parametrize("what, message", [
    ("no-train", "ID folder {D} has no train/; an ID set needs PATH/train/<class>/*"),
    ("classes", "the ID set has 10 classes but the model's head has K=5 outputs"),
    ("no-head", "no linear head found in"),
])
def test_bad_id_sets_and_heads_give_one_line(byom, tmp_path, capsys, what, message):
    weights = byom / "r18.pt"
    if what == "classes":
        torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), weights := tmp_path / "r5.pt")
    model = "torchvision:resnet18"
    if what == "no-head":
        torch.jit.save(torch.jit.script(NoHead()), tmp_path / "nohead.pt")
        model, weights = f"torchscript:{tmp_path / 'nohead.pt'}", None
    folder = tmp_path / "flat" if what == "no-train" else byom / "id"
    _images(folder / "test" / "c0", 1, np.random.default_rng(1)) if what == "no-train" else None
    argv = ["--model", model, "--id", f"imagefolder:{folder}", "--ood", f"imagefolder:{byom / 'ood'}",
            "--val-ood", f"imagefolder:{byom / 'val'}", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path)]
    assert evaluate.main(argv + (["--weights", str(weights)] if weights else [])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.replace("{D}", str(folder))) and err.count("\n") == 1, err
    assert not (tmp_path / "report.json").exists()


# ------------------------------------------------------------------------------------- end to end
def test_random_resnet18_on_an_image_folder_end_to_end(byom, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["--model", "torchvision:resnet18", "--weights", str(byom / "r18.pt"), "--id", f"imagefolder:{byom / 'id'}",
            "--far", f"imagefolder:{byom / 'ood'}", "--near", "synthetic-digits", "--subset", "10",
            "--val-ood", f"imagefolder:{byom / 'val'}", "--n-boot", "10", "--batch-size", "16",
            "--data-root", str(tmp_path / "data"), "--out", str(out), "--device", "cpu"]
    assert evaluate.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("torchvision:resnet18: head fc (K=10, D=512)") and "AUPR-In % [95 % CI]" in printed
    report = json.loads((out / "report.json").read_text())
    assert set(report["ood"]) == {f"imagefolder:{byom / 'ood'}", "synthetic-digits"}
    assert all(set(per) == set(SCORES) for per in report["ood"].values())
    m = report["ood"]["synthetic-digits"]["msp"]
    assert m["auroc_low"] <= m["auroc"] <= m["auroc_high"] and "aupr_in" in m and "aupr_out" in m
    assert report["sizes"] == {"train": 27, "val": 3, "test": 20, f"imagefolder:{byom / 'ood'}": 10,
                               "synthetic-digits": 10, f"imagefolder:{byom / 'val'}": 8}
    assert report["groups"]["near"]["mean"]["msp"]["auroc"] == pytest.approx(m["auroc"], abs=1e-6)
    assert {"nc1", "nc2_equinorm", "nc2_equiangular", "nc3", "nc4", "test_accuracy"} <= set(report["collapse"])
    assert set(report["nc5"]["synthetic-digits"]) == {"nc5", "nc5_centred"}
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4                  # histograms, 2 ROC, Gram matrices
    assert "window.MathJax" in page and len(page) > 2_000_000
    assert 'href="book/metrics.html#equation-eq-auroc"' in page and "equation-eq-nc1" in page
    assert "\\mathrm{AUROC}" in page                                  # the book's own equation, typeset offline
    if chromium() is None:
        pytest.skip("the report was not opened in a browser: chromium is not installed (apt-get install chromium)")
    (seen,) = render(out, ["report.html"])                             # what a reader sees, offline
    assert seen.images == 4 and seen.broken == [] and seen.requests_outside == []
    used = {lab for lab in html_report.LABELS.values() if lab in html_report.book_equations()}
    assert seen.maths >= len(used) > 10 and seen.mathjax_errors == 0 and seen.raw_tex == 0   # each equation typeset
