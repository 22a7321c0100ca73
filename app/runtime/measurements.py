"""One store for everything Hearth measures about this machine, stamped with the machine and date.

Benches write it (`hearth bench`, `hearth bench kv`, `hearth bench kernels`, the hardware probe's
RAM copy, the torch plan's matrix-vector timing); the planner receives it as an argument and
reads values from it, never a file. An entry is keyed by its kind, a sub-key (a shape, a model)
and the `Machine` it was taken on: CPU model and cores, RAM, GPUs and driver, llama.cpp and torch
versions. An entry taken on another machine, or under other versions, is *stale*: ``get`` ignores
it, ``entries`` still lists it (``hearth bench --list``) until ``forget`` clears it.

`FileMeasurementStore` keeps one JSON file in the user cache folder, written whole through a temp
file and ``os.replace``, under one lock per file for threads; the first time it opens, the five
files that Hearth wrote before the store existed are moved into it. `MemoryMeasurementStore` has
the same interface and touches no file: tests hand it to the planner.

This module imports nothing from the runtime (the hardware probe imports it), so any module may
use it without an import cycle.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The kinds of measurement, one name each (the file and `hearth bench --forget KIND` use them).
RAM_BANDWIDTH = "ram_bandwidth"  # key "": {"bytes_per_s": int}
CALIBRATION = "calibration"  # key "": {"calibration": Calibration.to_dict(), "report": {...}} (llama.cpp speed model)
CPU_DTYPE_SPEED = "cpu_dtype_speed"  # key "ROWSxCOLS": {"float32": GB/s, "bfloat16": GB/s, "<dtype>_matvec_per_s": ...}
KERNEL_SPEEDUP = "kernel_speedup"  # key "": {"cpu_decode_speedup": {scheme: x fp32}, "cpu_compute_dtype": str}
KV_RANKING = "kv_ranking"  # key "": {"best": policy, "reason": str, "mean_ratio_to_full": {...}, "best_per_budget": {...}}
VERIFY_COST = "verify_cost"  # key "MODEL FILE|ngl N|t N": VerifyCurve.to_dict() (speculation: n tokens in one batch; app.runtime.spec.costs)
DRAFT_COST = "draft_cost"  # key "DRAFT FILE|ngl N|t N": {"seconds_per_token": float} (a draft model's token; app.runtime.spec.setup)
QUANT_QUALITY = "quant_quality"  # key "SOURCE PATH|SIZE": {"Q4_K_M+imatrix": {"kl_mean", "ppl_change_pct", ...}} (hearth quantize --eval)
KINDS = (RAM_BANDWIDTH, CALIBRATION, CPU_DTYPE_SPEED, KERNEL_SPEEDUP, KV_RANKING, VERIFY_COST, DRAFT_COST, QUANT_QUALITY)

FILE_NAME = "measurements.json"
FORMAT = 1


def _version(distribution: str) -> str | None:
    """An installed package's version from its metadata: no import (importing torch costs a second)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Machine:
    """What a measurement depends on: a change in any of these makes an old figure unreliable."""

    cpu: str
    cores: int
    ram: int  # bytes
    gpus: tuple[str, ...] = ()
    driver: str | None = None  # the GPU driver's version; None without a GPU
    llama_cpp: str | None = None
    torch: str | None = None

    @classmethod
    def of(cls, hw: Any, *, driver: str | None = None) -> Machine:
        """This process's machine, from a `Hardware` probe (attributes only: no import of hardware)
        and the installed llama-cpp-python and torch versions."""
        return cls(
            cpu=str(hw.cpu_name),
            cores=int(hw.cpu_cores_physical),
            ram=int(hw.ram_total),
            gpus=tuple(str(g.name) for g in hw.gpus),
            driver=driver,
            llama_cpp=_version("llama_cpp_python"),
            torch=_version("torch"),
        )

    def describes(self, hw: Any) -> bool:
        """Whether ``hw`` is this machine as probed (not a hardware profile, not another machine):
        only then do figures measured here apply to a plan for it."""
        return (
            getattr(hw, "source", "probe") == "probe"
            and (str(hw.cpu_name), int(hw.cpu_cores_physical), int(hw.ram_total), tuple(str(g.name) for g in hw.gpus))
            == (self.cpu, self.cores, self.ram, self.gpus)
        )

    def differences(self, other: Machine) -> list[str]:
        """The fields in which ``other`` differs from this machine, by name (why an entry is stale)."""
        return [name for name, value in asdict(self).items() if asdict(other)[name] != value]

    def summary(self) -> str:
        gpus = ", ".join(self.gpus) or "no GPU"
        versions = f"llama.cpp {self.llama_cpp or '-'}, torch {self.torch or '-'}"
        return f"{self.cpu} ({self.cores} cores, {self.ram / 2**30:.0f} GiB), {gpus}{f' driver {self.driver}' if self.driver else ''}; {versions}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gpus"] = list(self.gpus)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Machine:
        return cls(
            cpu=str(data["cpu"]), cores=int(data["cores"]), ram=int(data["ram"]), gpus=tuple(str(g) for g in data.get("gpus") or ()),
            driver=data.get("driver"), llama_cpp=data.get("llama_cpp"), torch=data.get("torch"),
        )


@dataclass(frozen=True)
class Entry:
    """One measurement: ``value`` is JSON (numbers, strings, lists, dicts); ``taken`` an ISO date."""

    kind: str
    key: str
    value: Any
    machine: Machine
    taken: str
    stale: bool = False  # set when listed: taken on another machine or under other versions
    why_stale: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "value": self.value, "machine": self.machine.to_dict(), "taken": self.taken}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        return cls(kind=str(data["kind"]), key=str(data.get("key", "")), value=data["value"],
                   machine=Machine.from_dict(data["machine"]), taken=str(data["taken"]))

    def value_summary(self, width: int = 70) -> str:
        text = json.dumps(self.value, separators=(",", ":"), sort_keys=True)
        return text if len(text) <= width else text[: width - 3] + "..."


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class MeasurementStore(ABC):
    """The interface the planner, the benches and the CLI use; ``machine`` is where this process runs."""

    def __init__(self, machine: Machine | Callable[[], Machine]) -> None:
        self._machine_source = machine
        self._machine: Machine | None = machine if isinstance(machine, Machine) else None
        self._lock: Any = threading.RLock()

    @property
    def machine(self) -> Machine:
        """This machine (worked out on first use: it may probe the GPUs)."""
        if self._machine is None:
            source = self._machine_source
            self._machine = source if isinstance(source, Machine) else source()
        return self._machine

    def describes(self, hw: Any) -> bool:
        """Whether figures from this store apply to a plan for ``hw`` (this machine, probed)."""
        return self.machine.describes(hw)

    # -- what an implementation provides ------------------------------------------------------------
    @abstractmethod
    def _read(self) -> list[Entry]:
        """Every entry held, in the order written."""

    @abstractmethod
    def _write(self, entries: list[Entry]) -> None:
        """Replace every entry at once."""

    # -- the interface --------------------------------------------------------------------------------
    def get(self, kind: str, key: str = "") -> Any | None:
        """The value measured on this machine with these versions, or None (never measured, or stale)."""
        machine = self.machine
        with self._lock:
            found = [e for e in self._read() if e.kind == kind and e.key == key and e.machine == machine]
        return found[-1].value if found else None

    def put(self, kind: str, value: Any, *, key: str = "", taken: str | None = None) -> Entry:
        """Save ``value`` as this machine's ``kind``/``key``, replacing the one taken here before;
        entries from other machines stay (listed as stale) until forgotten."""
        json.dumps(value)  # refuse what the file could not hold, before touching it
        entry = Entry(kind, key, value, self.machine, taken or _now())
        with self._lock:
            kept = [e for e in self._read() if not (e.kind == kind and e.key == key and e.machine == entry.machine)]
            self._write([*kept, entry])
        log.info("measured %s%s on this machine: %s", kind, f" [{key}]" if key else "", entry.value_summary())
        return entry

    def entries(self) -> list[Entry]:
        """Every entry, current or stale, each with ``stale`` and what differs."""
        machine = self.machine
        with self._lock:
            held = self._read()
        return [replace(e, stale=e.machine != machine, why_stale=tuple(machine.differences(e.machine))) for e in held]

    def forget(self, kind: str | None = None) -> int:
        """Remove every entry (``kind`` None) or every entry of one kind; how many went."""
        with self._lock:
            held = self._read()
            kept = [e for e in held if kind is not None and e.kind != kind]
            if len(kept) != len(held):
                self._write(kept)
        return len(held) - len(kept)


class MemoryMeasurementStore(MeasurementStore):
    """A store in memory, for tests: the same interface, no file."""

    def __init__(self, machine: Machine | Callable[[], Machine], entries: Iterable[Entry] = ()) -> None:
        super().__init__(machine)
        self._entries = list(entries)

    def _read(self) -> list[Entry]:
        return list(self._entries)

    def _write(self, entries: list[Entry]) -> None:
        self._entries = list(entries)


_FILE_LOCKS: dict[Path, Any] = {}
_FILE_LOCKS_GUARD = threading.Lock()


class FileMeasurementStore(MeasurementStore):
    """The store in one JSON file, re-read when another process has changed it; every write is the
    whole file through a temp file and ``os.replace``, so a reader never sees half of one."""

    def __init__(self, path: Path, machine: Machine | Callable[[], Machine], *, import_legacy: bool = True) -> None:
        super().__init__(machine)
        self.path = Path(path)
        with _FILE_LOCKS_GUARD:  # two stores on one file in one process share its lock
            self._lock = _FILE_LOCKS.setdefault(self.path.resolve(), threading.RLock())
        self._cache: tuple[float, list[Entry]] | None = None
        self._import_legacy = import_legacy
        self._imported: dict[str, int] = {}  # old files read but left in place (another module still reads them): name -> mtime_ns

    @classmethod
    def default(cls, machine: Machine | Callable[[], Machine]) -> FileMeasurementStore:
        """The user's store, in the cache folder where the five older files lived."""
        from app.paths import paths

        return cls(paths().cache / FILE_NAME, machine)

    def _read(self) -> list[Entry]:
        if self._import_legacy:
            self._import_legacy = False
            self._move_legacy_files()
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return []
        if self._cache is not None and self._cache[0] == mtime:
            return list(self._cache[1])
        entries = self._parse()
        self._cache = (mtime, entries)
        return list(entries)

    def _parse(self) -> list[Entry]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            rows = data["entries"] if isinstance(data, dict) else []
            self._imported = {str(k): int(v) for k, v in (data.get("imported") or {}).items()} if isinstance(data, dict) else {}
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("unreadable measurement store %s: starting an empty one", self.path, exc_info=True)
            return []
        entries = []
        for row in rows:
            try:
                entries.append(Entry.from_dict(row))
            except (KeyError, TypeError, ValueError):
                log.warning("skipping an unreadable measurement: %r", row)
        return entries

    def _write(self, entries: list[Entry]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"format": FORMAT, "entries": [e.to_dict() for e in entries], "imported": self._imported}, indent=2) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._cache = (self.path.stat().st_mtime_ns, list(entries))

    def _move_legacy_files(self) -> None:
        """Read the files Hearth kept before this store, once: their figures come in stamped with
        this machine (they were taken here), and each file is renamed so it is not read again."""
        folder = self.path.parent
        found = [(old, folder / old.name) for old in LEGACY_FILES if (folder / old.name).is_file()]
        if not found:
            return
        held = self._parse() if self.path.is_file() else []
        added = 0
        for old, path in found:
            mtime = path.stat().st_mtime_ns
            if not old.rename and self._imported.get(old.name) == mtime:
                continue  # read before, unchanged since
            try:
                taken = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
                rows = old.read(json.loads(path.read_text(encoding="utf-8")), self.machine)
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                log.warning("could not read the old measurement file %s; it is left out", path, exc_info=True)
                rows = []
            for kind, key, value in rows:
                same = [e for e in held if e.kind == kind and e.key == key and e.machine == self.machine]
                if same and old.rename:
                    continue  # the store's own figure is newer than a file it replaced
                held = [e for e in held if e not in same] + [Entry(kind, key, value, self.machine, taken)]
                added += 1
            if not old.rename:
                self._imported[old.name] = mtime
                added += 1  # the mark must be written even when nothing new came in
            else:
                try:
                    path.rename(path.with_name(path.name + ".imported"))
                except OSError:
                    log.warning("could not rename %s after importing it", path, exc_info=True)
            log.info("read %s into the measurement store (%d entries)", path, len(rows))
        if added:
            self._write(held)


# -- the five files Hearth kept its measurements in before this store -----------------------------
# Each is read once, in the store's folder (the user cache); only the figures taken on this machine
# come in (each file carried its own machine key, or none), and the file is renamed NAME.imported.
Row = tuple[str, str, Any]  # kind, key, value


def _ram_bandwidth(data: dict[str, Any], machine: Machine) -> list[Row]:
    """{"key": "CPU|RAM", "bytes_per_s": int}"""
    if data.get("key") != f"{machine.cpu}|{machine.ram}":
        return []
    return [(RAM_BANDWIDTH, "", {"bytes_per_s": int(data["bytes_per_s"])})]


def _calibration(data: dict[str, Any], machine: Machine) -> list[Row]:
    """{"machine": "CPU|CORES|RAM|GPU,GPU", "calibration": {...}, "report": {...}}"""
    if data.get("machine") != f"{machine.cpu}|{machine.cores}|{machine.ram}|{','.join(machine.gpus)}":
        return []
    return [(CALIBRATION, "", {"calibration": dict(data["calibration"]), "report": dict(data.get("report") or {})})]


def _dtype_speed(data: dict[str, Any], machine: Machine) -> list[Row]:
    """{"CPU|CORES|ROWSxCOLS": {"float32": ..., "bfloat16": ..., ...}, ...}"""
    prefix = f"{machine.cpu}|{machine.cores}|"
    return [(CPU_DTYPE_SPEED, key[len(prefix):], {str(k): float(v) for k, v in value.items()})
            for key, value in data.items() if key.startswith(prefix) and isinstance(value, dict)]


def _kernels(data: dict[str, Any], machine: Machine) -> list[Row]:
    """`hearth bench kernels`' whole report; the store keeps what the planner and loader use."""
    speedups = data.get("cpu_decode_speedup")
    if not isinstance(speedups, dict):
        return []
    return [(KERNEL_SPEEDUP, "", {"cpu_decode_speedup": {str(k): float(v) for k, v in speedups.items()},
                                  "cpu_compute_dtype": str(data.get("cpu_compute_dtype") or "float32")})]


def _kv(data: dict[str, Any], machine: Machine) -> list[Row]:
    """`hearth bench kv`'s whole report; the store keeps its ranking."""
    return [(KV_RANKING, "", kv_ranking(data))]


def kv_ranking(report: dict[str, Any]) -> dict[str, Any]:
    """The part of a KV bench report (or its ``summarise``) that the planner reads."""
    best = report["best_overall"]
    return {"best": str(best["policy"]), "reason": str(best["reason"]),
            "mean_ratio_to_full": dict(report.get("mean_ratio_to_full") or {}),
            "best_per_budget": dict(report.get("best_per_budget") or {})}


@dataclass(frozen=True)
class LegacyFile:
    name: str  # relative to the cache folder
    read: Callable[[dict[str, Any], Machine], list[Row]]
    rename: bool = True  # False while another module still reads the file itself


LEGACY_FILES = (
    LegacyFile("ram-bandwidth.json", _ram_bandwidth),
    LegacyFile("planner-calibration.json", _calibration),
    LegacyFile("torch-dtype-speed.json", _dtype_speed),
    # quantize/torch_quant still writes this file and reads its cpu_compute_dtype when a model
    # loads; it moves to the store with that module, and until then it is read, not renamed.
    LegacyFile("kernels-bench.json", _kernels, rename=False),
    LegacyFile("bench/kv.json", _kv),
)


__all__ = [
    "CALIBRATION", "CPU_DTYPE_SPEED", "DRAFT_COST", "KERNEL_SPEEDUP", "KINDS", "KV_RANKING", "QUANT_QUALITY", "RAM_BANDWIDTH", "VERIFY_COST",
    "Entry", "FileMeasurementStore", "kv_ranking", "Machine", "MeasurementStore", "MemoryMeasurementStore",
]
