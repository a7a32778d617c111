"""The generation head (paper eq. 2): maps the [IMG] tokens' word embedding + last hidden state
to L conditioning vectors for the decoder UNet's cross-attention.

Input: (batch, N=16, llm_width). Output: (batch, L=77, cross_attention_dim).
"""

import torch
from torch import nn

from .config import HeadConfig


class GenerationHead(nn.Module):
    def __init__(self, config: HeadConfig, llm_width: int, output_width: int, num_img_tokens: int):
        super().__init__()
        self.input_proj = nn.Linear(llm_width, config.width)
        self.positions = nn.Parameter(torch.randn(1, num_img_tokens, config.width) * 0.02)
        self.queries = nn.Parameter(torch.randn(1, config.num_queries, config.width) * 0.02)
        self.transformer = nn.Transformer(
            d_model=config.width, nhead=config.heads, num_encoder_layers=config.encoder_layers,
            num_decoder_layers=config.decoder_layers, dim_feedforward=4 * config.width, dropout=0.0,
            batch_first=True, norm_first=True)
        self.output_proj = nn.Linear(config.width, output_width)

    def forward(self, img_states: torch.Tensor) -> torch.Tensor:
        # The LM may run in another dtype than the head (bf16 LM, fp32 head): cast at the boundary.
        source = self.input_proj(img_states.to(self.input_proj.weight.dtype)) + self.positions
        queries = self.queries.expand(img_states.shape[0], -1, -1)
        return self.output_proj(self.transformer(source, queries))
