"""The torch plan on named hardware profiles: dtype, quantize-or-offload, device map, KV policy, compile."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from app.runtime.planner import UserPrefs, load_profile, plan, summary
from app.runtime.planner.torch_plan import TorchPrefs, choose_dtype, torch_kwargs
from app.runtime.protocol import ErrorKind, RuntimeFailure

TORCH = UserPrefs(backend="torch")
FAST_BF16 = {"float32": 10.0, "bfloat16": 12.0, "float32_matvec_per_s": 100.0, "bfloat16_matvec_per_s": 240.0}
SLOW_BF16 = {"float32": 10.0, "bfloat16": 2.0, "float32_matvec_per_s": 100.0, "bfloat16_matvec_per_s": 40.0}


def test_16_bit_weights_that_do_not_fit_a_12_gb_gpu_are_quantized_or_offloaded_by_predicted_speed(models: SimpleNamespace) -> None:
    model = models.info("Llama-3-8B", "F16")  # 16 GB of bf16 weights
    auto = plan(model, load_profile("rtx3060-12gb"), TORCH)
    assert auto.quantization.value == {"dtype": "bfloat16", "weight_quant": "bnb-nf4"}
    reason = auto.quantization.reason
    assert "do not fit" in reason and "none:" in reason and "bnb-int8:" in reason and "Chosen: bnb-nf4" in reason
    assert auto.gpu_layers.value["device_map"] == {"": 0} and auto.batch.value["compile"] is True
    offloaded = plan(model, load_profile("rtx3060-12gb"), TORCH, torch_prefs=TorchPrefs(offload=True))
    assert offloaded.quantization.value["weight_quant"] == "none" and offloaded.quantization.overridden
    layers = offloaded.gpu_layers.value["layers"]
    assert layers["gpu"] > 0 and layers["cpu"] > 0 and layers["gpu"] + layers["cpu"] + layers["disk"] == 32
    assert offloaded.speed.value["decode_tokens_per_s"] < auto.speed.value["decode_tokens_per_s"]  # PCIe per token
    assert offloaded.batch.value["compile"] is False and "hooks" in offloaded.batch.reason
    forced = plan(model, load_profile("rtx3060-12gb"), TORCH, torch_prefs=TorchPrefs(weight_quant="bnb-int8"))
    assert forced.quantization.value["weight_quant"] == "bnb-int8" and "as you chose" in forced.quantization.reason
    assert torch_kwargs(forced)["weight_quant"] == "bnb-int8"


def test_weights_that_fit_stay_16_bit_and_old_gpus_get_fp16(models: SimpleNamespace) -> None:
    model = models.info("Llama-3-8B", "F16")
    big = plan(model, load_profile("rtx4090-24gb"), TORCH)
    assert big.quantization.value == {"dtype": "bfloat16", "weight_quant": "none"} and "fit" in big.quantization.reason
    assert "Fast decode on" in big.batch.reason and summary(big).startswith("torch · bfloat16 · all on GPU")
    small = models.info("Llama-3-8B", "Q4_K_M")
    old = plan(small, load_profile("gtx1650-4gb"), TORCH)
    assert old.quantization.value["dtype"] == "float16" and "no fast bfloat16" in old.quantization.reason


def test_cpu_dtype_follows_the_measured_speed_and_the_person_wins() -> None:
    hw = load_profile("cpu-16gb")
    fast = choose_dtype(hw, None, TorchPrefs(), FAST_BF16)
    slow = choose_dtype(hw, None, TorchPrefs(), SLOW_BF16)
    assert (fast.value, slow.value) == ("bfloat16", "float32")
    assert "measured" in fast.reason and "2.4x" in fast.reason and "2.5x slower" in slow.reason
    unmeasured = choose_dtype(hw, None, TorchPrefs(), None)
    assert unmeasured.value == "float32" and "profile" in unmeasured.reason
    pinned = choose_dtype(hw, None, TorchPrefs(dtype="bfloat16"), SLOW_BF16)
    assert pinned.value == "bfloat16" and pinned.overridden


def test_cpu_int8_only_where_the_saved_kernel_benchmark_says_it_is_fast(smollm2) -> None:
    hw = load_profile("cpu-16gb")
    faster = plan(smollm2, hw, TORCH, dtype_speed=SLOW_BF16, quant_speedup=1.3)
    slower = plan(smollm2, hw, TORCH, dtype_speed=SLOW_BF16, quant_speedup=0.8)
    assert faster.quantization.value["weight_quant"] == "int8" and "1.30x" in faster.quantization.reason
    assert slower.quantization.value["weight_quant"] == "none" and "0.80x" in slower.quantization.reason
    with pytest.raises(RuntimeFailure) as info:
        plan(smollm2, hw, TORCH, torch_prefs=TorchPrefs(weight_quant="bnb-nf4"), dtype_speed=SLOW_BF16)
    assert info.value.kind is ErrorKind.UNSUPPORTED and "CUDA" in info.value.message


def test_ram_short_sends_layers_to_disk_and_compile_stays_off_on_cpu(models: SimpleNamespace) -> None:
    made = plan(models.info("Llama-3-8B", "F16"), load_profile("cpu-16gb"), TORCH, dtype_speed=SLOW_BF16, quant_speedup=None)
    layers = made.gpu_layers.value["layers"]
    assert layers["disk"] > 0 and layers["cpu"] > 0 and made.gpu_layers.value["offload_folder"].endswith("llama-3-8b-f16")
    assert "torch-offload" in made.gpu_layers.value["offload_folder"] and "disk" in made.quantization.reason
    assert made.batch.value["compile"] is False and "105 s" in made.batch.reason
    assert torch_kwargs(made)["device_map"]["lm_head"] in ("cpu", "disk")


def test_a_context_whose_kv_does_not_fit_gets_an_eviction_policy_and_a_person_can_pick_another(smollm2) -> None:
    hw = load_profile("gtx1650-4gb")
    small = plan(smollm2, hw, TORCH)
    assert small.kv_eviction.value == {"policy": "full", "budget_tokens": 8192}
    # 1M tokens of SmolLM2's KV (about 22 GiB in fp16) fit no 4 GB GPU: the planner evicts
    huge = plan(smollm2, hw, UserPrefs(backend="torch", context_length=1_000_000))
    kv = huge.kv_eviction.value
    assert kv["policy"] != "full" and 16 <= kv["budget_tokens"] < 1_000_000 and "needs" in huge.kv_eviction.reason
    assert huge.batch.value["compile"] is False  # a static cache cannot evict
    picked = plan(smollm2, hw, TORCH, torch_prefs=TorchPrefs(kv_policy="h2o", kv_budget=512))
    assert picked.kv_eviction.value == {"policy": "h2o", "budget_tokens": 512} and picked.kv_eviction.overridden
    assert torch_kwargs(picked)["kv_policy"] == "h2o" and "observer" in picked.flash_attention.reason


def test_torch_prefs_are_validated_and_split_from_the_planner_prefs() -> None:
    torch_prefs, rest = TorchPrefs.split({"context_length": 512, "weight_quant": "int8", "kv_policy": "sink_window"})
    assert torch_prefs == TorchPrefs(weight_quant="int8", kv_policy="sink_window") and rest == {"context_length": 512}
    with pytest.raises(RuntimeFailure):
        TorchPrefs(kv_policy="forget_everything")
    with pytest.raises(RuntimeFailure):
        TorchPrefs(dtype="int3")
