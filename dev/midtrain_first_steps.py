"""Rerun the first steps of a finished midtrain stage from its manifest, to compare runs of one key.

Reads WORKSPACE/midtrain/KEY/manifest.json, runs the stage's own code on the same inputs for STEPS
steps (the stage's own token budget cut to STEPS: a constant schedule past warmup gives the same
first steps, one that depends on the total may not) and prints each step's loss and gradient norm
beside the stage's recorded ones.
Kernel settings come from the environment (MKL_CBWR, ATEN_CPU_CAPABILITY, ...):
docs/results/2026-12-05-fresh-demo.md.

    python dev/midtrain_first_steps.py midprobe-runs d9dbcc9dc8d23a6b --steps 3 --out /tmp/rerun
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

from pipelines.run_configs import RETIRED_TRAIN_FIELDS, MidtrainRun
from pipelines.stages import STAGES, StageContext
from runfiles import METRICS_FILE


def artifact(run_dir: Path) -> Path:
    source = run_dir / "source.json"
    return Path(json.loads(source.read_text())["path"]) if source.is_file() else run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("key")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, help="default: the stage's")
    parser.add_argument("--out", type=Path, required=True, help="scratch directory (replaced)")
    args = parser.parse_args()

    stage_dir = args.workspace / "midtrain" / args.key
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    config = manifest["config"]
    if config["phase"] == "decay":
        raise SystemExit(f"{stage_dir}: a decay branch continues its stable stage's state; "
                         "rerun the stable stage instead")
    train = {k: v for k, v in config["train"].items() if k not in RETIRED_TRAIN_FIELDS}
    tokens_per_step = train["seq_length"] * train["micro_batch_size"] * train["grad_accum"]
    run_config = MidtrainRun.model_validate({**config, "threads": args.threads or config["threads"],
                                             "train": {**train, "tokens": tokens_per_step * args.steps}})
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    # the stage's own code, on the artifacts of its inputs (an external one: the path it names)
    inputs = {role: artifact(args.workspace / ref) for role, ref in manifest["inputs"].items()}
    STAGES["midtrain"](SimpleNamespace(config=run_config), inputs, args.out,
                       StageContext(on_metrics=lambda step, data: None, threads=run_config.threads or 1))

    def steps(path: Path) -> list[dict]:
        return [json.loads(line)["data"] for line in path.read_text().splitlines()[:args.steps]]

    for step, (new, old) in enumerate(zip(steps(args.out / METRICS_FILE), steps(stage_dir / METRICS_FILE)), 1):
        same = all(new[k] == old[k] for k in ("train/loss", "train/grad_norm"))
        print(f"step {step}: loss {new['train/loss']!r} grad_norm {new['train/grad_norm']!r}  "
              f"recorded {old['train/loss']!r} {old['train/grad_norm']!r}  {'same' if same else 'DIFFERS'}")


if __name__ == "__main__":
    main()
