"""Write the tiny text corpus and word-level tokenizer shipped under `lightning_prune/data/assets/tiny_text/`.

The corpus is generated from a small grammar (deterministic, seed 0), so a tiny random LM learns it in a few
epochs on a CPU and pruning visibly costs loss: what `configs/pruning/tiny_llama_*.yaml` and the LM studies train on.
Run from the repository root: `python scripts/build_tiny_text.py`.
"""

from __future__ import annotations

import random
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

OUT = Path("lightning_prune/data/assets/tiny_text")
SUBJECTS = ["the cat", "the dog", "a bird", "my friend", "the teacher", "a child", "the farmer", "our neighbour"]
VERBS = ["sees", "likes", "finds", "carries", "paints", "follows", "watches", "helps"]
OBJECTS = ["the ball", "a red apple", "the old boat", "a small house", "the green tree", "a blue kite",
           "the river", "a long road"]
PLACES = ["in the park", "near the river", "at home", "on the hill", "by the sea", "under the bridge"]
TIMES = ["in the morning", "at night", "every day", "after lunch", "before dinner"]


def sentence(rng: random.Random) -> str:
    parts = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)]
    if rng.random() < 0.6:
        parts.append(rng.choice(PLACES))
    if rng.random() < 0.4:
        parts.append(rng.choice(TIMES))
    return " ".join(parts) + " ."


def main() -> None:
    rng = random.Random(0)
    OUT.mkdir(parents=True, exist_ok=True)
    train = [" ".join(sentence(rng) for _ in range(3)) for _ in range(600)]
    val = [" ".join(sentence(rng) for _ in range(3)) for _ in range(80)]
    (OUT / "train.txt").write_text("\n".join(train) + "\n")
    (OUT / "val.txt").write_text("\n".join(val) + "\n")
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<unk>", "<pad>", "<s>", "</s>"]
    tokenizer.train_from_iterator(train + val, trainers.WordLevelTrainer(special_tokens=specials))
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(OUT)


if __name__ == "__main__":
    main()
