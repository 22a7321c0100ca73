"""What the engine calls: a reply's ``speculate`` mode to the drafter the token loop is given.

``lookup`` gives prompt lookup under the adaptive k; ``off`` gives none; ``draft:MODEL`` a draft
model from the library, checked to share the target's vocabulary (refused with the reason
otherwise), loaded when memory allows and placed by the planner (`planner.speculation.place_draft`),
and kept loaded between replies. ``auto`` looks in the library for a draft model (`pick`): a GGUF
at most `DRAFT_SIZE_RATIO` of the target's size with the same vocabulary (found once per target and
library, `candidates`) that fits in memory; the planner (`planner.speculation.choose_draft`) then
weighs its predicted speed-up (its token cost measured before, else estimated from the file sizes)
against prompt lookup's, and auto stays prompt lookup unless the draft wins. Either way the reply's
``speculation.plan`` reason says which draft was considered and why it was or was not used.

The engine turns the pick's placement into a Dovetail split (the target reloaded with fewer GPU
layers) before it asks for the drafter. `Speculators` is owned by the engine, which closes it
with the model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from app.runtime import library
from app.runtime.library import ModelInfo
from app.runtime.measurements import DRAFT_COST, VERIFY_COST, MeasurementStore
from app.runtime.planner import speculation as plan
from app.runtime.planner.speculation import VerifyCurve
from app.runtime.protocol import ErrorKind, RuntimeFailure
from app.runtime.spec.adaptive import AdaptiveDrafter
from app.runtime.spec.costs import cost_key
from app.runtime.spec.lookup import PromptLookup

log = logging.getLogger(__name__)

RAM_MARGIN = 512 * 2**20  # left free for everything else after a draft model loads
COST_CHANGE = 0.2  # a draft token's measured time is saved again when it moved by more than this share


class OffDrafter:
    """A drafter that says, at the reply's start, why it does not guess (no draft model fits, say)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def begin(self, kv: Any) -> dict[str, Any]:
        return {"on": False, "drafter": None, "reason": self.reason}

    def propose(self, tokens: Sequence[int], limit: int) -> list[int]:
        return []

    def observe(self, proposed: int, accepted: int) -> None:
        pass


class NotedDrafter(AdaptiveDrafter):
    """An `AdaptiveDrafter` whose plan reason ends with what auto decided about draft models (and
    the Dovetail split), so that the reply itself says why it drafts the way it does."""

    def __init__(self, inner: Any, *, note: str = "", **kwargs: Any) -> None:
        super().__init__(inner, **kwargs)
        self.note = note

    def begin(self, kv: Any) -> dict[str, Any]:
        out = super().begin(kv)
        if self.note:
            out["reason"] = f"{out['reason']}; {self.note}"
        return out


@dataclass(frozen=True)
class DraftPick:
    """The draft model one reply uses (``info`` None: prompt lookup), where it runs, auto's decision
    (None for ``draft:MODEL``) and the words the reply's plan reason ends with."""

    info: ModelInfo | None
    placement: plan.DraftPlacement | None = None
    auto: plan.AutoDraft | None = None
    note: str = ""


def check_mode(mode: str | None) -> tuple[str, str | None]:
    try:
        return plan.parse_mode(mode)
    except ValueError as exc:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, str(exc)) from exc


_UNSET: Any = object()


class Speculators:
    """The engine's speculation state: the loaded draft model (one at a time), vocabulary checks and
    auto's draft candidates (cached per target and library), and the draft auto took last."""

    def __init__(self, store: MeasurementStore | None) -> None:
        self.store = store
        self._draft: Any = None  # DraftModel
        self._vocab: dict[str, dict[str, Any]] = {}
        self._candidates: dict[str, tuple[Any, list[ModelInfo]]] = {}  # target path -> (library fingerprint, candidates)
        self._taken: dict[str, str] = {}  # target path -> the draft file auto uses for it
        self.overrides: dict[str, Any] = {}  # tests only: ``acceptance`` / ``cost`` for `plan.choose_draft`

    # ---- which draft --------------------------------------------------------------------------

    def pick(self, mode: str | None, *, target: ModelInfo, target_plan: Any = None, models: Sequence[ModelInfo] = (),
             curve: VerifyCurve | None = None, threads: int | None = None) -> DraftPick | None:
        """The draft model for ``mode`` (None: no draft model is asked about, ``off`` or ``lookup``).

        ``draft:MODEL`` is checked (a GGUF with the target's vocabulary; RuntimeFailure otherwise);
        ``auto`` searches ``models`` and asks the planner, with ``curve`` the target's verify-cost
        curve as loaded (None: not measured yet, so nothing is decided: a draft auto already uses
        stays, else lookup measures it in this reply)."""
        kind, name = check_mode(mode)
        if kind == "draft":
            assert name is not None
            info = library.resolve(name, list(models))
            self._check_draft(info, target)
            return DraftPick(info, self._place(info, target_plan))
        if kind != "auto":
            return None
        return self._auto(target, target_plan, models, curve, threads)

    def candidates(self, target: ModelInfo, models: Sequence[ModelInfo]) -> list[ModelInfo]:
        """Library models that could draft for ``target``, smallest first: GGUF chat models at most
        `DRAFT_SIZE_RATIO` of its size with the same vocabulary. Kept per target until the library's
        list changes; the size and vocabulary-size checks come first, so a vocabulary is read only for
        a file that passes them (and once per file: `vocabulary_mismatch` keeps what it read)."""
        fingerprint = tuple(sorted((m.path, m.file_size) for m in models if m.format == "gguf"))
        held = self._candidates.get(target.path)
        if held is not None and held[0] == fingerprint:
            return held[1]
        found = [m for m in sorted(models, key=lambda m: m.file_size)
                 if m.format == "gguf" and not m.embedding and m.path != target.path and m.vocab_size == target.vocab_size
                 and m.file_size <= target.file_size * plan.DRAFT_SIZE_RATIO]
        found = [m for m in found if self.vocabulary_mismatch(target, m) is None]
        self._candidates[target.path] = (fingerprint, found)
        return found

    def _auto(self, target: ModelInfo, target_plan: Any, models: Sequence[ModelInfo], curve: VerifyCurve | None,
              threads: int | None) -> DraftPick:
        found = self.candidates(target, models)
        if not found:
            self._taken.pop(target.path, None)
            return DraftPick(None, note=f"no draft model: no library model shares this model's vocabulary at most "
                                        f"{plan.DRAFT_SIZE_RATIO:.0%} of its size")
        options: list[tuple[plan.DraftOption, ModelInfo, plan.DraftPlacement]] = []
        refused: list[str] = []
        for info in found:
            placement = self._place(info, target_plan)
            no_room = self._no_room(info, placement)
            if no_room:
                refused.append(no_room)
                continue
            seconds = self._stored_seconds(info, placement, threads)
            cost, source = plan.draft_cost(draft_seconds=seconds, target_seconds=curve.seconds[1] if curve else None,
                                           draft_bytes=info.file_size, target_bytes=target.file_size)
            options.append((plan.DraftOption(info.id, cost, source), info, placement))
        if not options:
            self._taken.pop(target.path, None)
            return DraftPick(None, note="; ".join(refused))
        if curve is None:
            kept = next((o for o in options if o[1].path == self._taken.get(target.path)), None)
            if kept is not None:
                return DraftPick(kept[1], kept[2], note=f"draft model {kept[1].id} kept while this model's verify cost, as now "
                                                        "loaded, is measured")
            return DraftPick(None, note=f"draft model {options[0][1].id} considered from the next reply: this one measures the "
                                        "model's verify cost")
        decided = plan.choose_draft([o[0] for o in options], curve=curve, **self.overrides)
        if decided.draft is None:
            self._taken.pop(target.path, None)
            return DraftPick(None, auto=decided, note=decided.reason)
        _, info, placement = next(o for o in options if o[0].name == decided.draft.name)
        self._taken[target.path] = info.path
        return DraftPick(info, placement, decided, decided.reason)

    # ---- the drafter --------------------------------------------------------------------------

    def drafter(self, mode: str | None, *, backend: str, target: ModelInfo, target_plan: Any = None,
                models: Sequence[ModelInfo] = (), n_ctx: int = 2048, threads: int | None = None,
                attached: Sequence[int] = (), curve: VerifyCurve | None = None, pick: DraftPick | None = _UNSET) -> Any:
        """The drafter for one reply, or None (off, or a backend without this loop); ``pick`` as
        `pick` answered (the engine asks first, to apply a Dovetail split), else asked here."""
        kind, _ = check_mode(mode)
        if kind == "off" or backend != "llama.cpp":
            return None
        if pick is _UNSET:
            pick = self.pick(mode, target=target, target_plan=target_plan, models=models, curve=curve, threads=threads)
        if pick is None or pick.info is None:
            if kind == "auto":
                self.close()  # a draft model auto no longer uses frees its memory
            report = {"auto_draft": pick.auto.to_dict()} if pick is not None and pick.auto is not None else {}
            return NotedDrafter(PromptLookup(attached), note=pick.note if pick else "", mode=kind, kind="lookup", store=self.store,
                                report=report)
        return self._draft_drafter(pick, n_ctx=n_ctx, threads=threads)

    def _draft_drafter(self, pick: DraftPick, *, n_ctx: int, threads: int | None) -> Any:
        from app.runtime.spec.draft_model import DraftModel

        draft_info = pick.info
        assert draft_info is not None
        placement = pick.placement or plan.DraftPlacement("cpu", 0, None, "no plan")
        ctx = n_ctx + plan.K_MAX + 2
        settings = (str(draft_info.path), ctx, placement.n_gpu_layers, threads)
        current = self._draft
        if current is None or current.settings[:3] != settings[:3]:
            self.close()
            no_room = self._no_room(draft_info, placement)
            if no_room:
                return OffDrafter(no_room)
            self._draft = current = DraftModel(draft_info.path, n_ctx=ctx, n_gpu_layers=placement.n_gpu_layers, n_threads=threads)
            log.info("draft model %s loaded in %.2f s (%s)", draft_info.name, current.load_seconds, placement.reason)
        draft = current

        def relative_cost(me: AdaptiveDrafter) -> float:
            """A draft token over a target token, both measured on this machine (the draft's is saved)."""
            seconds = draft.cost_per_token()
            self._remember_seconds(draft, seconds)
            one = me.curve.seconds[1] if me.curve is not None else None
            return seconds / one if one else 1.0

        report: dict[str, Any] = {"placement": placement.to_dict()}
        if pick.auto is not None:
            report["auto_draft"] = pick.auto.to_dict()
        return NotedDrafter(draft, note=pick.note, mode=f"draft:{draft_info.id}", kind="draft", store=self.store,
                            draft_cost=relative_cost, report=report)

    # ---- checks and measurements --------------------------------------------------------------

    def _check_draft(self, draft_info: ModelInfo, target: ModelInfo) -> None:
        if draft_info.format != "gguf":
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{draft_info.name} cannot be a draft model: the llama.cpp backend needs a GGUF file.")
        mismatch = self.vocabulary_mismatch(target, draft_info)
        if mismatch:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS,
                                 f"{draft_info.name} cannot draft for {target.name}: {mismatch}. A draft model must share the model's vocabulary "
                                 "(a smaller model of the same family).")

    @staticmethod
    def _place(draft_info: ModelInfo, target_plan: Any) -> plan.DraftPlacement:
        if target_plan is None:
            return plan.DraftPlacement("cpu", 0, None, "no plan")
        return plan.place_draft(target_plan, draft_info.file_size)

    @staticmethod
    def _no_room(draft_info: ModelInfo, placement: plan.DraftPlacement) -> str | None:
        """Why the draft cannot load now (no room in the plan, or not enough free RAM), or None."""
        if placement.device == "none":
            return f"the draft model {draft_info.name} does not fit: {placement.reason}"
        free = psutil.virtual_memory().available
        if placement.device == "cpu" and free < draft_info.file_size + RAM_MARGIN:
            return f"the draft model {draft_info.name} needs {draft_info.file_size / 2**20:.0f} MiB and {free / 2**20:.0f} MiB of RAM is free"
        return None

    def stored_curve(self, path: str | Path, n_gpu_layers: int, threads: int | None) -> VerifyCurve | None:
        """The target's verify-cost curve, when measured before for it as loaded this way."""
        saved = self.store.get(VERIFY_COST, cost_key(path, n_gpu_layers, threads)) if self.store is not None else None
        try:
            return VerifyCurve.from_dict(saved) if saved else None
        except (KeyError, TypeError, ValueError):
            return None

    def _stored_seconds(self, info: ModelInfo, placement: plan.DraftPlacement, threads: int | None) -> float | None:
        saved = self.store.get(DRAFT_COST, cost_key(info.path, placement.n_gpu_layers, threads)) if self.store is not None else None
        return float(saved["seconds_per_token"]) if isinstance(saved, dict) and saved.get("seconds_per_token") else None

    def _remember_seconds(self, draft: Any, seconds: float) -> None:
        """Save a draft token's time for auto's next decision (only when it moved: the store is a file)."""
        if self.store is None or seconds <= 0:
            return
        path, _, ngl, threads = draft.settings
        key = cost_key(path, ngl, threads)
        saved = self.store.get(DRAFT_COST, key)
        before = float(saved.get("seconds_per_token") or 0) if isinstance(saved, dict) else 0.0
        if not before or abs(seconds - before) > COST_CHANGE * before:
            self.store.put(DRAFT_COST, {"seconds_per_token": seconds}, key=key)

    def vocabulary_mismatch(self, target: ModelInfo, draft: ModelInfo) -> str | None:
        from app.runtime.spec.draft_model import vocabulary, vocabulary_mismatch

        prints = []
        for info in (target, draft):
            if info.path not in self._vocab:
                try:
                    self._vocab[info.path] = vocabulary(info.path)
                except ValueError as exc:
                    return str(exc)
            prints.append(self._vocab[info.path])
        return vocabulary_mismatch(prints[0], prints[1])

    def close(self) -> None:
        draft, self._draft = self._draft, None
        if draft is not None:
            draft.close()
