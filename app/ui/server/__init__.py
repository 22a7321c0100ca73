"""The Server page: Hearth's OpenAI-compatible API, started and watched from the studio."""

from app.ui.server.page import ServerPage

__all__ = ["ServerPage"]
