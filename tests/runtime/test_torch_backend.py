"""The torch backend with the real SmolLM2 (fp32 safetensors folder): greedy output against plain
transformers, sampling options, stop strings, prefix reuse, cancel, KV policies, disk offload,
damaged folders, and streaming/cancel through the real worker process."""

from __future__ import annotations

import queue
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.runtime.backends.torch import TorchBackend
from app.runtime.protocol import ErrorKind, Event, EventKind, RuntimeFailure, Sampling

QUESTION = [{"role": "user", "content": "Name three colours."}]
GREEDY = Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=20)


def never() -> bool:
    return False


@pytest.fixture(scope="module")
def backend(smollm2_hf: Path) -> Iterator[TorchBackend]:
    loaded = TorchBackend(smollm2_hf, {"dtype": "float32", "n_ctx": 1024, "threads": 2})
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def reference(backend: TorchBackend) -> str:
    """The first 20 greedy tokens of plain transformers ``generate()`` in fp32, as text."""
    import torch

    ids = backend.tokenize_chat(QUESTION)
    with torch.inference_mode():
        out = backend._model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, pad_token_id=2)
    return str(backend._tok.decode(out[0, len(ids):], skip_special_tokens=True))


def test_greedy_matches_plain_generate_and_streams_the_same_text(backend: TorchBackend, reference: str) -> None:
    pieces: list[str] = []
    done = backend.chat(QUESTION, GREEDY, on_token=pieces.append, is_cancelled=never)
    assert done.text == reference and reference.strip()
    assert "".join(pieces) == done.text and len(pieces) >= 10  # streamed as it came
    assert done.completion_tokens == 20 and done.finish_reason == "length"
    assert done.template == "model" and done.prompt_tokens == len(backend.tokenize_chat(QUESTION))


def test_sampling_options_are_honoured(backend: TorchBackend, reference: str) -> None:
    def run(**options: object) -> str:
        sampling = Sampling(**{"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "max_tokens": 12, **options})  # type: ignore[arg-type]
        return backend.chat(QUESTION, sampling, on_token=lambda _: None, is_cancelled=never).text

    assert run(seed=7) == run(seed=7)  # seeded sampling repeats
    assert len({run(seed=7), run(seed=8)}) > 1  # and the seed matters
    assert reference.startswith(run(seed=3, top_k=1, repeat_penalty=1.0))  # top-k 1 is greedy
    penalised = backend.chat(QUESTION, Sampling(temperature=0.0, repeat_penalty=1.5, max_tokens=20), on_token=lambda _: None, is_cancelled=never)
    assert penalised.text != reference  # the repeat penalty changes greedy choices


def test_stop_strings_end_the_reply_and_are_never_shown(backend: TorchBackend, reference: str) -> None:
    stop = reference[8:13]
    assert stop.strip() and reference.find(stop) >= 1
    pieces: list[str] = []
    done = backend.chat(QUESTION, Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=20, stop=(stop, "never-seen")),
                        on_token=pieces.append, is_cancelled=never)
    assert done.finish_reason == "stop" and done.text == reference[: reference.find(stop)]
    assert "".join(pieces) == done.text and stop not in "".join(pieces)


def test_second_turn_reuses_the_cached_prefix_and_matches_a_fresh_evaluation(backend: TorchBackend) -> None:
    first = backend.chat(QUESTION, GREEDY, on_token=lambda _: None, is_cancelled=never)
    turn = [*QUESTION, {"role": "assistant", "content": first.text}, {"role": "user", "content": "And three animals?"}]
    reused = backend.chat(turn, GREEDY, on_token=lambda _: None, is_cancelled=never)
    assert reused.cached_tokens >= first.prompt_tokens and reused.context and reused.context["evaluated_tokens"] < reused.prompt_tokens
    backend._new_cache()  # forget everything: the same turn evaluated from scratch
    fresh = backend.chat(turn, GREEDY, on_token=lambda _: None, is_cancelled=never)
    assert fresh.cached_tokens == 0 and fresh.text == reused.text


def test_cancel_stops_within_one_step(backend: TorchBackend) -> None:
    pieces: list[str] = []
    done = backend.chat(QUESTION, Sampling(temperature=0.0, max_tokens=200), on_token=pieces.append, is_cancelled=lambda: len(pieces) >= 3)
    assert done.finish_reason == "cancelled" and done.completion_tokens <= 4
    before = backend.chat(QUESTION, Sampling(max_tokens=5), on_token=lambda _: None, is_cancelled=lambda: True)
    assert before.finish_reason == "cancelled" and before.completion_tokens == 0  # cancelled during the prompt


def test_kv_policy_under_its_budget_gives_the_full_cache_output_and_holds_it_past(smollm2_hf: Path, reference: str) -> None:
    evicting = TorchBackend(smollm2_hf, {"dtype": "float32", "n_ctx": 1024, "kv_policy": "sink_window", "kv_budget": 96})
    try:
        same = evicting.chat(QUESTION, GREEDY, on_token=lambda _: None, is_cancelled=never)
        assert same.text == reference  # prompt + reply < 96 tokens: nothing evicted
        long = evicting.chat(QUESTION, Sampling(temperature=0.0, max_tokens=120), on_token=lambda _: None, is_cancelled=never)
        assert long.completion_tokens == 120 or long.finish_reason == "stop"
        import torch

        with torch.inference_mode():  # the cache's tensors are inference tensors
            evicting._cache.trim()
        assert evicting._cache.get_seq_length() <= 96 and evicting._seen > 96
    finally:
        evicting.close()


def test_disk_offload_from_the_plan_gives_the_same_greedy_output(smollm2_hf: Path, reference: str) -> None:
    """A RAM budget of about half the fp32 weights: accelerate puts the other layers on disk."""
    from app.runtime.library import read_hf_folder
    from app.runtime.planner import UserPrefs, plan
    from app.runtime.planner.profiles import hardware_from_dict
    from app.runtime.planner.torch_plan import COMPUTE_RESERVE, TorchPrefs, torch_kwargs

    model = read_hf_folder(smollm2_hf, source="folder")
    margin = 64 << 20
    hw = hardware_from_dict({"cpu_cores_physical": 2, "ram_total": 8 << 30, "ram_available": margin + COMPUTE_RESERVE + (300 << 20)}, source="tiny-ram")
    made = plan(model, hw, UserPrefs(context_length=256, ram_margin_bytes=margin), torch_prefs=TorchPrefs(dtype="float32"))
    layers = made.gpu_layers.value["layers"]
    assert layers["disk"] > 0 and layers["cpu"] > 0 and "disk" in made.gpu_layers.reason
    offloaded = TorchBackend(smollm2_hf, torch_kwargs(made))
    try:
        done = offloaded.chat(QUESTION, GREEDY, on_token=lambda _: None, is_cancelled=never)
        assert done.text == reference
        # the disk layers' weights stay on disk (read from the safetensors file for each token), not in RAM
        assert "disk" in offloaded._model.hf_device_map.values()
        assert any(p.device.type == "meta" for p in offloaded._model.parameters())
    finally:
        offloaded.close()


def _copy_without_weights(source: Path, target: Path) -> Path:
    target.mkdir()
    for item in source.iterdir():
        if item.suffix != ".safetensors":
            shutil.copy(item, target / item.name)
    return target


def test_a_truncated_or_missing_safetensors_file_is_named(smollm2_hf: Path, tmp_path: Path) -> None:
    truncated = _copy_without_weights(smollm2_hf, tmp_path / "truncated")
    with (smollm2_hf / "model.safetensors").open("rb") as src, (truncated / "model.safetensors").open("wb") as dst:
        dst.write(src.read(4 << 20))
    with pytest.raises(RuntimeFailure) as info:
        TorchBackend(truncated, {"dtype": "float32"})
    assert info.value.kind is ErrorKind.MODEL_INVALID and "model.safetensors" in info.value.message and "truncated" in info.value.message
    missing = _copy_without_weights(smollm2_hf, tmp_path / "missing")
    with pytest.raises(RuntimeFailure) as info:
        TorchBackend(missing, {"dtype": "float32"})
    assert info.value.kind is ErrorKind.MODEL_INVALID and "model.safetensors is missing" in info.value.message


def test_streaming_and_cancel_through_the_worker(smollm2_hf: Path) -> None:
    from app.runtime.process_client import ProcessClient

    client = ProcessClient().start()
    try:
        chat = {"messages": QUESTION, "model": str(smollm2_hf), "backend": "torch", "sampling": {"temperature": 0, "max_tokens": 12, "repeat_penalty": 1.0}}
        events = list(client.stream("chat", chat))
        tokens = [e.data["text"] for e in events if e.event is EventKind.TOKEN]
        result = events[-1].data
        assert events[-1].event is EventKind.RESULT and "".join(tokens) == result["text"] and len(tokens) >= 3
        assert any(e.event is EventKind.PROGRESS and "torch" in str(e.data.get("message", "")) for e in events)
        assert client.call("engine.status", {}, timeout=30)["backend"] == "torch"
        got: queue.Queue[Event] = queue.Queue()
        request_id = client.submit("chat", {**chat, "sampling": {"max_tokens": 2000, "seed": 1}}, got.put)
        while got.get(timeout=120).event is not EventKind.TOKEN:
            pass
        client.cancel(request_id)
        while not (event := got.get(timeout=30)).is_final:
            pass
        assert event.event is EventKind.RESULT and event.data["finish_reason"] == "cancelled"
        assert event.data["usage"]["completion_tokens"] < 2000
    finally:
        client.close()


def test_the_settings_dialog_backend_choice_reaches_the_engine_plan(qtbot, model_path: Path) -> None:
    """Per model: the dialog saves it in the app settings, which the worker's services read for every plan."""
    from app import settings as app_settings
    from app.runtime.library import read_gguf
    from app.runtime.services import Services
    from app.ui.chat.settings_dialog import SettingsDialog

    before = app_settings.load()
    model = read_gguf(model_path, source="embedded", model_id="smollm2-test")
    services = Services(warm_up=False)
    hw = services.hardware()
    try:
        assert services.engine.make_plan(model, services.engine.prefs({}), hw).backend.value == "llama.cpp"
        dialog = SettingsDialog(system_prompt="", settings={}, model_id=model.id)
        qtbot.addWidget(dialog)
        dialog.backend.setCurrentIndex(dialog.backend.findData("torch"))
        dialog.accept()
        assert app_settings.load().model_backends == {model.id: "torch"} and dialog.settings()["backend"] == "torch"
        made = services.engine.make_plan(model, services.engine.prefs({}), hw)
        assert made.backend.value == "torch" and made.backend.overridden
        asked = services.engine.make_plan(model, services.engine.prefs({"backend": "llama.cpp"}), hw)
        assert asked.backend.value == "llama.cpp"  # a request's own backend beats the saved choice
    finally:
        app_settings.save(before)
        services.close()
