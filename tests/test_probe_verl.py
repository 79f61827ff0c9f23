import json
import shlex

import pandas as pd
import pytest
from transformers import AutoTokenizer

from rl_probe.embedded import read_metrics
from rl_probe.prompts import Prompter
from rl_probe.spec import get_probe_spec
from rl_probe.verl_backend import import_verl_run, prepare_verl_probe
from test_probe_helpers import make_problems, tiny_checkpoint, write_jsonl

OCTO = get_probe_spec("octothinker-v1")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("verl")
    checkpoint = tiny_checkpoint(root / "ckpt")
    train = write_jsonl(make_problems(40, seed=1), root / "train.jsonl")
    evals = write_jsonl(make_problems(8, seed=2, data_source="toy/eval"), root / "eval.jsonl")
    launch = prepare_verl_probe(checkpoint, OCTO, train, evals, seed=3, out_dir=root / "out", n_gpus_per_node=1)
    return root, checkpoint, launch


def test_config_composes_from_verls_dir_and_carries_the_spec(prepared):
    root, _, launch = prepared
    c = launch.config  # compose_config already ran verl's validate_config on it
    assert c.algorithm.adv_estimator == "grpo" and c.algorithm.use_kl_in_reward is False
    assert (c.data.train_batch_size, c.actor_rollout_ref.rollout.n) == (128, 16)
    assert c.actor_rollout_ref.actor.ppo_mini_batch_size == 64
    assert c.actor_rollout_ref.actor.optim.lr == 1e-6
    assert c.algorithm.rollout_correction.bypass_mode is False  # vLLM's log-probs are not the actor's
    assert c.actor_rollout_ref.actor.use_kl_loss is False and c.actor_rollout_ref.actor.entropy_coeff == 0
    assert c.actor_rollout_ref.rollout.temperature == 1.0 and c.data.max_response_length == 4096
    assert c.actor_rollout_ref.actor.loss_scale_factor == 4096  # Dr.GRPO's constant divisor
    assert c.trainer.test_freq == 4 and c.trainer.total_training_steps == OCTO.steps
    assert list(c.trainer.logger) == ["console", "file"]
    assert c.reward.custom_reward_function.reward_kwargs.variant == "single-box"  # OctoThinker: one box
    assert (root / "out" / "verl_config.yaml").exists()
    # the launcher passes the same overrides that were composed and validated
    assert launch.command[1:3] == ["-m", "verl.trainer.main_ppo"]
    assert launch.env["VERL_FILE_LOGGER_PATH"] == str(launch.log_path)
    assert all("=" in arg for arg in launch.command[3:])
    shlex.join(launch.command)  # printable as a shell command


def test_bypass_mode_composes_and_validates(prepared):
    root, checkpoint, _ = prepared
    train, evals = root / "train.jsonl", root / "eval.jsonl"
    spec = OCTO.model_copy(update={"bypass_mode": True})
    launch = prepare_verl_probe(checkpoint, spec, train, evals, seed=3, out_dir=root / "bypass", n_gpus_per_node=1)
    assert launch.config.algorithm.rollout_correction.bypass_mode is True


def test_parquet_loads_in_rlhf_dataset_and_renders_the_exact_template(prepared):
    from verl.trainer.ppo.utils import create_rl_dataset
    from verl.utils.config import omega_conf_to_dataclass
    from verl.utils.tokenizer.chat_template import apply_chat_template
    from verl.utils.tokenizer.tokenizer import normalize_token_ids

    _, checkpoint, launch = prepared
    # the tokenizer verl's v1 trainer builds: HFModelConfig applies custom_chat_template
    tokenizer = omega_conf_to_dataclass(launch.config.actor_rollout_ref.model).tokenizer
    dataset = create_rl_dataset(launch.config.data.train_files, launch.config.data, tokenizer, None, is_train=True)
    problems = make_problems(40, seed=1)
    assert len(dataset) == len(problems)
    prompter = Prompter(AutoTokenizer.from_pretrained(checkpoint), OCTO)
    for i in (0, 7):
        item = dataset[i]
        expected = prompter.render(problems[i])
        assert expected == OCTO.template.body(problems[i]["question"])  # this tokenizer adds no BOS
        assert item["raw_prompt"] == [{"role": "user", "content": expected}]
        assert item["reward_model"]["ground_truth"] == problems[i]["answer"]
        assert apply_chat_template(tokenizer, item["raw_prompt"], tokenize=False, add_generation_prompt=True) == expected
        ids = normalize_token_ids(apply_chat_template(tokenizer, item["raw_prompt"], tokenize=True,
                                                      add_generation_prompt=True))
        assert ids == prompter.encode(expected)  # the embedded engine's prompt tokens


def test_reward_module_loads_through_verls_loader(prepared):
    from verl.trainer.ppo.reward import get_custom_reward_fn

    fn = get_custom_reward_fn(prepared[2].config)
    result = fn(data_source="toy/add", solution_str="so \\boxed{0.5}", ground_truth="\\frac{1}{2}", extra_info={})
    assert result["score"] == 1.0 and result["acc"] == 1.0
    assert fn(data_source="toy/add", solution_str="no box", ground_truth="2", extra_info=None)["score"] == -1.0


def _write_generations(path, outputs, step):
    """The rows verl's trainer dumps to rollout_data_dir / validation_data_dir.

    Written by hand: verl's writer (PPOTrainer._write_generations, trainer/ppo/v1/
    trainer_base.py) is a static method whose module needs the transfer_queue
    extra, which CPU installs lack.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"input": "q", "output": o, "gts": "4", "score": 0.0, "step": step}) + "\n"
                            for o in outputs))


def _validation_dump(path, step, val_rows, outputs):
    """A validation dump as verl's trainer writes it: per response the input, output, ground
    truth, score and step, plus every key the reward module returned (reward_extra_info) for
    the parquet row's data_source, ground truth and extra_info."""
    from rl_probe.verl_reward import compute_score

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for row, output in zip(val_rows, outputs):
        gts = row["reward_model"]["ground_truth"]
        extra = compute_score(row["data_source"], output, gts, extra_info=row["extra_info"])
        rows.append({"input": row["prompt"][0]["content"], "output": output, "gts": gts,
                     "score": extra["score"], "step": step, "reward": extra["score"], **extra})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_reads_back_verl_logs_across_attempts(prepared, monkeypatch):
    from verl.utils.tracking import FileLogger

    root, checkpoint, launch = prepared
    out = root / "out"
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(launch.log_path))
    first = FileLogger("midprobe", "attempt0")
    first.log({"val-core/toy/eval/acc/mean@1": 0.25}, step=0)
    first.log({"critic/score/mean": -0.5}, step=1)
    first.log({"critic/score/mean": -0.4}, step=2)  # lost: the run died before its checkpoint
    first.finish()
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(out / "verl_logs" / "attempt_001.jsonl"))
    second = FileLogger("midprobe", "attempt1")
    second.log({"critic/score/mean": 0.1, "val-core/toy/eval/acc/mean@1": 0.5}, step=2)
    second.finish()
    outputs = ["\\boxed{4}", "\\boxed{5}", "no", "Wait, \\boxed{4}"] + ["x"] * 4
    _write_generations(out / "verl_rollouts" / "2.jsonl", outputs, step=2)
    val_rows = pd.read_parquet(launch.config.data.val_files).to_dict("records")
    _validation_dump(out / "verl_validation" / "2.jsonl", 2, val_rows[:1], ["\\boxed{4}"])

    seen = []
    spec = OCTO.model_copy(update={"group_size": 4})
    summary = import_verl_run(out, spec, 3, checkpoint, on_metrics=lambda s, m: seen.append(s))
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2] == seen
    assert rows[2]["data"]["critic/score/mean"] == 0.1
    assert rows[2]["data"]["probe/uniform_group_ratio"] == 0.5
    assert rows[2]["data"]["behaviour/reflection_rate"] == 1 / 8
    rollout = json.loads((out / "rollouts" / "step_2.jsonl").read_text())
    assert rollout["response"] == "\\boxed{4}" and rollout["id"] == val_rows[0]["extra_info"]["id"]
    assert rollout["acc"] == (val_rows[0]["reward_model"]["ground_truth"] == "4")
    assert summary["final"] == {"val-core/toy/eval/acc/mean@1": 0.5} and summary["engine"] == "verl"
    assert summary["spec_hash"] == spec.content_hash()


def test_verl_results_go_through_rank_and_the_report(prepared, monkeypatch, tmp_path):
    """Probe runs made by the verl engine, read back from verl's own logs and validation dumps
    (ids from the reward module), rank and report like the embedded engine's."""
    from verl.utils.tracking import FileLogger

    from pipelines.ranking import rank
    from pipelines.report import build, write
    from pipelines.results import collect
    from pipelines.store import RunStore, StageRun

    _, checkpoint, launch = prepared
    val_rows = pd.read_parquet(launch.config.data.val_files).to_dict("records")
    answers = [row["reward_model"]["ground_truth"] for row in val_rows]
    store = RunStore(tmp_path / "ws")
    roles = {}
    for recipe, right_at_end in (("qa_cot", 7), ("qa_short", 2)):  # of the 8 eval problems
        for seed in (0, 1):
            def work(out, right_at_end=right_at_end, seed=seed):
                (out / "verl_logs").mkdir()
                monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(out / "verl_logs" / "attempt_000.jsonl"))
                logger = FileLogger("midprobe", "attempt0")
                for step, right in ((0, 1 + seed), (2, right_at_end)):
                    outputs = [f"\\boxed{{{a}}}" if i < right else "\\boxed{-1}" for i, a in enumerate(answers)]
                    _validation_dump(out / "verl_validation" / f"{step}.jsonl", step, val_rows, outputs)
                    logger.log({"val-core/toy/eval/acc/mean@1": right / len(answers), "critic/score/mean": 0.0},
                               step=step)
                logger.finish()
                import_verl_run(out, OCTO, seed, checkpoint)

            run = StageRun("probe", {"spec": OCTO.model_dump(mode="json"), "spec_hash": OCTO.content_hash(),
                                     "seed": seed, "recipe": recipe})
            store.execute(run, work)
            roles[run] = [{"kind": "probe", "recipe": recipe, "seed": seed}]
    store.set_members("verl-sweep", roles)

    results = collect(store, "verl-sweep")
    assert {len(p.problem_ids) for p in results.probes} == {len(answers)}
    ranking = rank(results.probes, samples=200)
    assert [r.recipe for r in ranking.recipes] == ["qa_cot", "qa_short"]
    doc, _ = build(results, "verl sweep", samples=200)
    md, _ = write(doc, tmp_path / "report", "verl sweep")
    ranked = md.read_text().split("## Ranking", 1)[1]
    assert ranked.index("qa_cot") < ranked.index("qa_short")


def test_profile_launch_composes_a_validation_only_run_of_the_profile_problems(prepared):
    """verl runs the step-0 pass@k profile itself: validation only, on the embedded engine's profile
    problems, spec.passk_samples sampled responses each at the spec's length; verl validates it."""
    from rl_probe.embedded import profile_problems
    from rl_probe.prompts import load_problems

    root, _, launch = prepared
    c = launch.profile.config  # compose_config ran verl's validate_config on it
    rollout = c.actor_rollout_ref.rollout
    assert c.trainer.val_only is True and c.trainer.val_before_train is True and c.trainer.resume_mode == "disable"
    assert (rollout.val_kwargs.n, rollout.val_kwargs.do_sample) == (OCTO.passk_samples, True)
    assert (rollout.val_kwargs.temperature, rollout.val_kwargs.top_p) == (OCTO.temperature, OCTO.top_p)
    assert c.data.max_response_length == OCTO.max_response_length == 4096
    assert c.trainer.validation_data_dir == str(root / "out" / "verl_profile")
    rows = pd.read_parquet(c.data.val_files)
    expected = profile_problems(load_problems(root / "train.jsonl"), OCTO, 3)
    assert [r["id"] for r in rows["extra_info"]] == [p["id"] for p in expected]
    assert launch.profile.log_path.name == "profile.jsonl"  # not an attempt's log: read-back skips it
    # the training launch validates as before: greedy, one response per eval problem
    assert (launch.config.actor_rollout_ref.rollout.val_kwargs.n, launch.config.trainer.val_only) == (1, False)


def test_pass_at_k_profile_from_verls_validation_dump(prepared, tmp_path):
    """The profile launch's dump (verl repeats each row n times, interleaved) gives profile.json's
    pass@k, computed as the embedded engine computes it, and the summary's base_pass_at_k."""
    from math import comb

    from rl_probe.verl_backend import validation_pass_at_k

    root, checkpoint, launch = prepared
    spec = OCTO.model_copy(update={"passk_ks": (1, 2, 4)})
    rows = pd.read_parquet(launch.profile.config.data.val_files).to_dict("records")[:3]
    right = {0: 0, 1: 1, 2: 3}  # correct responses of 4, per problem
    repeated = [(i, row) for i, row in enumerate(rows) for _ in range(4)]
    outputs, seen = [], {}
    for i, row in repeated:
        seen[i] = seen.get(i, 0) + 1
        outputs.append(f"\\boxed{{{row['reward_model']['ground_truth']}}}" if seen[i] <= right[i] else "\\boxed{x}")
    out = tmp_path / "out"
    _validation_dump(out / "verl_profile" / "0.jsonl", 0, [row for _, row in repeated], outputs)
    (out / "verl_logs").mkdir()
    summary = import_verl_run(out, spec, 3, checkpoint)
    profile = json.loads((out / "profile.json").read_text())
    by_hand = {str(k): sum(1 - comb(4 - c, k) / comb(4, k) for c in right.values()) / 3 for k in (1, 2, 4)}
    assert profile["pass_at_k"] == pytest.approx(by_hand) and profile["pass_at_k_samples"] == 4
    assert profile["pass_at_k_problems"] == 3 and summary["base_pass_at_k"] == profile["pass_at_k"]
    with pytest.raises(ValueError, match="expected 256 responses per problem"):
        validation_pass_at_k(out / "verl_profile" / "0.jsonl", OCTO)
