"""The one-click wizards: quantize (``wizards.quantize``) and fine-tune."""
