"""The whole quantize run: check the source, make every target, measure each against the source,
recommend one, and only then put the results where the library sees them.

Everything is made in a hidden work folder inside the output folder (same disk, so the final
moves are atomic renames; a hidden ``.part`` name the library and the next run's sweep
recognise). Its files are named ``*.gguf.pending`` so that no scan lists them. Cancel (or pause:
nothing here can resume), a failure or a full disk at any point removes the work folder: nothing
half-made, and nothing at all from a cancelled run, appears in the library. A stop ends as
`JobStopped` cancelled, which the dispatcher answers as a result with ``status: "cancelled"``.

Steps, each reported with ``step``/``steps`` in the progress events:
1. an HF folder is converted to a 16-bit GGUF (the reference for GGUF targets);
2. each GGUF target is quantized from the reference (an already-quantized GGUF source is
   requantized, with a warning), each torch target is made from the HF weights;
3. with ``evaluate``, the reference and every output are measured on the same held-out tokens;
4. the planner picks the variant it would run on this machine; the outputs are moved into place.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from app.runtime.jobs import JobContext, JobStopped, Progress
from app.runtime.library import ModelInfo
from app.runtime.protocol import ErrorKind, JobStatus, RuntimeFailure
from app.runtime.quantize import safety
from app.runtime.quantize import targets as registry
from app.runtime.quantize.safety import Source
from app.runtime.quantize.targets import Target

log = logging.getLogger(__name__)

PENDING = ".pending"


class StepState(JobContext):
    """The caller's context, with the current step added to every progress record.

    It shares the caller's stop flag and sends through the caller's events; time left is measured
    per step (each target's quantization is its own rate). A stop of any kind ends the run as
    cancelled: a quantization keeps nothing to resume from, so a pause is a cancel.
    """

    def __init__(self, ctx: JobContext | None, steps: int) -> None:
        self._outer = ctx if ctx is not None else JobContext.detached("quantize")
        super().__init__(self._outer.request_id, self._outer._emit)  # the caller's events; this context's own rates
        self.steps, self.step, self.title = steps, 0, ""

    @property
    def stop_requested(self) -> JobStatus | None:
        return self._outer.stop_requested

    @property
    def cancelled(self) -> bool:
        return self._outer.cancelled

    def wait(self, seconds: float) -> bool:
        return self._outer.wait(seconds)

    def begin(self, title: str) -> None:
        self.step += 1
        self.title = title
        self._rates = {}
        self.progress("step", fraction=0.0, message=title)

    def progress(self, stage: str, **fields: Any) -> Progress:  # type: ignore[override]
        fields.update(step=self.step, steps=self.steps, step_title=self.title)
        return super().progress(stage, **fields)

    def log(self, message: str, level: str = "info") -> None:
        self._outer.log(message, level)

    def check(self, message: str = "", **kept: Any) -> None:
        if self.cancelled:
            raise JobStopped(JobStatus.CANCELLED, message or "Quantization cancelled; nothing was added to the library.", **kept)


def run(
    source: Path,
    targets: list[str],
    *,
    output_dir: Path | None = None,
    evaluate: bool,
    state: JobContext | None,
    eval_tokens: int | None = None,
    imatrix: Path | None = None,
    hardware: Any = None,
    context_length: int | None = None,
) -> dict[str, Any]:
    """Quantize ``source`` (an HF folder or a GGUF file) to each of ``targets``; the report.

    Raises `JobStopped` (cancelled, nothing added to the library) after a cancel or a pause.
    """
    from app.paths import paths

    src = safety.inspect_source(source)
    wanted = registry.parse(targets)
    output_dir = Path(output_dir) if output_dir is not None else paths().models
    output_dir.mkdir(parents=True, exist_ok=True)
    safety.sweep_stale(output_dir)
    gguf_targets = [t for t in wanted if t.kind == "gguf"]
    torch_targets = [t for t in wanted if t.kind == "torch"]
    for t in gguf_targets:
        if t.needs_imatrix and imatrix is None:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{t.name} needs an importance matrix (llama.cpp refuses it without one). Pass one, or choose Q2_K or larger.")
    expected = {t.name: registry.estimate_size(t, src.tensors) for t in wanted}
    convert = src.kind == "hf" and bool(gguf_targets)
    reference_type = "BF16" if src.file_type == "BF16" else "F16"
    need = sum(expected.values()) + (registry.estimate_size(registry.get(reference_type), src.tensors) if convert else 0)
    safety.check_free_space(output_dir, need, f"Quantizing {src.name} to {', '.join(t.name for t in wanted)}")

    steps = int(convert) + len(wanted) + int(evaluate and bool(gguf_targets)) + int(evaluate and bool(torch_targets)) + 1
    step = StepState(state, steps)
    work = output_dir / f".quantize.{os.getpid()}-{uuid.uuid4().hex[:8]}{safety.PART_SUFFIX}"
    work.mkdir()
    started = time.monotonic()
    try:
        made: dict[str, Path] = {}
        reference = src.path
        if convert:
            step.begin(f"Converting {src.name} to GGUF {reference_type}")
            from app.runtime.quantize.gguf import convert_hf_to_gguf

            reference = convert_hf_to_gguf(src.path, work / f"{src.name}.{reference_type}.gguf{PENDING}", outtype=reference_type.lower(), state=step)
        for t in gguf_targets:
            step.check()
            step.begin(f"Quantizing to {t.name}")
            if convert and t.name == reference_type:
                made[t.name] = reference  # the converted reference is itself the F16/BF16 output
                continue
            from app.runtime.quantize.gguf import quantize_gguf

            made[t.name] = quantize_gguf(reference, work / f"{src.name}.{t.name}.gguf{PENDING}", t.name, state=step, imatrix=imatrix)
        torch_made = _torch_targets(src, torch_targets, work, step, evaluate=evaluate, eval_tokens=eval_tokens)
        report = _report(src, wanted, made, expected)
        if evaluate and gguf_targets:
            step.begin("Measuring quality and speed")
            _evaluate_gguf(src, reference, report, work, step, eval_tokens)
        report["results"] += torch_made
        step.check()
        step.begin("Adding the results to the library")
        info = _publish(report, output_dir)
        _recommend(report, info, hardware, context_length)
    except BaseException:
        safety.remove(work)
        raise
    safety.remove(work)
    report["seconds"] = round(time.monotonic() - started, 1)
    report["output_dir"] = str(output_dir)
    return report


def _report(src: Source, wanted: list[Target], made: dict[str, Path], expected: dict[str, int]) -> dict[str, Any]:
    rows = []
    for t in wanted:
        if t.name in made:
            rows.append({"target": t.name, "kind": "gguf", "path": str(made[t.name]), "file_size": made[t.name].stat().st_size, "expected_size": expected[t.name]})
    return {
        "source": {"path": str(src.path), "kind": src.kind, "name": src.name, "file_type": src.file_type, "file_size": src.size},
        "warnings": list(src.warnings),
        "reference": None,
        "results": rows,
        "recommended": None,
        "recommended_reason": "",
    }


def _evaluate_gguf(src: Source, reference: Path, report: dict[str, Any], work: Path, step: StepState, eval_tokens: int | None) -> None:
    from app.runtime.quantize import evaluate

    wanted_tokens = eval_tokens or evaluate.DEFAULT_TOKENS
    per = evaluate.WINDOW - evaluate.CONTEXT - 1
    text_tokens, vocab = evaluate.tokenize_gguf(reference, evaluate.held_out_text(), evaluate.WINDOW * -(-wanted_tokens // per))
    chunks = evaluate.windows(text_tokens, wanted_tokens)
    n_scored = sum(len(c) - evaluate.CONTEXT - 1 for c in chunks)
    store_path = work / "reference-logprobs.npy"
    safety.check_free_space(work, n_scored * vocab * 2, "Keeping the reference's probabilities for the comparison")
    store = evaluate.reference_store(store_path, n_scored, vocab)
    label = f"{src.name} ({'F16 reference' if src.kind == 'hf' else src.file_type + ', the source'})"
    ref_scores = evaluate.evaluate_gguf(reference, chunks, store=store, state=step, label=label)
    store.flush()
    del store
    report["reference"] = {"label": label, "path": str(reference), "file_size": reference.stat().st_size, **ref_scores.to_dict()}
    ref = evaluate.open_reference(store_path)
    for row in report["results"]:
        path = Path(row["path"])
        if path == reference:
            row.update({**ref_scores.to_dict(), "kl_mean": 0.0, "kl_p99": 0.0, "top1_agreement": 1.0})
        else:
            row.update(evaluate.evaluate_gguf(path, chunks, reference=ref, state=step, label=row["target"]).to_dict())
        row["ppl_change_pct"] = 100.0 * (row["perplexity"] / ref_scores.perplexity - 1.0)
    del ref


def _torch_targets(src: Source, wanted: list[Target], work: Path, step: StepState, *, evaluate: bool, eval_tokens: int | None) -> list[dict[str, Any]]:
    """Each torch scheme through torch_quant, measured against the fp32 source when asked."""
    if not wanted:
        return []
    import torch
    from transformers import AutoModelForCausalLM

    from app.runtime.quantize import evaluate as ev
    from app.runtime.quantize import torch_quant
    from app.runtime.quantize.evaluate_torch import evaluate_model, tokenize_hf

    folder = src.path
    if src.kind == "gguf":
        from app.runtime.hf_folder import hf_folder_for_gguf

        folder = hf_folder_for_gguf(src.path)
    rows: list[dict[str, Any]] = []
    ref = None
    chunks: list[list[int]] = []
    ref_ppl = None
    if evaluate:
        step.begin(f"Measuring {src.name} with torch (the reference)")
        wanted_tokens = eval_tokens or ev.DEFAULT_TOKENS
        per = ev.WINDOW - ev.CONTEXT - 1
        chunks = ev.windows(tokenize_hf(folder, ev.held_out_text(), ev.WINDOW * -(-wanted_tokens // per)), wanted_tokens)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        n_scored = sum(len(c) - ev.CONTEXT - 1 for c in chunks)
        store_path = work / "reference-logprobs-torch.npy"
        store = ev.reference_store(store_path, n_scored, int(model.config.vocab_size))
        ref_ppl = evaluate_model(model, chunks, store=store, state=step, label=f"{src.name} (torch fp32 reference)").perplexity
        store.flush()
        del store, model
        ref = ev.open_reference(store_path)
    for t in wanted:
        step.check()
        step.begin(f"Quantizing to {t.name} (torch)")
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        model = torch_quant.quantize_model(model, t.name) or model
        out = work / f"{src.name}-{t.name}"
        torch_quant.save_quantized(model, out, t.name)
        _copy_tokenizer(folder, out)
        del model
        row: dict[str, Any] = {"target": t.name, "kind": "torch", "path": str(out), "file_size": _folder_size(out)}
        if evaluate:
            loaded = torch_quant.load_quantized(out)
            row.update(evaluate_model(loaded, chunks, reference=ref, state=step, label=t.name).to_dict())
            row["ppl_change_pct"] = 100.0 * (row["perplexity"] / ref_ppl - 1.0) if ref_ppl else None
            row["reference_perplexity"] = ref_ppl
            del loaded
        rows.append(row)
    return rows


def _copy_tokenizer(source: Path, out: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "generation_config.json", "tokenizer.model"):
        if (source / name).is_file() and not (out / name).exists():
            shutil.copy2(source / name, out / name)


def _folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _publish(report: dict[str, Any], output_dir: Path) -> ModelInfo | None:
    """Move every verified output from the work folder to its final name (renames on one disk);
    the metadata of the first GGUF output (the planner's model for the recommendation)."""
    from app.runtime.library import read_gguf

    infos: dict[str, ModelInfo] = {}

    for row in report["results"]:
        pending = Path(row["path"])
        if row["kind"] == "gguf":  # verified by quantize_gguf / convert_hf_to_gguf when it was made
            final = safety.free_name(output_dir, pending.name.removesuffix(".gguf" + PENDING), ".gguf")
        else:
            final = safety.free_name(output_dir, pending.name, "")
        try:
            os.replace(pending, final)
        except OSError as exc:
            if safety.is_disk_full(exc):
                raise safety.disk_full(output_dir) from exc
            raise
        if report["reference"] is not None and report["reference"]["path"] == str(pending):
            report["reference"]["path"] = str(final)  # the converted reference is itself an output
        row["path"] = str(final)
        if row["kind"] == "gguf":
            info = read_gguf(final, source="folder")
            row["model_id"] = info.id
            infos.setdefault("first", info)
    reference = report["reference"]
    if reference is not None and Path(reference["path"]).name.endswith(PENDING):
        reference["path"] = None  # an intermediate file, deleted with the work folder
    return infos.get("first")


def _recommend(report: dict[str, Any], info: ModelInfo | None, hardware: Any, context_length: int | None) -> None:
    """The variant the planner would run here: the best quality that fits on the GPU, else up to
    Q4_K_M in RAM (`app.runtime.planner.variants.choose_variant`)."""
    from app.runtime.planner import Variant, choose_variant

    rows = [r for r in report["results"] if r["kind"] == "gguf"]
    if not rows or info is None:
        return
    if hardware is None:
        from app.runtime.hardware import probe

        hardware = probe()
    try:
        choice = choose_variant([Variant(r["target"], r["file_size"], r["path"]) for r in rows], info, hardware, context_length)
    except RuntimeFailure as exc:
        report["recommended_reason"] = exc.message
        return
    report["recommended"] = choice.value["name"]
    report["recommended_reason"] = choice.reason
    for r in rows:
        r["recommended"] = r["target"] == choice.value["name"]
