"""`tiny-mistral`: the paper's 7B parts (SigLIP, Mistral, Stable Diffusion v1.4) with their real classes and
folder layouts, scaled down and randomly initialised from configs that ship in this package.

It exists so that code paths that need the real classes (multi-GPU training, loading, saving) can run on a CPU
in seconds; its weights are random, so it learns nothing useful.
"""

from .build import TINY_VERSION, build_tiny_components, tiny_components

__all__ = ["TINY_VERSION", "build_tiny_components", "tiny_components"]
