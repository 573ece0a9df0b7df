"""The data of the `lightning_prune_tiny_lm` task: the JSONL beside this file, read wherever lm-eval runs."""

from pathlib import Path

DATA = Path(__file__).resolve().parent / "lightning_prune_tiny_lm.jsonl"


def load(**kwargs):
    """lm-eval's `custom_dataset`: a DatasetDict with the `test` split (offline, through HF `datasets`)."""
    from datasets import load_dataset

    return load_dataset("json", data_files={"test": str(DATA)})
