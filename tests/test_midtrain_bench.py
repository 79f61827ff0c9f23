"""The throughput benchmark runs both loops on identical weights and batches."""

import torch

from midtrain.bench import bench_training_throughput
from midtrain.spec import preset


def test_bench_reports_both_loops_from_the_same_start():
    torch.set_num_threads(1)
    result = bench_training_throughput(preset("toy-xs"), seq_length=32, micro_batch_size=2,
                                       steps=2, threads=1)
    assert result["ours"] > 0 and result["peer"] > 0 and result["unit"] == "tokens/s"
    assert result["details"]["first_step_loss_diff"] < 1e-4
    assert 0 < result["details"]["mfu_megatron"] < 1
    assert result["details"]["cpu_time_ratio_hf_over_megatron"] > 0
