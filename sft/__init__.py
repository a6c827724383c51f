"""stillhouse's student training package (LoRA fine-tuning and evaluation via TRL + PEFT)."""

__version__ = "0.1.0"
