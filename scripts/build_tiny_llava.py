"""Write the tiny LLaVA instruction set shipped under `lightning_prune/data/assets/tiny_llava/`.

Coloured 32x32 images (6 colours x 3 noise draws), LLaVA-format conversations asking for the colour (train) and
the same question with 4 `options` (held-out multiple choice), and a LlavaProcessor (word-level tokenizer with
`<image>`, 28x28 CLIP image processor, patch 14 -> 4 image tokens): what `configs/study/tiny_llava_*.yaml` trains a
tiny random LLaVA on, offline. Run from the repository root: `python scripts/build_tiny_llava.py`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

OUT = Path("lightning_prune/data/assets/tiny_llava")
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "yellow": (230, 220, 40),
           "purple": (140, 40, 180), "white": (240, 240, 240)}
QUESTIONS = ["which colour is in the picture", "what colour is this image", "name the colour of the picture"]


def main() -> None:
    rng = random.Random(0)
    noise = np.random.default_rng(0)
    (OUT / "images").mkdir(parents=True, exist_ok=True)
    names = []
    for colour, rgb in COLOURS.items():
        for k in range(3):
            pixels = np.clip(np.array(rgb) + noise.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(OUT / "images" / f"{colour}_{k}.png")
            names.append((colour, f"{colour}_{k}.png"))

    def record(i: int, colour: str, image: str, options: bool) -> dict:
        item = {"id": str(i), "image": image, "conversations": [
            {"from": "human", "value": "<image>\n" + rng.choice(QUESTIONS)}, {"from": "gpt", "value": colour}]}
        if options:
            others = rng.sample([c for c in COLOURS if c != colour], 3)
            item["options"] = sorted([colour, *others])
        return item

    train = [record(i, c, img, False) for i, (c, img) in enumerate(names * 4)]
    val = [record(i, c, img, True) for i, (c, img) in enumerate(names[::3] + names[1::3])]
    (OUT / "train.json").write_text(json.dumps(train, indent=0))
    (OUT / "val.json").write_text(json.dumps(val, indent=0))

    words = ["USER : ASSISTANT", *QUESTIONS, " ".join(COLOURS)]
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<unk>", "<pad>", "<s>", "</s>", "<image>"]
    tokenizer.train_from_iterator(words, trainers.WordLevelTrainer(special_tokens=specials))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>", extra_special_tokens={"image_token": "<image>"})
    images = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    LlavaProcessor(image_processor=images, tokenizer=fast, patch_size=14, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1).save_pretrained(OUT)
    print("image token id", fast.convert_tokens_to_ids("<image>"), "vocabulary", len(fast))


if __name__ == "__main__":
    main()
