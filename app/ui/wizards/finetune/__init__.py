"""The one-click fine-tune wizard: base model, data, settings, training, export, chat."""

from app.ui.wizards.finetune.wizard import FinetunePage, FinetuneWizard

__all__ = ["FinetunePage", "FinetuneWizard"]
