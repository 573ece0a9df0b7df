"""The published evaluation's precision and carried state: float16 merging and decode steps, and the attention vector
carried from one sample to the next, each against the published code re-implemented in `published_reference`."""

import pytest
import torch
import torch.nn.functional as F
from dycoke_fakes import generate, make_inputs
from published_reference import PublishedDecodeState, published_step_attention, published_ttm

from lightning_prune.callbacks import DyCoke
from lightning_prune.dycoke import ttm_keep_indices
from lightning_prune.dycoke.hooks import DyCokeHooks, DyCokeSettings
from lightning_prune.dycoke.kv_pruning import DecodePruning, last_query_attention
from lightning_prune.modules.video_llm import random_llava_onevision

STEPS = 8
QUESTIONS = [("Which shape crosses the frame first?", 3), ("What moves?", 4)]


def _near_duplicate_frames(frames: int, tokens: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(frames * 1000 + dim)
    base = torch.randn(1, tokens, dim, generator=generator)
    return (base + 0.25 * torch.randn(frames, tokens, dim, generator=generator)).to(dtype)


def _as_lists(kept):
    return [None if index is None else index.tolist() for index in kept]


@pytest.mark.parametrize(("frames", "dim"), [(32, 64), (8, 896), (31, 128)])
def test_official_ttm_in_float16_equals_the_published_merging_on_near_duplicates(frames, dim):
    features = _near_duplicate_frames(frames, 196, dim, torch.float16)
    expected = published_ttm(features.reshape(-1, dim), 196, 0.7)
    assert _as_lists(ttm_keep_indices(features, 0.7)) == expected  # the same tokens, in the same order
    # The precision matters: the same features in bfloat16 collapse near-ties and keep other tokens.
    assert _as_lists(ttm_keep_indices(features.bfloat16(), 0.7)) != expected


def test_official_ttm_normalises_stage_one_only_as_published_which_decides_float16_near_ties():
    features = _near_duplicate_frames(8, 196, 896, torch.float16)
    ours = _as_lists(ttm_keep_indices(features, 0.7))
    keep = int((1 - 0.7) * 196)
    for odd in (1, 3, 5, 7):  # stage 1 only (frames i + 2 are re-merged by stage 2)
        before, after = F.normalize(features[odd - 1], dim=1), F.normalize(features[odd], dim=1)
        normalized = F.cosine_similarity(before, after, dim=1)
        assert ours[odd] == normalized.topk(keep, largest=False).indices.tolist()
    raw = [F.cosine_similarity(features[odd - 1], features[odd], dim=1).topk(keep, largest=False).indices.tolist()
           for odd in (1, 3, 5, 7)]
    assert raw != [ours[odd] for odd in (1, 3, 5, 7)]  # without the normalisation, float16 ranks other tokens


@pytest.fixture(scope="module")
def half_llava():
    """The tiny LLaVA-OneVision cast to float16, and one float16 input per question (batch 1 each)."""
    model, processor = random_llava_onevision(seed=0)
    model.half()
    inputs = []
    for question, seed in QUESTIONS:
        sample = make_inputs(processor, [question], seed=seed)
        sample["pixel_values_videos"] = sample["pixel_values_videos"].half()
        inputs.append(sample)
    return model, inputs


def _recorded_steps(monkeypatch) -> list[dict]:
    """Spy on `DecodePruning.observe`: per scored step the layer L - 1 query and key and the state it left."""
    steps, real = [], DecodePruning.observe

    def observe(self, query, key, mask, scaling):
        real(self, query, key, mask, scaling)
        unpruned = self.unpruned_step
        attended = None if unpruned else sorted(self.attended_positions(key.shape[2])[0].tolist())
        steps.append({"query": query.clone(), "key": key.clone(), "mask": mask, "scaling": scaling,
                      "attended": attended, "start": int(self.visual_positions[0, 0]),
                      "candidates": self.visual_positions.shape[1]})

    monkeypatch.setattr(DecodePruning, "observe", observe)
    return steps


def _published_state(step: dict, threshold: float = 0.9) -> PublishedDecodeState:
    return PublishedDecodeState(step["start"], step["candidates"], 0.8, threshold)


def _published_kept(steps: list[dict], state: PublishedDecodeState) -> list[list[int] | None]:
    """Per step the published `kv_cache` (sorted; None = the full cache), from the recorded query and key."""
    kept = []
    for step in steps:
        indices = state.kept_indices(published_step_attention(step["query"], step["key"]), step["key"].shape[2])
        kept.append(None if indices is None else sorted(indices))
    return kept


@pytest.mark.parametrize("threshold", [0.9, None])
def test_official_decode_steps_in_float16_select_as_the_published_step(half_llava, monkeypatch, threshold):
    model, inputs = half_llava
    steps = _recorded_steps(monkeypatch)
    settings = DyCokeSettings(merging_ratio=0.7, prune_layer=2, decode_prune_ratio=0.8, reuse_threshold=threshold)
    with DyCokeHooks(model, settings) as hooks:
        generate(model, inputs[0], new_tokens=STEPS)
    assert hooks.pruning.score_dtype == "model" and steps[0]["query"].dtype == torch.float16
    published = _published_state(steps[0], float("inf") if threshold is None else threshold)
    assert [step["attended"] for step in steps] == _published_kept(steps, published)
    # Scoring the same steps in float32 ranks the float16 near-ties differently.
    float32 = [last_query_attention(s["query"], s["key"], s["mask"], s["scaling"], "float32") for s in steps]
    model_dtype = [published_step_attention(s["query"], s["key"]) for s in steps]
    start, count = steps[0]["start"], steps[0]["candidates"]
    keep = int(count * (1 - 0.8))
    pairs = zip(float32, model_dtype, strict=True)
    assert any(set(a[0, start:start + count].topk(keep).indices.tolist())
               != set(b[start:start + count].topk(keep).indices.tolist()) for a, b in pairs)


@pytest.mark.parametrize("carry", [False, True])
def test_two_generations_back_to_back_carry_the_attention_vector_only_when_asked(half_llava, monkeypatch, carry):
    model, inputs = half_llava
    steps = _recorded_steps(monkeypatch)
    settings = DyCokeSettings(merging_ratio=0.7, prune_layer=2, decode_prune_ratio=0.8,
                              carry_state_across_samples=carry)
    with DyCokeHooks(model, settings) as hooks:
        for sample in inputs:
            generate(model, sample, new_tokens=STEPS)
    first, second = steps[: STEPS - 1], steps[STEPS - 1 :]
    assert len(second) == STEPS - 1
    # The published loop keeps one state on the model for the whole run; a fresh history is a new state per sample.
    run_state = _published_state(first[0])
    expected_first = _published_kept(first, run_state)
    if carry:
        run_state.start = second[0]["start"]  # the next prompt's candidates; the last attention vector stays
        expected_second = _published_kept(second, run_state)
    else:
        expected_second = _published_kept(second, _published_state(second[0]))
    assert [step["attended"] for step in first] == expected_first
    assert [step["attended"] for step in second] == expected_second
    # A fresh history always selects at the first step; carried over, this sample's first step is similar to the
    # previous sample's last one, so it attends to the full cache.
    assert (second[0]["attended"] is None) == carry
    assert (hooks.pruning.carried_attention is not None) == carry


def test_carried_state_refuses_batches_of_more_than_one_before_compute(tiny_llava, padded_inputs):
    model = tiny_llava[0]
    message = r"`carry_state_across_samples` needs batches of 1 sample .*got a batch of 2"
    with DyCokeHooks(model, DyCokeSettings(carry_state_across_samples=True)) as hooks, \
            pytest.raises(ValueError, match=message):
        generate(model, padded_inputs, new_tokens=2)
    assert hooks.stats == []  # refused before the merging and the LLM ran


def test_carried_state_in_the_decode_state_refuses_a_batch_of_two():
    pruning = DecodePruning(2, 0.5, carry_state=True)
    with pytest.raises(ValueError, match=r"`carry_state_across_samples` needs batches of 1 sample .*got 2"):
        pruning.start(torch.tensor([[1, 2], [1, 2]]), 5)


def test_carried_state_setting_must_be_a_boolean():
    with pytest.raises(ValueError, match=r"`carry_state_across_samples` must be true or false, got 'yes'"):
        DyCokeSettings(carry_state_across_samples="yes")


@pytest.mark.parametrize("build", [lambda: DyCokeSettings(score_dtype="bfloat16"),
                                   lambda: DyCoke(score_dtype="float16"),
                                   lambda: DecodePruning(2, 0.5, score_dtype="half")])
def test_score_dtype_outside_the_list_is_refused(build):
    with pytest.raises(ValueError, match=r"`score_dtype` must be one of \['model', 'float32'\]"):
        build()


def test_score_dtype_defaults_follow_the_variant():
    assert DecodePruning(2, 0.5).score_dtype == "model"
    assert DecodePruning(2, 0.5, variant="refined").score_dtype == "float32"
    assert DecodePruning(2, 0.5, variant="refined", score_dtype="model").score_dtype == "model"


def test_model_dtype_scores_equal_the_published_computation_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 8, 1, 16, generator=generator).half()
    key = torch.randn(1, 2, 300, 16, generator=generator).half()
    ours = last_query_attention(query, key, None, 16**-0.5, "model")
    assert ours.dtype == torch.float16
    assert torch.equal(ours[0], published_step_attention(query, key))
