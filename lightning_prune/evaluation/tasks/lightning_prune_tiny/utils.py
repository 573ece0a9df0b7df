"""Prompt, visual and scoring of the `lightning_prune_tiny` lmms-eval task (records: video, question, options, answer).

Loaded by lmms-eval from this folder (`!function utils.<name>`); plain Python, no project import.
"""

import re
import string

_LETTER = re.compile(r"\b([A-Z])\b")


def doc_to_visual(doc):
    """The record's video path (relative to the working folder, as the task's data file is)."""
    return [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    """The question, one "A. option" line per option, and the task's instruction."""
    kwargs = lmms_eval_specific_kwargs or {}
    options = "\n".join(f"{string.ascii_uppercase[i]}. {option}" for i, option in enumerate(doc["options"]))
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}\n{options}{kwargs.get('post_prompt', '')}"


def parse_letter(response, count):
    """The first standalone option letter (A, B, ...) in a response, or "" when there is none."""
    for letter in _LETTER.findall(response.strip().upper()):
        if letter in string.ascii_uppercase[:count]:
            return letter
    return ""


def process_results(doc, results):
    """`accuracy` 1.0 when the answer's letter is the response's first option letter, else 0.0."""
    predicted = parse_letter(results[0], len(doc["options"]))
    return {"accuracy": float(predicted == doc["answer"])}
