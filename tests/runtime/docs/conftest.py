"""A collection made by the tests: made-up facts in every format (one PDF written here by hand),
distractors that share their words, and every kind of bad input the indexer must name and skip."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest



@dataclass(frozen=True)
class Fact:
    file: str  # relative to the corpus folder
    question: str
    needle: str  # words of the answer, found in the chunk that holds it
    page: int | None = None


FACTS = [
    Fact("notes/lighthouse.md", "What colour was the Vellmar lighthouse painted?", "ochre"),
    Fact("kitchen/jam.txt", "How much quince goes into grandmother Ilse's jam?", "400 grams"),
    Fact("web/ferry.html", "When does the Tarvik ferry leave the harbour?", "06:40"),
    Fact("reports/glacier.pdf", "How far did the Orlen glacier retreat?", "212 metres", page=2),
    Fact("club/minutes.docx", "Who was elected treasurer of the Halbrook rowing club?", "Nandakumar"),
    Fact("src/sensor.py", "How often does the Kestrel-7 sensor sample humidity?", "45 seconds"),
    Fact("src/README", "Where does Project Marmot keep its backups?", "Zennor volume"),
    Fact("notes/lighthouse.md", "Who was the keeper of the Vellmar lighthouse in 1931?", "Ansel Brodrick"),
]

FILLER = ("The weather along the coast changes quickly, and visitors are advised to bring warm clothes, "
          "check the tide tables, and ask at the harbour office before setting out. ")


def _filler(n: int) -> str:
    return "\n\n".join(FILLER * 3 for _ in range(n))


def write_corpus(root: Path) -> None:
    """The good files (facts and distractors) under ``root``."""
    files = {
        "notes/lighthouse.md": (
            "# Coastal notes\n\n" + _filler(2) + "\n\n## The Vellmar lighthouse\n\n"
            "The Vellmar lighthouse was painted ochre in 1931 by its keeper, Ansel Brodrick, who also\n"
            "kept bees in the garden below the tower.\n\n" + "```\nlamp = 'ochre'\n```\n\n" + _filler(2)),
        "notes/lighthouses-general.md": (
            "# Lighthouses\n\nMost lighthouses on this coast are painted white with a red band; keepers were "
            "replaced by automatic lamps in the 1980s.\n\n" + _filler(3)),
        "kitchen/jam.txt": (
            "Preserves\n\n" + _filler(1) + "\n\nGrandmother Ilse's quince jam needs 400 grams of quince,\n"
            "a pinch of cardamom and the juice of one lemon.\n\n" + _filler(2)),
        "kitchen/marmalade.txt": "Marmalade\n\nBitter oranges, sugar and patience: the jam of the north.\n\n" + _filler(2),
        "web/ferry.html": (
            "<html><head><title>Harbour timetable</title><style>p {color: red}</style></head><body>\n"
            "<h1>Ferries</h1>\n<p>" + FILLER + "</p>\n<h2>Tarvik</h2>\n<p>The Tarvik ferry leaves the harbour\n"
            "at 06:40 every Thursday &amp; returns at noon.</p>\n<script>var harbour = 1;</script>\n</body></html>\n"),
        "web/other-ferries.html": (
            "<html><body><h1>Other ferries</h1><p>The Brisk ferry leaves the harbour at 07:15 on weekdays.</p>"
            f"<p>{FILLER}</p></body></html>"),
        "src/sensor.py": (
            '"""Sensor drivers."""\n\nimport time\n\n\n# The Kestrel-7 sensor samples humidity every 45 seconds.\n'
            "KESTREL7_INTERVAL_S = 45\n\n\ndef read(bus):\n    return bus.read(0x40)\n"),
        "src/README": "Project Marmot\n\nProject Marmot keeps its backups on the Zennor volume, rotated weekly.\n",
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    glacier = text_pdf([
        ["Glacier survey 2019", "Summary of the field season.", FILLER[:90]],
        ["Results", "The Orlen glacier retreated 212 metres between 2004 and 2019.", "Snow cover was thin."],
        ["Appendix", "Instrument list and calibration notes."],
    ])
    (root / "reports").mkdir(parents=True, exist_ok=True)
    (root / "reports/glacier.pdf").write_bytes(glacier)
    (root / "reports/ice.pdf").write_bytes(text_pdf([["Ice cores", "Ice cores from the northern glacier hold 800 years of snow."]]))
    _docx(root / "club/minutes.docx", "Halbrook rowing club: annual meeting", [
        ("Attendance", "Fourteen members came; the boathouse roof was discussed at length."),
        ("Elections", "The committee elected Priya Nandakumar as treasurer of the Halbrook rowing club."),
    ])
    _docx(root / "club/chess.docx", "Chess club", [("Elections", "The chess club elected a new captain, Tomas Hale.")])


def _docx(path: Path, title: str, sections: list[tuple[str, str]]) -> None:
    import docx

    document = docx.Document()
    document.add_heading(title, level=1)
    for heading, text in sections:
        document.add_heading(heading, level=2)
        document.add_paragraph(text)
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "Next meeting", "March"
    path.parent.mkdir(parents=True, exist_ok=True)
    document.save(str(path))


BAD = {  # file or folder under bad/ -> a word its reason must hold
    "secret.pdf": "encrypted",
    "broken.pdf": "corrupt",
    "scan.pdf": "text layer",
    "photo.png": "binary",
    "table.xyz": "unknown type",
    "huge.txt": "size limit",
    "locked": "cannot be read",
    "damaged.docx": "Word document",
}
HUGE_BYTES = 3 * 2**30  # sparse: no disk is used


def write_bad_inputs(root: Path) -> Path:
    """Every bad input under ``root/bad``; returns the unreadable folder (mode 000)."""
    bad = root / "bad"
    bad.mkdir(parents=True, exist_ok=True)
    good_pdf = text_pdf([["A password protected page about the Orlen glacier."]])
    (bad / "secret.pdf").write_bytes(encrypted_pdf(good_pdf))
    (bad / "broken.pdf").write_bytes(good_pdf[: len(good_pdf) // 2])
    (bad / "scan.pdf").write_bytes(scanned_pdf(2))
    (bad / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    (bad / "table.xyz").write_text("name;value\nquince;400\n", encoding="utf-8")
    (bad / "damaged.docx").write_bytes(b"PK\x03\x04 this is not really a zip archive")
    with open(bad / "huge.txt", "wb") as fh:
        fh.truncate(HUGE_BYTES)
    locked = bad / "locked"
    locked.mkdir(exist_ok=True)
    (locked / "inside.txt").write_text("The Vellmar lighthouse keeper's diary.", encoding="utf-8")
    os.chmod(locked, 0)
    return locked


# ---- PDFs -------------------------------------------------------------------------------------------


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def text_pdf(pages: list[list[str]]) -> bytes:
    """A minimal valid PDF (Helvetica, one text line per entry) whose text pypdf extracts."""
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b"", b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for lines in pages:
        ops = ["BT", "/F1 11 Tf", "14 TL", "72 740 Td"]
        for line in lines:
            ops.append(f"({_escape(line)}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        content_id = len(objects)
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % content_id)
        kids.append(len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def encrypted_pdf(source: bytes, password: str = "s3cret") -> bytes:
    import pypdf

    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(source)))
    writer.encrypt(user_password=password, owner_password=password + "-owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def scanned_pdf(pages: int = 2) -> bytes:
    """Pages with no text at all, as a scan without OCR is."""
    import pypdf

    writer = pypdf.PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(612, 792)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# ---- fixtures ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    root: Path
    facts: list[Fact]
    bad: dict[str, str]
    locked: Path


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Corpus]:
    """The good files and the bad inputs in a fresh folder. Root lists any folder whatever its mode,
    so for root a folder without read permission is refused as the OS refuses it to everyone else."""
    root = tmp_path / "corpus"
    write_corpus(root)
    locked = write_bad_inputs(root)
    if os.geteuid() == 0:
        real = os.scandir

        def scandir(path: object = ".") -> object:
            where = os.fspath(path)  # type: ignore[arg-type]
            if os.path.isdir(where) and not os.stat(where).st_mode & 0o444:
                raise PermissionError(13, "Permission denied", where)
            return real(path)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "scandir", scandir)
    yield Corpus(root, FACTS, BAD, locked)
    os.chmod(locked, 0o700)


@pytest.fixture
def pdf_maker() -> object:
    """The hand-made PDF writer, for tests that want their own pages."""
    return text_pdf
