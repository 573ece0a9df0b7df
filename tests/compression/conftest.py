"""Tiny random models of every family the compression methods serve and a left-padded batch of two random videos."""

import pytest
from _support.video_families import padded_family_batch

from lightning_prune.compression.hooks import COMPRESSION_FAMILIES


@pytest.fixture(scope="session", params=COMPRESSION_FAMILIES)
def family_model(request):
    """`(adapter, model, padded inputs of two videos)` for each family; tests that change the model must undo it."""
    return padded_family_batch(request.param)
