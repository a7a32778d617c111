"""Where the metrics' feature extractors come from: a local path (or a hub id already in the local
cache), never a download at run time. A missing weight ends with one line saying which file to get
and where from (MissingWeights, a RuntimeError, which the CLI prints as such)."""

from __future__ import annotations

from pathlib import Path

WHERE = {
    "clip": "openai/clip-vit-large-patch14 (`hf download openai/clip-vit-large-patch14`), or any CLIPModel folder",
    "dino": "facebook/dino-vits16 (`hf download facebook/dino-vits16`; the transformers port of MagicBrush's "
            "torch.hub dino_vits16), or any ViTModel folder",
    "inception": "pt_inception-2015-12-05-6726825d.pth from torch-fidelity's releases on GitHub "
                 "(toshas/torch-fidelity, v0.2.0: weights-inception-2015-12-05-6726825d.pth), the FID Inception "
                 "of TTUR/pytorch-fid; or a TorchScript feature extractor (.pt)",
}


class MissingWeights(RuntimeError):
    pass


def missing(what: str, name: str) -> MissingWeights:
    return MissingWeights(f"no {what} weights at {name!r}; get {WHERE[what]} and pass its local path")


def load_pretrained(cls, what: str, name: str | Path, **kwargs):
    """`cls.from_pretrained(name)` offline (local_files_only): a folder or a cached hub id."""
    try:
        return cls.from_pretrained(str(name), local_files_only=True, **kwargs)
    except (OSError, ValueError) as err:
        if Path(str(name)).exists() and "does not appear to have" not in str(err) and "no file named" not in str(err):
            raise MissingWeights(f"cannot load {what} from {str(name)!r}: {str(err).splitlines()[0]}") from None
        raise missing(what, str(name)) from None
