"""`SyntheticVideoQADataModule`: train, validation and test splits of the synthetic temporal video QA, each its seed.

Every split is written once with `lightning_prune.data.synthetic_video.write_split` (PyAV videos and a JSONL) under
`<root>/synthetic_video_qa/seed<S>-samples<N>-frames<F>-size<P>-v<generator version>/`, then decoded once into
memory, so training reads the same frames `VideoQADataModule` would without decoding every epoch.
Batches are `VideoQADataModule`'s: dicts of lists `videos`, `question`, `options`, `answer_index`, `id`, `kind`.

A kind curriculum (`warmup_kinds`, `warmup_epochs`) draws every training batch of the first epochs from some question
kinds only. The tiny models need it for `motion`: trained on every kind from the start they learn the colour kinds
first and reach motion (which needs where the square is, not what colour) only late, if at all. Alone, motion is
learned abruptly, after 150 to 300+ batches depending on the data order (seed 0's order took longer than one epoch of
313 batches for LLaVA-OV, seeds 1 and 2 about 250), hence the shipped configs' two warm-up epochs. After the
warm-up, `kind_weights` draws some kinds more often than the others (a kind learned last, such as `counting`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from lightning_prune.data._common import EpochRandomSampler, check_at_least, check_choice
from lightning_prune.data.synthetic_video import GENERATOR_VERSION, KINDS, check_generator_args, write_split
from lightning_prune.data.video_qa import collate_video_qa, read_annotations, read_video_frames

Split = Literal["train", "val", "test"]
_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


class InMemoryVideoQA(Dataset):
    """Records of a video-QA JSONL with every video decoded once (uint8 `[F, H, W, 3]` each)."""

    def __init__(self, annotation_file: Path, num_frames: int, limit: int | None = None) -> None:
        self.records = read_annotations(annotation_file)[:limit]
        self.frames = [read_video_frames(annotation_file.parent / record["video"], num_frames)
                       for record in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        return {"videos": self.frames[index], **{key: record[key] for key in ("id", "question", "options",
                                                                              "answer_index")},
                "kind": record.get("kind", "")}


class KindCurriculumSampler(EpochRandomSampler):
    """`EpochRandomSampler` whose first `warmup_epochs` epochs draw only from `warmup_indices`, and whose later epochs
    draw some samples more often than others (`repeats`).

    Every epoch has the usual length (the Trainer counts batches once). A warm-up epoch is fresh permutations of the
    warm-up samples, one after another, cut at the dataset's size. A later epoch is a permutation of the dataset with
    sample `i` in it `repeats[i]` times, cut at the dataset's size (all ones: exactly `EpochRandomSampler`'s order).
    The order depends on `(seed, epoch)` alone, so a resumed fit sees the order an uninterrupted one would.
    """

    def __init__(self, dataset: Dataset, seed: int, warmup_indices: Sequence[int], warmup_epochs: int,
                 repeats: Sequence[int] | None = None) -> None:
        super().__init__(dataset, seed)
        self.warmup_indices = torch.as_tensor(list(warmup_indices), dtype=torch.long)
        self.warmup_epochs = warmup_epochs
        self.repeats = None if repeats is None or all(count == 1 for count in repeats) \
            else torch.as_tensor(list(repeats), dtype=torch.long)

    def __iter__(self) -> Iterator[int]:
        if self.epoch < self.warmup_epochs and len(self.warmup_indices):
            yield from self._cut(self.warmup_indices, self.epoch_generator())
        elif self.repeats is None:
            yield from super().__iter__()
        else:
            pool = torch.repeat_interleave(torch.arange(len(self.repeats)), self.repeats)
            order = torch.randperm(len(pool), generator=self.epoch_generator())
            yield from pool[order][: len(self.data_source)].tolist()

    def _cut(self, indices: torch.Tensor, generator: torch.Generator) -> list[int]:
        rounds = -(-len(self.data_source) // len(indices))
        order = torch.cat([indices[torch.randperm(len(indices), generator=generator)] for _ in range(rounds)])
        return order[: len(self.data_source)].tolist()


class SyntheticVideoQADataModule(LightningDataModule):
    """The synthetic temporal video QA (`lightning_prune.data.synthetic_video`) for fit, validate, test and predict.

    Args:
        root: data folder; splits go to `<root>/synthetic_video_qa/<split settings>/`.
        num_frames: frames per video (every frame is given to the model).
        frame_size: pixels per side.
        family: check `num_frames` and `frame_size` against this family's tiny vision tower (None: generic rules).
        train_samples / val_samples / test_samples: questions per split.
        train_seed / val_seed / test_seed: the splits' seeds (different, so no sample is shared).
        batch_size: training batch size.
        eval_batch_size: validation / test / predict batch size (default: `batch_size`).
        test_split: the split `test` and `predict` read ("test" by default).
        test_limit: read only the first N samples of that split (kinds cycle, so any N >= 5 has every kind).
        shuffle_seed: seed of the training order (changes every epoch).
        warmup_kinds: question kinds (of `KINDS`) that every training batch of the first `warmup_epochs` epochs is
            drawn from (a curriculum; None: every kind from the start).
        warmup_epochs: epochs of that warm-up (0: none).
        kind_weights: how many times as often as the others a question kind is drawn after the warm-up, e.g.
            `{counting: 2}` (positive integers; kinds not named: 1). Each epoch keeps its length, so the other kinds
            are drawn less often.
    """

    def __init__(
        self,
        root: str = "data",
        num_frames: int = 16,
        frame_size: int = 32,
        family: str | None = None,
        train_samples: int = 2000,
        val_samples: int = 100,
        test_samples: int = 250,
        train_seed: int = 1,
        val_seed: int = 2,
        test_seed: int = 3,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        test_split: Split = "test",
        test_limit: int | None = None,
        shuffle_seed: int = 0,
        warmup_kinds: list[str] | None = None,
        warmup_epochs: int = 0,
        kind_weights: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        check_generator_args(1, num_frames, frame_size, family)
        for name, value in (("train_samples", train_samples), ("val_samples", val_samples),
                            ("test_samples", test_samples), ("batch_size", batch_size)):
            check_at_least(name, value, 1)
        if eval_batch_size is not None:
            check_at_least("eval_batch_size", eval_batch_size, 1)
        if test_limit is not None:
            check_at_least("test_limit", test_limit, 1)
        check_choice("test_split", test_split, ("train", "val", "test"))
        check_at_least("warmup_epochs", warmup_epochs, 0)
        unknown = [kind for kind in warmup_kinds or () if kind not in KINDS]
        if unknown or (warmup_epochs and not warmup_kinds):
            raise ValueError(f"`warmup_kinds` must be a non-empty list of {list(KINDS)} when `warmup_epochs` > 0, "
                             f"got {warmup_kinds!r} (warmup_epochs={warmup_epochs}).")
        for kind, weight in (kind_weights or {}).items():
            if kind not in KINDS or isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
                raise ValueError(f"`kind_weights` maps question kinds of {list(KINDS)} to positive integers, got "
                                 f"{kind!r}: {weight!r}.")
        seeds = {"train": train_seed, "val": val_seed, "test": test_seed}
        if len(set(seeds.values())) < 3:
            raise ValueError(f"`train_seed`, `val_seed` and `test_seed` must differ (no shared samples), got {seeds}.")
        self.save_hyperparameters()
        samples = {"train": train_samples, "val": val_samples, "test": test_samples}
        base = Path(root) / "synthetic_video_qa"
        self.split_files = {
            split: base / f"seed{seeds[split]}-samples{samples[split]}-frames{num_frames}-size{frame_size}"
            f"-v{GENERATOR_VERSION}" / "annotations.jsonl" for split in seeds}
        self.datasets: dict[str, InMemoryVideoQA] = {}

    def _needed(self, stage: str | None) -> tuple[str, ...]:
        splits = _STAGE_SPLITS.get(stage, ("train", "val", "test"))
        return tuple(self.hparams.test_split if split == "test" else split for split in splits)

    def _seed(self, split: str) -> int:
        return self.hparams[f"{split}_seed"]

    @override
    def prepare_data(self) -> None:
        stage = self.trainer.state.fn.value if self.trainer is not None and self.trainer.state.fn else None
        hp = self.hparams
        for split in self._needed(stage):
            if not self.split_files[split].is_file():
                write_split(self.split_files[split].parent, self._seed(split), hp[f"{split}_samples"], hp.num_frames,
                            hp.frame_size, hp.family)

    @override
    def setup(self, stage: str) -> None:
        for split in self._needed(stage):
            if split in self.datasets:
                continue
            if not self.split_files[split].is_file():
                raise FileNotFoundError(f"Synthetic split not found: {self.split_files[split]}; run `prepare_data()` "
                                        "first (a Trainer does).")
            limit = self.hparams.test_limit if split == self.hparams.test_split and stage in ("test", "predict") \
                else None
            self.datasets[split] = InMemoryVideoQA(self.split_files[split], self.hparams.num_frames, limit)

    def _sampler(self, dataset: InMemoryVideoQA) -> EpochRandomSampler:
        hp = self.hparams
        weights = hp.get("kind_weights") or {}
        if not hp.warmup_epochs and not weights:
            return EpochRandomSampler(dataset, hp.shuffle_seed)
        kinds = [record.get("kind") for record in dataset.records]
        warmup = [index for index, kind in enumerate(kinds) if kind in (hp.warmup_kinds or ())]
        return KindCurriculumSampler(dataset, hp.shuffle_seed, warmup, hp.warmup_epochs,
                                     [weights.get(kind, 1) for kind in kinds])

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        hp = self.hparams
        dataset = self.datasets[split]
        return DataLoader(dataset, batch_size=hp.batch_size if shuffle else (hp.eval_batch_size or hp.batch_size),
                          sampler=self._sampler(dataset) if shuffle else None, collate_fn=collate_video_qa)

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.test_split)

    @override
    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.test_split)


def split_batches(module: SyntheticVideoQADataModule, split: Split) -> list[dict[str, Any]]:
    """Every batch of one split (prepared and set up here), for benchmarks and tests outside a Trainer."""
    stage = {"train": "fit", "val": "validate", "test": "test"}[split]
    module.prepare_data()
    module.setup(stage)
    return list(module._loader(split))
