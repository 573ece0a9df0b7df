"""`write_report`: the efficiency JSON is written whole (through the package's one atomic write)."""

import json

import pytest

from lightning_prune.evaluation.efficiency import write_report


def test_write_report_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    rows = [{"visual_tokens_before": 10, "visual_tokens_after": 4, "batch_size": 2, "prefill_s": 0.2,
             "decode_s_per_token": 0.01, "generate_s": 0.6, "peak_memory_mb": 5.0},
            {"visual_tokens_before": 30, "visual_tokens_after": 6, "batch_size": 2, "prefill_s": 0.4,
             "decode_s_per_token": 0.03, "generate_s": 1.0, "peak_memory_mb": 7.0}]
    path = tmp_path / "out" / "efficiency.json"
    path.parent.mkdir()
    path.write_text("an older report")
    assert write_report(path, {"task": "tiny"}, rows) == path
    report = json.loads(path.read_text())
    assert report["task"] == "tiny" and report["samples"] == rows
    summary = report["summary"]
    assert summary["samples"] == 2 and summary["peak_memory_mb"] == 7.0
    assert summary["visual_tokens_kept_fraction"] == pytest.approx((4 + 6) / (10 + 30))
    assert summary["generate_s_per_sample"] == pytest.approx((0.6 / 2 + 1.0 / 2) / 2)
    assert sorted(p.name for p in path.parent.iterdir()) == ["efficiency.json"]


def test_write_report_creates_the_folder(tmp_path):
    path = write_report(tmp_path / "a" / "b" / "report.json", {}, [])
    assert json.loads(path.read_text()) == {"summary": {"samples": 0}, "samples": []}
