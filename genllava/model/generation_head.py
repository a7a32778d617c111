"""The generation head (paper eq. 2): maps the [IMG] tokens' word embedding + last hidden state
to L conditioning vectors for the decoder UNet's cross-attention.

Input: (batch, N=16, llm_width). Output: (batch, L=77, cross_attention_dim).
"""

import torch
from torch import nn

from .config import HeadConfig


class RunningStandardize(nn.Module):
    """Standardises each (position, feature) of the input with running statistics.

    The [IMG] states are mostly a part shared by every prompt (the token's own embedding, the
    LLM's constant directions); what the prompt asked for is a small rest. Removing the shared part
    lets the head see that rest from the first step. Statistics update in training only, from
    batches of two or more, so any micro-batch size works and inference is deterministic.
    """

    def __init__(self, shape: tuple[int, ...], momentum: float = 0.05, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("var", torch.ones(shape))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] > 1:
            with torch.no_grad():
                mean, var = x.float().mean(0), x.float().var(0, unbiased=False)
                rate = 1.0 if self.updates == 0 else self.momentum
                self.mean.lerp_(mean, rate)
                self.var.lerp_(var, rate)
                self.updates += 1
        return (x - self.mean.to(x.dtype)) * torch.rsqrt(self.var.to(x.dtype) + self.eps)


class GenerationHead(nn.Module):
    def __init__(self, config: HeadConfig, llm_width: int, output_width: int, num_img_tokens: int):
        super().__init__()
        self.standardize = RunningStandardize((num_img_tokens, llm_width)) if config.standardize_input else nn.Identity()
        self.input_proj = nn.Linear(llm_width, config.width)
        self.positions = nn.Parameter(torch.randn(1, num_img_tokens, config.width) * 0.02)
        self.queries = nn.Parameter(torch.randn(1, config.num_queries, config.width) * 0.02)
        self.transformer = nn.Transformer(
            d_model=config.width, nhead=config.heads, num_encoder_layers=config.encoder_layers,
            num_decoder_layers=config.decoder_layers, dim_feedforward=4 * config.width, dropout=0.0,
            batch_first=True, norm_first=True)
        self.output_proj = nn.Linear(config.width, output_width)

    def forward(self, img_states: torch.Tensor) -> torch.Tensor:
        source = self.input_proj(self.standardize(img_states)) + self.positions
        queries = self.queries.expand(img_states.shape[0], -1, -1)
        return self.output_proj(self.transformer(source, queries))
