"""Custom recipes in the suite (qeval.recipes): validation with one clear message each (exit 2 through the real
CLI), the artifact key follows every edit, and the edit really switches ModelOpt's quantizers off on the real
model."""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from qeval.cli import main
from qeval.errors import QevalError

SUITE = """\
name: r
model: {{source: smollm2-135m-instruct, dtype: bfloat16}}
baseline: bf16
recipes:
{recipes}
candidates: [{candidates}]
backends: [hf]
tasks:
  - {{name: bigbench_mc_physics, limit: 8}}
calibration: bigbench-mixed
"""

KEEP_EDGES = """\
  - name: int8_sq_keep_edges
    base: int8_sq
    disable: [lm_head, "model.layers.0.*", "model.layers.29.*"]
"""


def _suite(tmp_path: Path, recipes: str, candidates: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(recipes=textwrap.indent(textwrap.dedent(recipes), ""), candidates=candidates))
    return path


@pytest.mark.parametrize("recipes,candidates,field,words,fix", [
    ("  - {name: mine, base: int9_sq}\n", "mine", "recipes", ["unknown base 'int9_sq'"], "int8_sq"),
    ("  - {name: fp8, base: int8_sq}\n", "fp8", "recipes", ["'fp8' is a registered precision"], "fp8_custom"),
    ("  - {name: mine, base: bf16}\n", "mine", "recipes", ["unquantized baseline"], "int8_sq"),
    ("  - {name: mine, base: int8_sq, block_size: 32}\n", "mine", "recipes", ["no weight block size"], "int4_awq"),
    ("  - {name: mine, base: fp8, smoothquant_alpha: 0.5}\n", "mine", "recipes",
     ["smoothquant_alpha applies to the smoothquant algorithm", "'max'"], "drop smoothquant_alpha"),
    ("  - {name: mine, base: int8_sq}\n  - {name: mine, base: fp8}\n", "mine", "recipes", ["listed twice"],
     "once"),
    ("  - {name: mine, base: int8_sq, disabled: [lm_head]}\n", "mine", "recipes[0].disabled", [], "disable"),
])
def test_suite_refuses_a_bad_recipe_with_one_message(tmp_path, recipes, candidates, field, words, fix) -> None:
    from qeval.suite import load_suite

    with pytest.raises(QevalError) as info:
        load_suite(_suite(tmp_path, recipes, candidates))
    err = info.value
    assert err.field == field and err.file and err.file.endswith("suite.yaml")
    for w in words:
        assert w in err.problem, err.problem
    assert fix in (err.fix or ""), err.fix


@pytest.mark.parametrize("recipe,field,words", [
    ("  - {name: mine, base: int8_sq, disable: ['model.layer.0.*']}\n", "recipes[0].disable[0]",
     ["'model.layer.0.*' matches no module"]),
    ("  - {name: mine, base: int4_awq, block_size: 100}\n", "recipes[0].block_size",
     ["blocks of 100", "hidden_size=576"]),
])
def test_cli_exit_2_for_recipes_that_do_not_fit_the_real_model(tmp_path, capsys, recipe, field, words) -> None:
    suite = _suite(tmp_path, recipe, "mine")
    reports = tmp_path / "reports"
    assert main(["run", str(suite), "--reports-dir", str(reports)]) == 2
    err = capsys.readouterr().err
    assert f"field '{field}'" in err and "fix:" in err and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    assert not reports.exists() or not any(reports.iterdir())  # refused before a run directory exists


@pytest.mark.bigbench
def test_artifact_key_covers_every_edit(tmp_path, qeval_model_dir, qeval_tokenizer) -> None:
    from qeval.quantize import artifact_key_for
    from qeval.suite import load_suite

    def key(recipe: str, precision: str = "mine") -> str:
        suite, _ = load_suite(_suite(tmp_path, recipe, precision))
        ctx = SimpleNamespace(suite=suite, calibration=None, tokenizer=qeval_tokenizer, model_dir=qeval_model_dir,
                              model_hash="0" * 64, compute=SimpleNamespace(dtype="float32"))
        return artifact_key_for(ctx, precision, "modelopt-fakequant")

    plain = key("  - {name: mine, base: int8_sq}\n")
    assert key("  - {name: mine, base: int8_sq, description: 'same recipe, other words'}\n") == plain
    assert key("  - {name: other, base: int8_sq}\n", "other") != plain  # the name is part of the key
    edited = {key(r) for r in (
        "  - {name: mine, base: int8_sq, disable: [lm_head, 'model.layers.0.*']}\n",
        "  - {name: mine, base: int8_sq, smoothquant_alpha: 0.5}\n",
        "  - {name: mine, base: int8_sq, calibration_samples: 8}\n",
        "  - {name: mine, base: int8_sq, kv_cache: fp8}\n",
        "  - {name: mine, base: int8_sq, calibration: local-text}\n",
    )}
    assert len(edited) == 5 and plain not in edited
    assert key("  - {name: mine, base: int4_awq, block_size: 64}\n") != key(
        "  - {name: mine, base: int4_awq, block_size: 32}\n")


def test_disable_really_keeps_the_modules_unquantized(tmp_path, qeval_model_dir, qeval_tokenizer) -> None:
    import modelopt.torch.quantization as mtq
    import torch

    from qeval import precisions
    from qeval.backends.hf import load_hf_model
    from qeval.suite import load_suite

    load_suite(_suite(tmp_path, """\
      - name: int8_wo_keep_edges
        base: int8_wo
        disable: [lm_head, "model.layers.0.*", "model.layers.29.*"]
    """, "int8_wo_keep_edges"))
    entry = precisions.get("int8_wo_keep_edges")
    assert entry.custom["base"] == "int8_wo"
    assert list(entry.custom["disable"]) == ["lm_head", "model.layers.0.*", "model.layers.29.*"]
    model = load_hf_model(qeval_model_dir, "float32", device="cpu")
    ids = qeval_tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]
    mtq.quantize(model, precisions.modelopt_config(entry),
                 lambda m: m(input_ids=torch.tensor([ids])))  # weight-only: one pass sets every scale
    state = {n: m.weight_quantizer.is_enabled for n, m in model.named_modules() if hasattr(m, "weight_quantizer")}
    assert not any(v for n, v in state.items() if n.startswith(("model.layers.0.", "model.layers.29.")))
    assert all(v for n, v in state.items() if n.startswith("model.layers.1.") or n.startswith("model.layers.28."))
    assert state.get("lm_head") in (None, False)
    assert sum(state.values()) == 28 * 7  # 28 inner layers x 7 linears quantized, the edges not
