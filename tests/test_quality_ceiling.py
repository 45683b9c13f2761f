"""The prompt and loss experiment (``benchmarks.quality.ceiling``): its variants and its tables.

Training runs are the quality benchmark's business (``tests/test_quality_benchmark.py``); here the variants
must be valid options and the tables must say what the runs measured.
"""

from __future__ import annotations

from benchmarks.quality.ceiling import VARIANTS, build_parser, summary_rows, write_results
from training.learn.config import TrainConfig
from training.model.config import AdapterConfig


def _run(family: str, variant: str, repeat: int, held_out: float, **extra: float) -> dict:
    return {"family": family, "variant": variant, "labeled": 16, "repeat": repeat, "held_out_miou": held_out,
            "train_miou": 0.5 + repeat / 10, "seconds_per_step": 0.4, **extra}


def test_every_variant_is_a_valid_decoder_kind_configuration():
    assert "default" in VARIANTS and not VARIANTS["default"].adapter and not VARIANTS["default"].train
    for variant in VARIANTS.values():
        assert AdapterConfig.for_kind("decoder", **variant.adapter).kind == "decoder"
        TrainConfig.from_dict({**TrainConfig().to_dict(), **variant.train})
    assert AdapterConfig.for_kind("decoder", **VARIANTS["tokens8"].adapter).prompt_tokens == 8
    assert TrainConfig.from_dict(VARIANTS["dice"].train).focal_weight == 0.0


def test_the_table_has_one_row_per_family_count_and_variant_with_each_repeat(tmp_path):
    runs = [_run("synthetic:target", "default", 0, 0.5, oracle_miou=0.6), _run("synthetic:target", "default", 1, 0.7),
            _run("synthetic:second", "dice", 0, 0.25)]
    rows = summary_rows(runs, "held_out_miou")
    assert len(rows) == 2 + 2
    assert rows[2] == ("| synthetic:target | 16 | default | 0.600 ± 0.141 | 0.500, 0.700 | 0.550 ± 0.071 "
                       "| 0.400 ± 0.000 |")
    assert rows[3].startswith("| synthetic:second | 16 | dice | 0.250 | 0.250 |")
    # Only the runs that measured the oracle appear in its table.
    oracle = summary_rows(runs, "oracle_miou")
    assert oracle[2:] == ["| synthetic:target | 16 | default | 0.600 | 0.600 | 0.500 | 0.400 |"]
    machine = {"cpu_model": "cpu", "usable_cores": 2, "auto_precision": "fp32", "torch_version": "2",
               "torch_threads": 1, "git_commit": "abc"}
    results = {"started_at": "now", "machine": machine, "seconds": 1.0, "runs": runs,
               "settings": {"steps": 5, "repeats": 2, "labeled": [16], "variants": ["default", "dice"]}}
    json_path, md_path = write_results(results, tmp_path / "sub" / "ceiling")
    text = md_path.read_text()
    assert json_path.is_file() and "Prompt oracle" in text and "`dice`: no focal term" in text


def test_the_command_line_defaults_to_both_families_at_16_images():
    args = build_parser().parse_args(["--out", "x"])
    assert args.families == "synthetic:target,synthetic:second" and args.labeled == "16" and args.oracle
