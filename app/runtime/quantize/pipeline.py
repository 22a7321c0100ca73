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
2. with ``imatrix="auto"`` and a GGUF target of 4 bits or less, Hearth's importance matrix of the
   source (`app.runtime.quantize.imatrix`, a child job, cached per model and calibration);
3. each GGUF target is quantized from the reference (an already-quantized GGUF source is
   requantized, with a warning), weighted by the importance matrix where one is used; each torch
   target is made from the HF weights by GPTQ (``torch_method="gptq"``, calibrated on the same
   text) or by rounding to nearest (``"rtn"``);
4. with ``evaluate``, the reference and every output are measured on the same held-out tokens (the
   figures are kept in the measurement store for the next recommendation);
5. the smallest variant that fits this machine and keeps the mean KL divergence within 0.01 is
   recommended (`app.runtime.quantize.recommend`); the outputs are moved into place.

Each result row says how it was made: ``imatrix`` (whether an importance matrix weighed it) and
``algorithm`` (``llama.cpp`` for GGUF types, ``gptq`` or ``rtn`` for the torch schemes).
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
from app.runtime.outputs import check_output_folder
from app.runtime.protocol import ErrorKind, JobStatus, RuntimeFailure
from app.runtime.quantize import safety
from app.runtime.quantize import targets as registry
from app.runtime.quantize.safety import Source
from app.runtime.quantize.targets import Target

log = logging.getLogger(__name__)

PENDING = ".pending"
AUTO, NONE = "auto", "none"  # the importance-matrix modes besides a file
TORCH_METHODS = ("gptq", "rtn")


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
    imatrix: str | Path | None = AUTO,
    calibration: str | Path | None = None,
    calibration_chunks: int | None = None,
    torch_method: str = "gptq",
    hardware: Any = None,
    context_length: int | None = None,
    measurements: Any = None,
) -> dict[str, Any]:
    """Quantize ``source`` (an HF folder or a GGUF file) to each of ``targets``; the report.

    ``imatrix``: "auto" (measure, or reuse the cached, importance matrix for every GGUF type of 4
    bits or less), "none" (or None: plain llama.cpp types; the types that need one are refused),
    or an importance-matrix file (llama-imatrix's GGUF or .dat), used for every quantized type.
    ``calibration``: a text file for the importance matrix and GPTQ (default: the shipped text);
    ``calibration_chunks``: how many 512-token chunks of it (default 8 for the imatrix, 16 for GPTQ).
    ``torch_method``: "gptq" or "rtn" for the torch targets. ``measurements``: the store the
    evaluation's figures are kept in (None: not kept).

    Raises `JobStopped` (cancelled, nothing added to the library) after a cancel or a pause.
    """
    from app.paths import paths

    src = safety.inspect_source(source)
    wanted = registry.parse(targets)
    if torch_method not in TORCH_METHODS:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"Unknown torch quantization method {torch_method!r}; choose {' or '.join(TORCH_METHODS)}.")
    mode, given = imatrix_mode(imatrix)
    output_dir = Path(output_dir) if output_dir is not None else paths().models
    check_output_folder(output_dir, what="the quantized models")  # a file or an unwritable place: one sentence, before any work
    output_dir.mkdir(parents=True, exist_ok=True)
    safety.sweep_stale(output_dir)
    gguf_targets = [t for t in wanted if t.kind == "gguf"]
    torch_targets = [t for t in wanted if t.kind == "torch"]
    weighted = {t.name: uses_imatrix(t, mode) for t in gguf_targets}
    for t in gguf_targets:
        if t.needs_imatrix and not weighted[t.name]:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{t.name} needs an importance matrix (llama.cpp refuses it without one). Use --imatrix auto (Hearth measures one) or give a file, or choose Q2_K or larger.")
    measure_imatrix = mode == AUTO and any(weighted.values())
    expected = {t.name: registry.estimate_size(t, src.tensors) for t in wanted}
    convert = src.kind == "hf" and bool(gguf_targets)
    reference_type = "BF16" if src.file_type == "BF16" else "F16"
    need = sum(expected.values()) + (registry.estimate_size(registry.get(reference_type), src.tensors) if convert else 0)
    safety.check_free_space(output_dir, need, f"Quantizing {src.name} to {', '.join(t.name for t in wanted)}")

    steps = int(convert) + int(measure_imatrix) + len(wanted) + int(evaluate and bool(gguf_targets)) + int(evaluate and bool(torch_targets)) + 1
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
        imatrix_file, imatrix_report = given, ({"path": str(given), "made": "given"} if given is not None else None)
        if measure_imatrix:
            step.begin(f"Measuring the importance matrix of {src.name}")
            imatrix_file, imatrix_report = _auto_imatrix(src, step, calibration, calibration_chunks)
        for t in gguf_targets:
            step.check()
            step.begin(f"Quantizing to {t.name}")
            if convert and t.name == reference_type:
                made[t.name] = reference  # the converted reference is itself the F16/BF16 output
                continue
            from app.runtime.quantize.gguf import quantize_gguf

            made[t.name] = quantize_gguf(reference, work / f"{src.name}.{t.name}.gguf{PENDING}", t.name, state=step,
                                         imatrix=imatrix_file if weighted[t.name] else None)
        torch_made = _torch_targets(src, torch_targets, work, step, evaluate=evaluate, eval_tokens=eval_tokens, method=torch_method,
                                    calibration=calibration, calibration_chunks=calibration_chunks)
        report = _report(src, wanted, made, expected, weighted)
        report["imatrix"] = imatrix_report if any(weighted.values()) else None
        if evaluate and gguf_targets:
            step.begin("Measuring quality and speed")
            _evaluate_gguf(src, reference, report, work, step, eval_tokens)
        report["results"] += torch_made
        step.check()
        step.begin("Adding the results to the library")
        info = _publish(report, output_dir)
        if evaluate:
            from app.runtime.quantize.recommend import remember

            remember(measurements, src.path, src.size, report["results"])
        _recommend(report, info or src.info or _shape_of(src), hardware, context_length)
    except BaseException:
        safety.remove(work)
        raise
    safety.remove(work)
    report["seconds"] = round(time.monotonic() - started, 1)
    report["output_dir"] = str(output_dir)
    return report


def imatrix_mode(imatrix: str | Path | None) -> tuple[str, Path | None]:
    """``("auto"|"none"|"file", the file)`` from what a caller passed (None means "none")."""
    if imatrix is None or str(imatrix).strip().lower() in (NONE, ""):
        return NONE, None
    if isinstance(imatrix, str) and imatrix.strip().lower() == AUTO:
        return AUTO, None
    path = Path(imatrix).expanduser()
    if not path.is_file():
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"There is no importance matrix file at {path}. Use auto (Hearth measures one), none, or a file from `hearth imatrix` or llama-imatrix.")
    return "file", path


def uses_imatrix(target: Target, mode: str) -> bool:
    """Whether ``target`` is made with an importance matrix in this mode: "auto" for the types of
    4 bits or less (`Target.imatrix_auto`); a given file for every type llama.cpp weighs with it
    (those below 8 bits: Q8_0 and the float types ignore it)."""
    if target.kind != "gguf" or mode == NONE:
        return False
    if mode == AUTO:
        return target.imatrix_auto
    return target.bits is not None and target.bits < 8


def _auto_imatrix(src: Source, step: StepState, calibration: str | Path | None, chunks: int | None) -> tuple[Path, dict[str, Any]]:
    """Hearth's importance matrix of the source, from the cache when this model and calibration
    were measured before (a child job otherwise)."""
    from app.runtime.quantize.imatrix import DEFAULT_CHUNKS, cached_imatrix, cached_path

    cached = cached_path(src.path, data=calibration, chunks=chunks).is_file()
    path = cached_imatrix(src.path, data=calibration, chunks=chunks, ctx=step)
    step.log(f"{'Reusing the cached' if cached else 'Measured the'} importance matrix {path}")
    return path, {"path": str(path), "made": "cached" if cached else "measured", "chunks": int(chunks or DEFAULT_CHUNKS),
                  "calibration": str(calibration) if calibration else "shipped"}


def _report(src: Source, wanted: list[Target], made: dict[str, Path], expected: dict[str, int], weighted: dict[str, bool]) -> dict[str, Any]:
    rows = []
    for t in wanted:
        if t.name in made:
            rows.append({"target": t.name, "kind": "gguf", "path": str(made[t.name]), "file_size": made[t.name].stat().st_size, "expected_size": expected[t.name],
                         "imatrix": weighted.get(t.name, False), "algorithm": "llama.cpp"})
    return {
        "source": {"path": str(src.path), "kind": src.kind, "name": src.name, "file_type": src.file_type, "file_size": src.size},
        "warnings": list(src.warnings),
        "reference": None,
        "results": rows,
        "recommended": None,
        "recommended_reason": "",
        "imatrix": None,  # the importance matrix used: path, made (measured / cached / given), chunks, calibration
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


def _torch_targets(src: Source, wanted: list[Target], work: Path, step: StepState, *, evaluate: bool, eval_tokens: int | None,
                   method: str = "gptq", calibration: str | Path | None = None, calibration_chunks: int | None = None) -> list[dict[str, Any]]:
    """Each torch scheme through torch_quant (GPTQ or rounding), measured against the fp32 source when asked."""
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
    windows: list[list[int]] | None = None
    if method == "gptq":
        from app.runtime.quantize.gptq import DEFAULT_CHUNKS, calibration_windows

        windows = calibration_windows(folder, data=str(calibration) if calibration else None, chunks=int(calibration_chunks or DEFAULT_CHUNKS))
    for t in wanted:
        step.check()
        step.begin(f"Quantizing to {t.name} (torch, {'GPTQ' if method == 'gptq' else 'round to nearest'})")
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        model = torch_quant.quantize_model(model, t.name, method=method, calibration=windows, ctx=step) or model
        out = work / f"{src.name}-{t.name}"
        torch_quant.save_quantized(model, out, t.name)
        _copy_tokenizer(folder, out)
        del model
        row: dict[str, Any] = {"target": t.name, "kind": "torch", "path": str(out), "file_size": _folder_size(out), "imatrix": False, "algorithm": method}
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


def _shape_of(src: Source) -> ModelInfo | None:
    """The planner's view of an HF source (for a run that made only torch targets)."""
    from app.runtime.library import read_hf_folder

    try:
        return read_hf_folder(src.path, source="folder") if src.kind == "hf" else None
    except RuntimeFailure as exc:
        log.warning("no recommendation: %s", exc.message)
        return None


def _recommend(report: dict[str, Any], info: ModelInfo | None, hardware: Any, context_length: int | None) -> None:
    """The smallest result that fits this machine and keeps the mean KL divergence within the
    limit, judged from this run's measurements when it measured (`app.runtime.quantize.recommend`).
    GGUF results are weighed when there are any (the llama.cpp backend runs them); else the torch ones."""
    from app.runtime.quantize.recommend import Offer, recommend_here

    rows = [r for r in report["results"] if r["kind"] == "gguf"] or report["results"]
    if not rows or info is None:
        return
    if hardware is None:
        from app.runtime.hardware import probe

        hardware = probe()
    offers = [Offer(r["target"], int(r["file_size"]), bool(r.get("imatrix") or r.get("algorithm") == "gptq"), r.get("kl_mean")) for r in rows]
    choice = recommend_here(offers, info, hardware, context_length)
    report["recommended_reason"] = choice.reason
    if choice.value is None:
        return
    report["recommended"] = choice.value["name"]
    for r in rows:
        r["recommended"] = r["target"] == choice.value["name"]
