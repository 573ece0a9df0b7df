"""Tiny random models of every family and a left-padded batch of two random videos, shared by the compression tests."""

import pytest
from _support.video_families import padded_family_batch

from lightning_prune.dycoke.families import FAMILY_NAMES


@pytest.fixture(scope="session", params=FAMILY_NAMES)
def family_model(request):
    """`(adapter, model, padded inputs of two videos)` for each family; tests that change the model must undo it."""
    return padded_family_batch(request.param)
