"""`is_head_prunable`: which `nn.MultiheadAttention` layers have heads this package can prune."""

import pytest
from torch import nn

from lightning_prune.pruning.attention import is_head_prunable


@pytest.mark.parametrize(
    ("kwargs", "prunable"),
    [
        ({}, True),
        ({"kdim": 8, "vdim": 8}, True),  # the embedding size given explicitly: still one packed projection
        ({"kdim": 4}, False),  # separate q/k/v projections
        ({"vdim": 4}, False),
        ({"add_bias_kv": True}, False),
        ({"add_zero_attn": True}, False),
        ({"num_heads": 1}, False),
    ],
)
def test_is_head_prunable_needs_packed_projections_and_two_heads(kwargs, prunable):
    options = {"embed_dim": 8, "num_heads": 2, **kwargs}
    attention = nn.MultiheadAttention(**options)
    assert is_head_prunable(attention) is prunable
    assert (attention.in_proj_weight is not None) == (options.get("kdim", 8) == options.get("vdim", 8) == 8)
    assert not is_head_prunable(nn.Linear(8, 8))
