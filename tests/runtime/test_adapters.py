"""A fine-tune you can chat with: the adapter applied over its base in the torch backend, and a
finished `hearth finetune` run registered in the library over its base (by id, no copy), chatted
with by its id, its run folder or its adapter folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from app.runtime import adapters, library

FACTS = Path(__file__).parents[1] / "data" / "facts"


@pytest.fixture(scope="module")
def lora(smollm2_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter made with peft in the test, with non-zero weights (so it changes the output)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32)
    tuned = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = tmp_path_factory.mktemp("lora") / "adapter"
    tuned.save_pretrained(out)
    AutoTokenizer.from_pretrained(smollm2_hf).save_pretrained(out)
    return out


@pytest.mark.slow
def test_the_torch_loader_applies_the_adapter_as_peft_does(smollm2_hf: Path, lora: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from app.runtime.backends.torch_load import load_model

    probe = torch.tensor([[1, 504, 3458, 314, 260, 3575, 282]])
    model, tokenizer = load_model(smollm2_hf, {"dtype": "float32", "adapter": str(lora)})
    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32), str(lora)).eval()
    base = AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32).eval()
    with torch.inference_mode():
        ours, theirs, plain = model(probe).logits, expected(probe).logits, base(probe).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)  # merged in memory: the same function
    assert (ours - plain).abs().max() > 1e-2  # and not the base's
    assert tokenizer.chat_template


def test_an_adapter_folder_resolves_over_its_base(smollm2_hf: Path, lora: Path, tmp_path: Path) -> None:
    base = library.read_hf_folder(smollm2_hf, source="folder", model_id="smol-base")
    # peft recorded the base's folder; the library finds the base there (not in the library: by path)
    found = library.resolve(str(lora), [])
    assert found.format == adapters.FORMAT and found.path == str(lora.resolve()) and found.checkpoint == "final"
    assert found.base == str(smollm2_hf) and found.n_layers == base.n_layers and found.file_size < 10 * 2**20
    # registered over a base the library has: referenced by its library id, and listed by the scan
    models_dir = tmp_path / "models"
    info = adapters.register(lora, [base], library.resolve, models_dir=models_dir, base_id="smol-base", steps=7)
    assert info.base == "smol-base" and info.checkpoint == "final (step 7)"
    assert [p.name for p in models_dir.iterdir()] == [f"{info.id}{adapters.MANIFEST_SUFFIX}"]  # a manifest, no copy
    listed = adapters.scan([models_dir], [base], library.resolve)
    assert [(m.id, m.base, m.path) for m in listed] == [(info.id, "smol-base", str(lora.resolve()))]
    manifest = models_dir / f"{info.id}{adapters.MANIFEST_SUFFIX}"
    manifest.write_text(manifest.read_text().replace(str(smollm2_hf), str(tmp_path / "gone")))
    assert adapters.scan([models_dir], [], library.resolve) == []  # a base the library lost: skipped with a logged reason, not fatal
    from app.runtime.protocol import RuntimeFailure

    with pytest.raises(RuntimeFailure, match="no LoRA adapter"):
        adapters.describe(tmp_path, [base], library.resolve)


@pytest.mark.slow
def test_a_finished_finetune_is_a_model_you_can_chat_with(smollm2_hf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main
    from app.paths import paths

    # the base in the library (links to its files: nothing copies 540 MB), so the run refers to it by library id
    link = paths().models / "smol-base-for-adapters"
    link.mkdir(parents=True)
    for f in smollm2_hf.iterdir():
        os.symlink(f, link / f.name)
    try:
        base = library.read_hf_folder(link, source="folder")
        run = tmp_path / "run"
        assert main(["finetune", base.id, str(FACTS / "train.jsonl"), "--output", str(run), "--max-steps", "2", "--batch-size", "2",
                     "--seq-length", "48", "--rank", "4", "--threads", "2", "--save-steps", "1000", "--eval-steps", "1000",
                     "--sample-steps", "1000"]) == 0
        printed = capsys.readouterr().out
        registered = next(m for m in library.scan([paths().models], hf_cache=False) if m.format == adapters.FORMAT and m.path == str((run / "adapter").resolve()))
        assert f"chat with it: hearth chat --model {registered.id}" in printed
        assert registered.base == base.id and registered.checkpoint == "final (step 2)"
        assert not (paths().models / registered.id).exists()  # only the manifest joined the models folder

        for model in (registered.id, str(run), str(run / "adapter")):  # by library id, run folder or adapter folder
            assert main(["chat", "Name a colour.", "--model", model, "--max-tokens", "4", "--temperature", "0"]) == 0, model
            shown = capsys.readouterr()
            assert shown.out.strip() and "Traceback" not in shown.err, shown.err
    finally:
        shutil.rmtree(link)
        for manifest in paths().models.glob(f"*{adapters.MANIFEST_SUFFIX}"):
            manifest.unlink()
