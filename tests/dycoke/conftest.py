"""A tiny random LLaVA-OneVision (4 LLM layers of width 64, 16 tokens per frame) and a padded batch of two videos."""

import pytest
from dycoke_fakes import make_inputs

from lightning_prune.modules.video_llm import random_llava_onevision


@pytest.fixture(scope="session")
def tiny_llava():
    """`(model, processor)`; tests that change the model must undo it."""
    return random_llava_onevision(seed=0)


@pytest.fixture(scope="session")
def padded_inputs(tiny_llava):
    """Two samples whose prompts differ in length, so the batch is left-padded."""
    return make_inputs(tiny_llava[1], ["What moves?", "Which shape crosses the frame first, and where to?"])
