"""Rerun the first steps of a finished midtrain stage from its manifest, to compare runs of one key.

Reads WORKSPACE/midtrain/KEY/manifest.json, trains the same model on the same inputs for STEPS
steps (the stage's own token budget cut to STEPS; a constant schedule past warmup gives the same
first steps) and prints each step's loss and gradient norm beside the stage's recorded ones.
Kernel settings come from the environment (MKL_CBWR, ATEN_CPU_CAPABILITY, ...):
docs/results/2026-12-05-fresh-demo.md.

    python dev/midtrain_first_steps.py midprobe-runs d9dbcc9dc8d23a6b --steps 3 --out /tmp/rerun
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from midtrain.config import TrainConfig
from midtrain.data import BlendPart
from midtrain.spec import ModelSpec
from midtrain.train import train
from runfiles import METRICS_FILE


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
    config, inputs = manifest["config"], manifest["inputs"]
    if config["phase"] == "decay":
        raise SystemExit(f"{stage_dir}: a decay branch continues its stable stage's state; "
                         "rerun the stable stage instead")
    train_fields = set(TrainConfig.model_fields)
    seq = config["train"]["seq_length"] * config["train"]["micro_batch_size"] * config["train"]["grad_accum"]
    train_cfg = TrainConfig(**{**{k: v for k, v in config["train"].items() if k in train_fields},
                               "tokens": seq * args.steps, "threads": args.threads or config["threads"]})
    blend = []
    for name, weight in sorted(config["mix"].items()):
        corpus = args.workspace / inputs[f"corpus:{name}"]
        prefixes = json.loads((corpus / "curation.json").read_text())["prefixes"]
        blend.append(BlendPart(name=name, weight=weight, prefixes=[str(corpus / p) for p in prefixes]))
    init = args.workspace / inputs["init"] / "hf" if "init" in inputs else None
    if init is None:
        raise SystemExit(f"{stage_dir}: a stage from random init needs its model spec; not supported")
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    train(ModelSpec.from_hf_config(init), train_cfg, blend, out_dir=args.out, init=init,
          tokenizer_dir=args.workspace / inputs["tokenizer"], keep_final_state=False)

    def steps(path: Path) -> list[dict]:
        return [json.loads(line)["data"] for line in path.read_text().splitlines()[:args.steps]]

    for step, (new, old) in enumerate(zip(steps(args.out / METRICS_FILE), steps(stage_dir / METRICS_FILE)), 1):
        same = all(new[k] == old[k] for k in ("train/loss", "train/grad_norm"))
        print(f"step {step}: loss {new['train/loss']!r} grad_norm {new['train/grad_norm']!r}  "
              f"recorded {old['train/loss']!r} {old['train/grad_norm']!r}  {'same' if same else 'DIFFERS'}")


if __name__ == "__main__":
    main()
