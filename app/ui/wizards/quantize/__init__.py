"""The one-click quantize wizard: pick a model, pick sizes, run, compare, chat."""

from app.ui.wizards.quantize.wizard import QuantizePage, QuantizeWizard

__all__ = ["QuantizePage", "QuantizeWizard"]
