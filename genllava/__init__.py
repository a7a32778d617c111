"""genllava: an open implementation of Generative Visual Instruction Tuning (GenLLaVA)."""

__version__ = "0.1.0"
