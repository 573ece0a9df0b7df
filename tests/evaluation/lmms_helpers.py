"""Paths and request builders shared by the lmms-eval bridge tests."""

from pathlib import Path

from lmms_eval.api.instance import Instance

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "dycoke"
TINY = CONFIGS / "tiny.yaml"
# Every tiny config of every family (the DyCoke family adapters add theirs next to tiny.yaml).
TINY_CONFIGS = sorted(CONFIGS.glob("tiny*.yaml"))
TASK = "lightning_prune_tiny"


def video_requests(visuals, contexts=None, gen_kwargs=None, task=TASK, kind="generate_until"):
    """Real lmms-eval `Instance`s over documents `{"visual": v}`, and the `task_dict` that serves them."""
    docs = [{"visual": visual} for visual in visuals]
    contexts = contexts or [f"Question {i}: which way does it move?\nA. left\nB. right" for i in range(len(docs))]
    kwargs = gen_kwargs or {"max_new_tokens": 6, "until": ["\n\n"], "do_sample": False}
    requests = [
        Instance(request_type=kind, arguments=(context, dict(kwargs), lambda doc: doc["visual"], i, task, "test"),
                 idx=0, metadata={"task": task, "doc_id": i, "repeats": 1})
        for i, context in enumerate(contexts)
    ]
    return requests, {task: {"test": docs}}
