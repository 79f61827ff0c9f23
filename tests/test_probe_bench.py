"""The SmolLM2 benchmark lines without the model."""

from bench.suite import run_suite
from rl_probe import bench_smollm2


def test_smollm2_lines_say_skipped_without_the_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(bench_smollm2.MODEL_ENV, str(tmp_path / "absent"))
    results = run_suite(["smollm2-probe-step", "smollm2-sampling"])
    lines = capsys.readouterr().out.splitlines()
    assert results == {}
    assert [line.split(": skipped: ")[0] for line in lines] == ["bench smollm2-probe-step", "bench smollm2-sampling"]
    assert all("no model" in line for line in lines)

