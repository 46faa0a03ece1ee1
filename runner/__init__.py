"""runner: declarative LoRA finetune runs (manifest -> validate -> plan -> apply -> lockfile)."""

__version__ = "0.1.0"
