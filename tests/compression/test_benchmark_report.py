"""`benchmarks/compression.py`'s report: the README tables and the plot from a run's rows (no model is run)."""

import importlib.util
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "compression.py"


def _load():
    spec = importlib.util.spec_from_file_location("compression_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(family, method, budget, seconds, kept):
    return {"family": family, "method": method, "budget": budget, "prefill_s": seconds / 2,
            "decode_s_per_token": 0.01, "end_to_end_s": seconds, "generation_added_memory_mb": 10.0,
            "visual_tokens_before": 100, "visual_tokens_after": kept, "speedup_end_to_end": 4.0 / seconds}


def test_tables_and_plot_from_rows(tmp_path):
    bench = _load()
    summary = {"latency": [_row("qwen2_5_vl", "none", None, 4.0, 100), _row("qwen2_5_vl", "fastv", 0.25, 2.0, 25),
                           _row("llava_onevision", "none", None, 4.0, 100),
                           _row("llava_onevision", "fastv", 0.25, 1.0, 25)],
               "accuracy": [{"config": "configs/dycoke/trained_a.yaml", "method": "fastv", "budget": 0.25,
                             "test/acc": 0.5, "test/acc_motion": 0.25},
                            {"config": "configs/dycoke/trained_a.yaml", "method": "none", "budget": None,
                             "test/acc": 0.75, "test/acc_motion": 1.0}]}
    compact = bench.compact_table(summary).splitlines()
    assert compact[0] == "| method | budget | llava_onevision | qwen2_5_vl | acc. trained_a |"
    assert compact[2] == "| none | - | 1.00x (100/100) | 1.00x (100/100) | 0.750 |"
    assert compact[3] == "| fastv | 25% | 4.00x (25/100) | 2.00x (25/100) | 0.500 |"
    kinds = bench.kinds_table(summary, 0.25).splitlines()
    assert kinds[0] == "| model | method | budget | all | motion |"
    assert kinds[2:] == ["| trained_a | fastv | 25% | 0.500 | 0.25 |", "| trained_a | none | - | 0.750 | 1.00 |"]
    full = bench.table(summary).splitlines()
    assert full[3].startswith("| qwen2_5_vl | fastv | 25% | 25 / 100 | 1.00 | 10 | 2.00 | 2.00x | 10 |")
    bench.plot(summary, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_a_method_refusing_a_budget_is_a_row_that_says_so(tmp_path):
    bench = _load()
    refusal = "`cost` is too small for the merging already done: 0.15 of 3 layers."
    summary = {"latency": [_row("qwen2_5_vl", "none", None, 4.0, 100)],
               "accuracy": [{"config": "trained_a.yaml", "method": "none", "budget": None, "test/acc": 0.75,
                             "test/acc_motion": 1.0},
                            {"config": "trained_a.yaml", "method": "framefusion", "budget": 0.15, "refused": refusal}]}
    assert bench.kinds_table(summary, 0.15).splitlines()[3] == "| trained_a | framefusion | 15% | refused | - |"
    assert "| framefusion | 15% | - | refused |" in bench.compact_table(summary).splitlines()
    bench.plot(summary, tmp_path / "plot.png")  # the refused point is left out, not drawn at 0
