"""Hugging Face Hub access for Hearth: search, file listing with quant variants, downloads.

Everything goes through huggingface_hub's own calls (``HfApi``, ``get_hf_file_metadata``,
``http_get``) with the user's token from huggingface_hub's token store. Hearth adds what
huggingface_hub 2.4 does not do by itself: a partial file that survives a pause or an app restart
(``hf_hub_download`` writes to a per-call temporary file and deletes it on any failure), a
sha256 check before a file joins the library, a disk-space refusal before the first byte, and a
retry with backoff around the whole transfer.
"""

from __future__ import annotations

from app.runtime.hub.catalog import group_variants, list_files, quant_from_name, search
from app.runtime.hub.transfer import discard_partial, download, partial_path

__all__ = [
    "discard_partial",
    "download",
    "group_variants",
    "list_files",
    "partial_path",
    "quant_from_name",
    "search",
]
