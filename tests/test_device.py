"""Tests for helpers.device: the precision each device gets, the device checks and the CUDA backend switches.

There is no GPU here, so the CUDA queries (is_available, device_count, get_device_name, get_device_capability)
are replaced by fakes describing a machine with two GPUs of different kinds.
"""

from __future__ import annotations

import pytest
import torch

from helpers import config, device
from helpers.device import Precision, choose_precision

GPUS = {0: ("Tesla T4", (7, 5)), 1: ("NVIDIA A100-SXM4-40GB", (8, 0))}


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend CUDA has a T4 as cuda:0 and an A100 as cuda:1."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(GPUS))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: GPUS[_index(i)][0])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: GPUS[_index(i)][1])


def _index(i) -> int:
    if isinstance(i, torch.device):
        return i.index or 0
    return 0 if i is None else int(i)


@pytest.mark.parametrize(("capability", "want"), [((7, 5), "fp16"), ((7, 0), "fp16"), ((6, 1), "fp16"),
                                                  ((8, 0), "bf16"), ((8, 6), "bf16"), ((9, 0), "bf16"),
                                                  ((10, 0), "bf16"), (None, "fp16")])
def test_auto_precision_follows_the_compute_capability(capability, want) -> None:
    name, reason = choose_precision("auto", "cuda", capability)
    assert name == want
    assert ("< 8.0" in reason) == (want == "fp16") and ("gradient scaler" in reason) == (want == "fp16")


def test_the_cpu_trains_in_float32_and_explicit_choices_win() -> None:
    assert choose_precision("auto", "cpu", None) == ("fp32", "CPU: float32")
    assert choose_precision("fp32", "cuda", (9, 0))[0] == "fp32"
    assert choose_precision("fp16", "cuda", (9, 0))[0] == "fp16"
    assert choose_precision("bf16", "cpu", None)[0] == "bf16"
    name, reason = choose_precision("bf16", "cuda", (7, 5))
    assert name == "bf16" and "slow at compute capability 7.5 < 8.0" in reason
    assert "slow" not in choose_precision("bf16", "cuda", (8, 0))[1]


def test_fp16_off_cuda_and_unknown_precisions_are_refused() -> None:
    with pytest.raises(ValueError, match=r"precision fp16 needs a CUDA device; use -p precision fp32"):
        choose_precision("fp16", "cpu", None)
    with pytest.raises(ValueError, match=r"precision 'fp8' is not one of auto, bf16, fp16, fp32"):
        choose_precision("fp8", "cuda", (9, 0))


def test_precision_uses_the_chosen_gpus_capability_and_a_scaler_only_for_fp16(two_gpus) -> None:
    t4 = Precision.for_device(torch.device("cuda:0"))
    a100 = Precision.for_device(torch.device("cuda:1"))
    assert (t4.name, a100.name) == ("fp16", "bf16")
    assert isinstance(t4.scaler, torch.amp.GradScaler) and a100.scaler is None
    assert Precision.for_device(torch.device("cuda:0"), "bf16").scaler is None
    cpu = Precision.for_device(torch.device("cpu"), config.make_config("smoke").precision)
    assert (cpu.name, cpu.scaler) == ("fp32", None)


def test_autocast_dtype_matches_the_precision() -> None:
    with Precision("bf16", "cpu").autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with Precision("fp32", "cpu").autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_a_cuda_index_beyond_the_devices_names_the_devices_there_are(two_gpus) -> None:
    cfg = config.make_config("smoke", device="cuda:7")
    with pytest.raises(ValueError) as err:
        device.resolve_device(cfg)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == ("device 'cuda:7' does not exist; the devices here are cuda:0 (Tesla T4), "
                   "cuda:1 (NVIDIA A100-SXM4-40GB).")
    assert device.resolve_device(config.make_config("smoke", device="cuda:1")) == torch.device("cuda:1")
    assert device.resolve_device(config.make_config("smoke")) == torch.device("cuda")


def test_no_cuda_and_bad_names_get_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^device 'cuda:0' asked for but CUDA is not available; use -p device cpu"):
        device.resolve_device(config.make_config("smoke", device="cuda:0"))
    with pytest.raises(ValueError, match=r"^device 'gpu0' is not a device name; use auto, cpu, cuda or cuda:N"):
        device.resolve_device(config.make_config("smoke", device="gpu0"))
    assert device.resolve_device(config.make_config("smoke")) == torch.device("cpu")


def test_printed_names_come_from_the_chosen_device(two_gpus) -> None:
    assert device.device_name(torch.device("cuda:1")) == "NVIDIA A100-SXM4-40GB"
    assert device.device_name(torch.device("cuda")) == "Tesla T4"                 # the current device
    line = device.training_line(torch.device("cuda:1"), Precision.for_device(torch.device("cuda:1")),
                                "cuDNN autotuning")
    assert line == ("training on NVIDIA A100-SXM4-40GB (cuda:1) in bf16 (compute capability 8.0 >= 8.0 has fast "
                    "bf16), cuDNN autotuning")
    assert "T4" not in line
    assert device.training_line(torch.device("cpu"), Precision("fp32", "cpu", "CPU: float32")).startswith(
        "training on CPU (")


@pytest.fixture
def backends(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Record the global switches instead of flipping them for the whole test session."""
    seen: dict = {}
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch, "use_deterministic_algorithms",
                        lambda on, warn_only=False: seen.update(deterministic=on, warn_only=warn_only))
    monkeypatch.setattr(device.os, "environ", {})
    return seen


def test_cuda_training_autotunes_by_default(backends: dict) -> None:
    said = device.configure_backends(config.make_config("smoke"), torch.device("cuda:0"))
    assert said == "cuDNN autotuning"
    assert torch.backends.cudnn.benchmark is True and torch.backends.cudnn.deterministic is False
    assert backends["deterministic"] is False and "CUBLAS_WORKSPACE_CONFIG" not in device.os.environ


def test_deterministic_turns_autotuning_off(backends: dict) -> None:
    said = device.configure_backends(config.make_config("smoke", deterministic=True), torch.device("cuda"))
    assert said == "deterministic algorithms (slower)"
    assert torch.backends.cudnn.benchmark is False and torch.backends.cudnn.deterministic is True
    assert backends["deterministic"] is True
    assert device.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_the_cpu_backends_are_left_alone(backends: dict) -> None:
    assert device.configure_backends(config.make_config("smoke", deterministic=True), torch.device("cpu")) == ""
    assert torch.backends.cudnn.benchmark is False and backends == {}


# ------------------------------------------------------------------ benchmarks/bench_gpu.py: its CPU-side logic
@pytest.fixture
def bench_gpu(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(config.REPO_ROOT / "benchmarks"))
    import bench_gpu

    return bench_gpu


TABLE = """intro
<!-- gpu-estimates -->
| GPU | eager s/epoch | compiled s/epoch | precision | bound by |
|---|---|---|---|---|
| H100 | 1.0–1.6 | 0.6–1.0 | bf16 | launches |
| A100 | 1.3-2.2 | n/a | bf16 | memory |

| after | 9–9 |
"""


def test_bench_gpu_reads_the_estimates_table(bench_gpu) -> None:
    table = bench_gpu.estimates(TABLE)
    assert table == {"H100": {"eager": (1.0, 1.6), "compiled": (0.6, 1.0)}, "A100": {"eager": (1.3, 2.2)}}
    assert bench_gpu.estimate_for("NVIDIA H100 80GB HBM3", table) == ("H100", table["H100"])
    assert bench_gpu.estimate_for("nvidia a100-sxm4-40gb", table)[0] == "A100"
    assert bench_gpu.estimate_for("Tesla T4", table) is None
    assert bench_gpu.estimates("no marker here") == {}
    readme = bench_gpu.estimates(bench_gpu.README.read_text())                 # the README's own table
    assert {"H100", "A100", "T4"} <= set(readme)
    assert all(0 < lo < hi for row in readme.values() for lo, hi in row.values())
    assert all(row["compiled"][1] <= row["eager"][1] for row in readme.values())


def test_bench_gpu_formats_the_ratio(bench_gpu) -> None:
    assert bench_gpu.ratio_text(1.2, (1.0, 1.6)) == ("1.2 s/epoch; estimate 1–1.6 s; measured/estimate 0.75–1.20 "
                                                     "(within the estimate)")
    assert bench_gpu.ratio_text(0.5, (1.0, 2.0)).endswith("measured/estimate 0.25–0.50 (faster than estimated)")
    assert bench_gpu.ratio_text(4.0, (1.0, 2.0)).endswith("measured/estimate 2.00–4.00 (slower than estimated)")
    assert bench_gpu.ratio_text(2.0, None) == "2 s/epoch; no estimate for this GPU in benchmarks/README.md"
    assert bench_gpu.scaled_epoch(1.0, 4_500) == pytest.approx(10.0)          # 45,000 images an epoch


def test_bench_gpu_arguments(bench_gpu) -> None:
    args = bench_gpu.parse_args([])
    assert (args.epochs, args.precision, args.compile_mode, args.no_compile, args.quick) == (2, "auto", "default",
                                                                                             False, False)
    assert args.budget < 300                                                    # the 5-minute promise
    args = bench_gpu.parse_args(["--quick", "--epochs", "1", "--precision", "fp16", "--compile-mode",
                                 "max-autotune", "--no-compile"])
    assert (args.quick, args.epochs, args.precision, args.compile_mode, args.no_compile) == (
        True, 1, "fp16", "max-autotune", True)
    for bad in (["--epochs", "0"], ["--precision", "fp8"], ["--compile-mode", "fast"]):
        with pytest.raises(SystemExit):
            bench_gpu.parse_args(bad)


def test_bench_gpu_exits_at_once_without_cuda(bench_gpu, monkeypatch: pytest.MonkeyPatch, capsys,
                                              tmp_path) -> None:
    ran, nodes = [], bench_gpu.gpu_nodes
    monkeypatch.setattr(bench_gpu, "run_on_gpu", lambda args: ran.append(args) or 0)
    monkeypatch.setattr(bench_gpu, "gpu_nodes", lambda: False)
    assert bench_gpu.main([]) == 0
    monkeypatch.setattr(bench_gpu, "gpu_nodes", lambda: True)                 # a node, but no usable CUDA
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_gpu.main([]) == 0
    assert capsys.readouterr().out == (bench_gpu.NO_CUDA + "\n") * 2 and not ran
    assert "\n" not in bench_gpu.NO_CUDA
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert bench_gpu.main(["--quick"]) == 0 and ran[0].quick                  # with CUDA it goes on to the GPU part
    assert not nodes(tmp_path)
    (tmp_path / "nvidiactl").touch()
    assert not nodes(tmp_path)                                                 # the control node is not a GPU
    (tmp_path / "nvidia0").touch()
    assert nodes(tmp_path)


def test_the_inference_batch_is_the_devices_unless_one_is_given() -> None:
    smoke = config.make_config("smoke")
    assert smoke.eval_batch_size == 0                                      # auto
    assert device.eval_batch(smoke, torch.device("cpu")) == 128
    assert device.eval_batch(smoke, torch.device("cuda", 1)) == 512
    given = config.make_config("smoke", eval_batch_size=64)
    assert device.eval_batch(given, torch.device("cpu")) == device.eval_batch(given, torch.device("cuda")) == 64


def test_cpu_features_do_not_depend_on_the_inference_batch() -> None:
    """The CPU default changed from 512 to 128 images a batch; the features and logits stay bit for bit."""
    from helpers.data import ImageSet
    from helpers.features import extract
    from helpers.model import build_model

    torch.manual_seed(0)
    model = build_model(10, 4)
    ds = ImageSet("x", torch.randint(0, 256, (600, 3, 32, 32), dtype=torch.uint8), torch.zeros(600, dtype=torch.long),
                  ["0"])
    mean, std, cpu = torch.full((3,), 0.5), torch.full((3,), 0.25), torch.device("cpu")
    ref = extract(model, ds, mean, std, cpu, 512)
    for batch in (128, 7):
        f = extract(model, ds, mean, std, cpu, batch)
        assert torch.equal(f.logits, ref.logits) and torch.equal(f.features, ref.features), batch


def test_the_cpu_name_counts_its_threads_in_good_english() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert device.device_name(torch.device("cpu")) == "CPU (1 thread)"
        torch.set_num_threads(2)
        assert device.device_name(torch.device("cpu")) == "CPU (2 threads)"
    finally:
        torch.set_num_threads(before)
