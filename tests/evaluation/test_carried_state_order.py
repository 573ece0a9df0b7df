"""With DyCoke's carried state the lmms-eval bridge orders requests as the published wrapper does (answers depend on
the order then): by context token count, longest first, then by the context's text."""

from lmms_helpers import REPO

from lightning_prune.evaluation.lmms_model import LightningPruneVideoLLM
from lightning_prune.evaluation.video_requests import VideoRequest

CONFIGS = REPO / "configs" / "dycoke"


def test_bridge_orders_requests_as_the_published_wrapper_when_carrying():
    tiny = str(CONFIGS / "tiny.yaml")
    carrying = LightningPruneVideoLLM(config=tiny, dycoke=True, carry_state_across_samples=True, device="cpu")
    plain = LightningPruneVideoLLM(config=tiny, dycoke=True, device="cpu")
    # Byte-level tokens: "é" is 2 tokens in 1 character, so token counts and character counts order differently.
    contexts = ["ééé?", "abcde", "abcd", "zz zz"]
    requests = [VideoRequest(i, context, "v.mp4", "t", i) for i, context in enumerate(contexts)]
    tokenizer = carrying.module.processor.tokenizer
    published = sorted(contexts, key=lambda c: (-len(tokenizer.encode(c, add_special_tokens=False)), c))
    assert [r.context for r in sorted(requests, key=carrying._order)] == published == ["ééé?", "abcde", "zz zz", "abcd"]
    assert [r.context for r in sorted(requests, key=plain._order)] == ["abcde", "zz zz", "ééé?", "abcd"]
