"""The typed config of each kind of stage run: what the planner resolves, what the stage
receives, and, as canonical JSON, what a run's key hashes and its manifest keeps.

Each model is built from the stage packages' own typed configs (`TrainConfig`, `ProbeSpec`,
`CorpusConfig`, `ToyWorldConfig`, ...), so a stage function reads attributes of validated
objects instead of re-validating a dict. Fields listed in `OMIT_AT_DEFAULT` are left out of the
canonical form while they hold their default (`runfiles.canonical`): they were added after keys
existed, and a run that does not use them keeps the key it had before them.
"""

from __future__ import annotations

from typing import Any, Literal

from data_recipes.curate import CorpusConfig
from data_recipes.problems import ProblemFields
from data_recipes.toyworld import ToyWorldConfig
from midtrain.config import TrainConfig
from midtrain.spec import ModelSpec
from rl_probe.spec import ProbeSpec
from runfiles.canonical import Canonical

# TrainConfig fields that do not change what a stage produces: the thread count is the stage's
# own `threads` (None: the executor's), the memory budget only gates validation, retention says
# which training states and HF exports stay on disk.
RUNTIME_FIELDS = frozenset({"threads", "gpu_memory_gb", "keep_states", "export_every_tokens"})
# The setting retention replaced (an HF export at every training state) stays in the keys as it
# was, so runs finished before retention existed stay cached: their weights never depended on it.
RETIRED_TRAIN_FIELDS = {"export_hf_checkpoints": True}


class RunConfig(Canonical):
    OMIT_AT_DEFAULT = frozenset({"code_version"})
    code_version: int | None = None  # the stage's code version (stage_run sets it; external has none)


class ExternalRun(RunConfig):
    """A user-provided artifact (HF model, tokenizer, file), keyed by its content."""
    path: str
    fingerprint: str


class ProblemSource(Canonical):
    """Where a pool's train or eval problems come from: a file (by content) or a toy split."""
    OMIT_AT_DEFAULT = frozenset({"path", "fingerprint", "fields", "toy_split", "n", "offset"})
    path: str | None = None
    fingerprint: str | None = None
    fields: ProblemFields | None = None
    toy_split: Literal["train", "probe", "eval"] | None = None
    n: int | None = None
    offset: int | None = None  # a long-run target's own held-out problems: the split's next ones


class ProblemsRun(RunConfig):
    toy_world: ToyWorldConfig
    train_set: ProblemSource
    eval_set: ProblemSource


class LevelPick(Canonical):
    levels: list[int] | None
    n: int | None  # None: every problem of a file at its levels


class SelectionRun(RunConfig):
    """The probe's problems picked from the pool, at fixed levels or by difficulty control."""
    OMIT_AT_DEFAULT = RunConfig.OMIT_AT_DEFAULT | {"spec", "k", "target"}
    difficulty: Literal["fixed", "auto"]
    train_set: LevelPick
    eval_set: LevelPick
    spec: ProbeSpec | None = None  # auto: the probe spec whose sampler measures pass@k
    k: int | None = None
    target: list[float] | None = None


class TokenizerRun(RunConfig):
    OMIT_AT_DEFAULT = RunConfig.OMIT_AT_DEFAULT | {"source_files"}
    vocab_size: int
    toy_world: ToyWorldConfig
    sources: dict[str, dict[str, Any]]
    source_files: dict[str, str] | None = None


class CurateRun(RunConfig):
    OMIT_AT_DEFAULT = RunConfig.OMIT_AT_DEFAULT | {"filter_files", "source_files"}
    corpus: str
    corpus_config: CorpusConfig
    preset: str
    filters: dict[str, dict[str, Any]]  # every argument of every filter block, defaults filled in
    toy_world: ToyWorldConfig
    filter_files: dict[str, str] | None = None  # fingerprints of files a filter reads
    source_files: str | None = None  # fingerprint of the corpus files


class MidtrainRun(RunConfig):
    """A mid-training (or the base's pretraining) stage: its phase, train settings, mix and
    processes. A decay branch's LR is its stable stage's, set by the planner."""
    OMIT_AT_DEFAULT = RunConfig.OMIT_AT_DEFAULT | {"model_preset", "model"}
    phase: Literal["pretrain", "full", "stable", "decay"]
    train: TrainConfig
    threads: int | None  # the stage's own thread budget (None: the executor's)
    nproc_per_node: int
    mix: dict[str, float]
    model_preset: str | None = None  # a base pretrained from scratch: its architecture
    model: ModelSpec | None = None

    def canonical(self) -> dict[str, Any]:
        return {**super().canonical(), "train": {**self.train.model_dump(mode="json", exclude=set(RUNTIME_FIELDS)),
                                                 **RETIRED_TRAIN_FIELDS}}


class ProbeRun(RunConfig):
    OMIT_AT_DEFAULT = RunConfig.OMIT_AT_DEFAULT | {"engine_options", "keep_policy", "device"}
    spec: ProbeSpec
    spec_hash: str
    seed: int
    engine_options: dict[str, Any] | None = None  # verl: GPUs, nodes, rollout engine
    keep_policy: bool = False  # the run's artifacts include the final policy
    device: str = "cpu"  # the embedded engine's device: another one rounds differently

