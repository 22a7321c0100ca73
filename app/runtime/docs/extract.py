"""Text out of a document, as blocks that keep the document's structure and where they came from.

A block is a heading, a paragraph, a code block or a table row group; it knows its page (PDF) and
its first and last line (paragraph numbers for DOCX, which has no lines). Chunking (`chunk`) works
on blocks, so a chunk never straddles a heading or a page.

Every reason a file cannot be read is an `Unreadable` with words a person can act on (an encrypted
PDF, a scanned PDF without a text layer, a corrupt file, a binary file, an unknown type); the
indexer names the file and the reason in its report and goes on with the rest.

Light libraries only: pypdf for PDF and python-docx for DOCX, imported when such a file comes.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

log = logging.getLogger(__name__)

MARKDOWN = {".md", ".markdown", ".mdown", ".mkd"}
TEXT = {".txt", ".text", ".rst", ".log", ".csv", ".tsv", ".org", ".adoc", ".tex"}
HTML = {".html", ".htm", ".xhtml"}
CODE = {
    ".py", ".pyi", ".js", ".mjs", ".ts", ".tsx", ".jsx", ".c", ".h", ".cc", ".cpp", ".cxx", ".hpp",
    ".cu", ".rs", ".go", ".java", ".kt", ".swift", ".rb", ".php", ".cs", ".scala", ".lua", ".r",
    ".jl", ".sh", ".bash", ".zsh", ".ps1", ".sql", ".json", ".yaml", ".yml", ".toml", ".ini", ".cfg",
    ".xml", ".css", ".scss", ".vue", ".svelte", ".m", ".mm", ".pl", ".hs", ".ex", ".exs", ".dart",
    ".zig", ".nim", ".proto", ".graphql", ".cmake", ".mk",
}
CODE_NAMES = {"makefile", "dockerfile", "gemfile", "rakefile", "vagrantfile", "justfile"}
KINDS = ("pdf", "docx", "markdown", "html", "text", "code")
SNIFF_BYTES = 8192


class Unreadable(Exception):
    """A file that is skipped, and why (the message is shown to the person as it is)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Block:
    text: str
    kind: str  # "heading" | "paragraph" | "code" | "table"
    line_start: int
    line_end: int
    page: int | None = None
    level: int = 0  # a heading's level (1 = top)


def kind_of(path: Path) -> str | None:
    """The extractor a file's name asks for; None for a name Hearth does not know."""
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return "pdf"
    if suffix == ".docx":
        return "docx"
    if suffix in MARKDOWN:
        return "markdown"
    if suffix in HTML:
        return "html"
    if suffix in TEXT:
        return "text"
    if suffix in CODE or path.name.lower() in CODE_NAMES:
        return "code"
    if suffix == "":
        return "text"  # README, NOTES...: read as text when the bytes are text (else "binary")
    return None


def extract(path: Path, kind: str) -> list[Block]:
    """The blocks of ``path`` read as ``kind`` (see `kind_of`); raises `Unreadable`."""
    if kind == "pdf":
        return _pdf(path)
    if kind == "docx":
        return _docx(path)
    text = read_text(path)
    if kind == "markdown":
        return markdown_blocks(text)
    if kind == "html":
        return html_blocks(text)
    if kind == "code":
        return code_blocks(text)
    return text_blocks(text)


def unknown_type(path: Path) -> Unreadable:
    """The reason for a name `kind_of` does not know: binary content, or text of an unknown type."""
    with open(path, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
    if looks_binary(head):
        return Unreadable(f"binary file ({path.suffix or 'no extension'}), not a document")
    return Unreadable(f"unknown type {path.suffix!r}: Hearth reads PDF, DOCX, Markdown, HTML, text and source code")


def looks_binary(head: bytes) -> bool:
    """NUL bytes, or many control characters, in the first bytes: not text."""
    if b"\x00" in head:
        return True
    if not head:
        return False
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13, 27))
    return controls / len(head) > 0.05


def read_text(path: Path) -> str:
    """A text file's content: UTF-8 (with or without BOM), else Windows-1252; binary is refused."""
    data = path.read_bytes()
    if looks_binary(data[:SNIFF_BYTES]):
        raise Unreadable(f"binary file ({path.suffix or 'no extension'}), not text")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding).replace("\r\n", "\n").replace("\r", "\n")
        except UnicodeDecodeError:
            continue
    raise Unreadable("text in an unknown encoding (neither UTF-8 nor Windows-1252)")


# ---- plain text, Markdown, code ------------------------------------------------------------------


def _paragraphs(lines: list[str], first_line: int = 1) -> list[tuple[int, int, list[str]]]:
    """Runs of non-blank lines: (first line, last line, lines), line numbers from ``first_line``."""
    runs: list[tuple[int, int, list[str]]] = []
    current: list[str] = []
    start = 0
    for number, line in enumerate(lines, start=first_line):
        if line.strip():
            if not current:
                start = number
            current.append(line.rstrip())
        elif current:
            runs.append((start, number - 1, current))
            current = []
    if current:
        runs.append((start, start + len(current) - 1, current))
    return runs


_SENTENCE_END = (".", "!", "?", ":", ";", ",", '"', "'", ")", "]")


def text_blocks(text: str) -> list[Block]:
    """Paragraphs separated by blank lines; a lone short line without end punctuation ("Chapter 3",
    "Terms of sale") is taken as a heading, the way plain-text books and notes mark sections."""
    blocks = []
    for start, end, lines in _paragraphs(text.split("\n")):
        body = "\n".join(lines)
        is_heading = len(lines) == 1 and len(body) <= 60 and not body.rstrip().endswith(_SENTENCE_END)
        blocks.append(Block(body, "heading" if is_heading else "paragraph", start, end, level=1 if is_heading else 0))
    return blocks


def code_blocks(text: str) -> list[Block]:
    """Source code: blank-line-separated blocks with their exact lines (the chunker joins them)."""
    return [Block("\n".join(lines), "code", start, end) for start, end, lines in _paragraphs(text.split("\n"))]


_ATX = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_SETEXT = re.compile(r"^\s{0,3}(=+|-+)\s*$")


def markdown_blocks(text: str) -> list[Block]:
    """Headings (ATX and setext), fenced code kept whole, paragraphs; line numbers exact."""
    lines = text.split("\n")
    blocks: list[Block] = []
    para: list[str] = []
    para_start = 0
    i = 0

    def flush(end: int) -> None:
        nonlocal para
        if para:
            blocks.append(Block("\n".join(para), "paragraph", para_start, end))
            para = []

    while i < len(lines):
        line, number = lines[i], i + 1
        fence = _FENCE.match(line)
        if fence:
            flush(number - 1)
            close = next((j for j in range(i + 1, len(lines)) if lines[j].lstrip().startswith(fence.group(1))), len(lines) - 1)
            body = "\n".join(lines[i:close + 1])
            blocks.append(Block(body, "code", number, close + 1))
            i = close + 1
            continue
        heading = _ATX.match(line)
        if heading:
            flush(number - 1)
            blocks.append(Block(heading.group(2), "heading", number, number, level=len(heading.group(1))))
        elif para and len(para) == 1 and _SETEXT.match(line) and line.strip():
            title = para[0].strip()
            para = []
            blocks.append(Block(title, "heading", number - 1, number, level=1 if line.strip()[0] == "=" else 2))
        elif not line.strip():
            flush(number - 1)
        else:
            if not para:
                para_start = number
            para.append(line.rstrip())
        i += 1
    flush(len(lines))
    return blocks


# ---- HTML ----------------------------------------------------------------------------------------

_BLOCK_TAGS = {
    "p", "div", "li", "ul", "ol", "pre", "blockquote", "section", "article", "header", "footer",
    "main", "aside", "nav", "table", "tr", "dt", "dd", "dl", "figure", "figcaption", "br", "hr",
    "h1", "h2", "h3", "h4", "h5", "h6", "title", "form", "details", "summary", "body",
}
_SKIP_TAGS = {"script", "style", "noscript", "template", "svg", "head"}


class _HtmlText(HTMLParser):
    """Block text out of HTML with the source line each block starts and ends on."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self._parts: list[str] = []
        self._start = 0
        self._end = 0
        self._skip = 0
        self._heading = 0
        self._pre = 0
        self._title = False

    def _flush(self) -> None:
        text = "".join(self._parts)
        text = text.strip("\n") if self._pre else re.sub(r"\s+", " ", text).strip()
        if text:
            kind = "heading" if self._heading else ("code" if self._pre else "paragraph")
            self.blocks.append(Block(text, kind, self._start, max(self._end, self._start), level=self._heading))
        self._parts = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip += 1
        if tag in _BLOCK_TAGS:
            self._flush()
            if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
                self._heading = int(tag[1])
            elif tag == "title":
                self._heading, self._title = 1, True  # the page's title, read though it sits in <head>
            elif tag == "pre":
                self._pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip = max(self._skip - 1, 0)
        if tag in _BLOCK_TAGS:
            self._flush()
            if tag in ("h1", "h2", "h3", "h4", "h5", "h6", "title"):
                self._heading, self._title = 0, False
            elif tag == "pre":
                self._pre = max(self._pre - 1, 0)

    def handle_data(self, data: str) -> None:
        if (self._skip and not self._title) or (not data.strip() and not self._parts):
            return
        line = self.getpos()[0]
        if not self._parts:
            self._start = line
        self._parts.append(data)
        self._end = line + data.count("\n")


def html_blocks(text: str) -> list[Block]:
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    parser._flush()
    return parser.blocks


# ---- PDF and DOCX ----------------------------------------------------------------------------------


def _pdf(path: Path) -> list[Block]:
    """Text per page through pypdf; paragraphs within a page, lines counted from the page's top."""
    import pypdf
    from pypdf.errors import DependencyError, FileNotDecryptedError, PyPdfError

    try:
        reader = pypdf.PdfReader(str(path))
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")  # a PDF with an owner password only opens without one
            except (DependencyError, NotImplementedError) as exc:
                raise Unreadable(f"encrypted PDF that cannot be opened here ({exc})") from None
            if not opened:
                raise Unreadable("encrypted PDF: it needs a password (save a copy without one to index it)")
        pages = [page.extract_text() or "" for page in reader.pages]
    except Unreadable:
        raise
    except FileNotDecryptedError:
        raise Unreadable("encrypted PDF: it needs a password (save a copy without one to index it)") from None
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError, RecursionError) as exc:
        # pypdf reads untrusted bytes; whatever it trips on, the file is broken for us.
        log.debug("pypdf could not read %s", path, exc_info=True)
        raise Unreadable(f"corrupt or damaged PDF ({type(exc).__name__}: {str(exc)[:120]})") from None
    blocks = []
    for number, text in enumerate(pages, start=1):
        for start, end, lines in _paragraphs(text.replace("\r\n", "\n").split("\n")):
            blocks.append(Block("\n".join(lines), "paragraph", start, end, page=number))
    if not blocks:
        raise Unreadable(f"PDF without a text layer ({len(pages)} page{'s' if len(pages) != 1 else ''} of images, "
                         "as a scan is): it needs OCR first")
    return blocks


def _docx(path: Path) -> list[Block]:
    """Paragraphs and tables in document order; Heading/Title styles are headings; "lines" are
    paragraph numbers (a DOCX has no lines)."""
    import zipfile

    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table

    try:
        document = docx.Document(str(path))
        items = list(document.iter_inner_content())
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        log.debug("python-docx could not read %s", path, exc_info=True)
        raise Unreadable(f"corrupt or not a Word document ({type(exc).__name__}: {str(exc)[:120]})") from None
    except Exception as exc:  # lxml's XMLSyntaxError and kin: a damaged part inside the zip
        log.debug("python-docx could not read %s", path, exc_info=True)
        raise Unreadable(f"damaged Word document ({type(exc).__name__}: {str(exc)[:120]})") from None
    blocks = []
    for number, item in enumerate(items, start=1):
        if isinstance(item, Table):
            rows = [" | ".join(cell.text.strip() for cell in row.cells) for row in item.rows]
            text = "\n".join(r for r in rows if r.strip(" |"))
            if text:
                blocks.append(Block(text, "table", number, number))
            continue
        text = item.text.strip()
        if not text:
            continue
        style = (item.style.name if item.style is not None else "") or ""
        level = 0
        if style == "Title":
            level = 1
        elif style.startswith("Heading"):
            digits = style.removeprefix("Heading").strip()
            level = int(digits) if digits.isdigit() else 1
        blocks.append(Block(text, "heading" if level else "paragraph", number, number, level=level))
    return blocks
