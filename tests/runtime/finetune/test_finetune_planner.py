"""The training planner: settings chosen from the hardware, each with its reason, and the memory estimate."""

from __future__ import annotations

import pytest

from app.runtime.planner.profiles import PROFILES
from app.runtime.planner.training import SETTINGS, DataStats, TrainModel, estimate_memory, plan_training
from app.runtime.protocol import RuntimeFailure

GiB = 1 << 30


def llama(params_b: float) -> TrainModel:
    """Llama-shaped configs: SmolLM2-135M (as its config.json says), Llama-3-8B."""
    if params_b < 1:
        return TrainModel("SmolLM2-135M", 30, 576, 1536, 9, 3, 64, 49152, True, 8192)
    return TrainModel("Llama-3-8B", 32, 4096, 14336, 32, 8, 128, 128256, False, 8192)


FACTS = DataStats(examples=30, max_tokens=60, p95_tokens=58)
CHATS = DataStats(examples=5000, max_tokens=1900, p95_tokens=700, mean_tokens=250)


def test_parameter_counts_match_the_real_models() -> None:
    assert abs(llama(0.1).parameters - 134_515_008) < 1_000_000  # SmolLM2-135M's safetensors
    assert abs(llama(8).parameters - 8_030_261_248) / 8.03e9 < 0.01
    assert llama(0.1).adapter_parameters(16) == 30 * 16 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536))


def test_small_model_on_this_kind_of_cpu() -> None:
    plan = plan_training(llama(0.1), PROFILES["cpu-16gb"], FACTS)
    s = plan.settings()
    assert set(s) == set(SETTINGS)
    assert s["device"] == "cpu" and s["quantize_4bit"] is False and "CUDA" in plan.quantize_4bit.reason
    assert s["rank"] == 16 and s["alpha"] == 32 and s["learning_rate"] == 1e-3 and s["epochs"] == 8
    assert s["seq_length"] == 64 and "95th percentile" in plan.seq_length.reason
    assert s["grad_checkpointing"] is False and s["packing"] is False and s["threads"] == 8
    assert plan.memory.value["total"] < 2 * GiB and "fits" in plan.memory.reason
    assert all(getattr(plan, n).reason and not getattr(plan, n).overridden for n in SETTINGS)


def test_an_8b_model_on_a_24gb_gpu_gets_plain_lora_and_on_a_12gb_gpu_qlora() -> None:
    big = plan_training(llama(8), PROFILES["rtx4090-24gb"], CHATS)
    assert big.device.value == "cuda" and big.quantize_4bit.value is False, big.quantize_4bit.reason
    assert big.learning_rate.value == 2e-4 and "QLoRA and Unsloth" in big.learning_rate.reason
    assert big.epochs.value == 1 and big.packing.value is True
    assert 12 <= big.batch_size.value * big.grad_accum.value <= 20  # the recipes' 16, in whole batches
    assert big.memory.value["total"] <= big.memory.value["budget"]

    small = plan_training(llama(8), PROFILES["rtx3060-12gb"], CHATS)
    assert small.quantize_4bit.value is True and "4-bit NF4" in small.quantize_4bit.reason
    parts = small.memory.value
    assert parts["weights"] < 6 * GiB and parts["total"] <= parts["budget"]
    assert small.grad_checkpointing.value is True or small.batch_size.value < big.batch_size.value


def test_the_estimate_adds_up_and_checkpointing_saves_activations() -> None:
    kw = dict(device="cuda", quantize_4bit=False, rank=16, batch_size=4, seq_length=2048)
    full = estimate_memory(llama(8), grad_checkpointing=False, **kw)
    ckpt = estimate_memory(llama(8), grad_checkpointing=True, **kw)
    assert full["total"] == sum(v for k, v in full.items() if k != "total")
    assert ckpt["activations"] < full["activations"] / 3 and ckpt["weights"] == full["weights"] == llama(8).parameters * 2
    q4 = estimate_memory(llama(8), grad_checkpointing=True, **{**kw, "quantize_4bit": True})
    assert q4["weights"] < full["weights"] / 2.5


def test_overrides_win_and_say_so() -> None:
    plan = plan_training(llama(0.1), PROFILES["cpu-16gb"], FACTS, {"rank": 4, "learning_rate": 2e-3})
    assert plan.rank.value == 4 and plan.rank.overridden and "Set by you" in plan.rank.reason
    assert plan.alpha.value == 8  # follows the pinned rank
    with pytest.raises(RuntimeFailure):
        plan_training(llama(0.1), PROFILES["cpu-16gb"], FACTS, {"quantize_4bit": True})
    with pytest.raises(RuntimeFailure):
        plan_training(llama(0.1), PROFILES["cpu-16gb"], FACTS, {"colour": "blue"})
