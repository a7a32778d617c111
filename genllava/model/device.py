"""Where and in what precision a model runs: `auto` picks the GPU and bf16 (fp16 where bf16 is not
supported) when there is one, else the CPU in fp32."""

from __future__ import annotations

import torch

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}
DTYPE_CHOICES = ("auto", "bfloat16", "float16", "float32")
QUANTIZATIONS = ("8bit", "4bit")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`auto` (or None): the first CUDA device when there is one, else the CPU; `cuda` means `cuda:0`."""
    if device is None or str(device) == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} asked for, but torch sees no CUDA GPU "
                             f"(torch {torch.__version__}; a CPU build of torch cannot use one); use --device cpu")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"device cuda:{index} asked for, but there are {torch.cuda.device_count()} GPU(s)")
        return torch.device("cuda", index)
    if device.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"unsupported device {device}; use auto, cpu, cuda or cuda:N")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`auto` (or None): bf16 on a GPU that supports it, fp16 on other GPUs, fp32 on the CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_CHOICES)}")
    return DTYPES[dtype]


def quantization_config(quantization: str | None, device: torch.device, dtype: torch.dtype):
    """A transformers BitsAndBytesConfig for loading the LM in 8 or 4 bits (low-memory mode), or None."""
    if quantization is None:
        return None
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; choose 8bit or 4bit")
    if device.type != "cuda":
        raise ValueError(f"--quantize {quantization} needs a CUDA GPU (bitsandbytes); the model is on {device}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ValueError(f"--quantize {quantization} needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
