"""Hearth: a desktop studio for local large language models."""

__version__ = "0.1.0"
APP_NAME = "Hearth"
