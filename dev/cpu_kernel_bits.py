"""sha256 (first 8 hex digits) of a few float32 CPU ops at toy-s shapes, two threads: run it under
different kernel settings (ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA)
to see which change the bits (docs/results/2026-12-05-toy-base-draw.md).

    ATEN_CPU_CAPABILITY=avx2 python dev/cpu_kernel_bits.py
"""

import hashlib

import torch
import torch.nn.functional as F


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()[:8]


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    x, w = torch.randn(1024, 128), torch.randn(384, 128)
    outputs = {
        "linear": F.linear(x, w),
        "weight_grad_gemm": torch.randn(1024, 384).t() @ x,
        "softmax": torch.softmax(torch.randn(16, 256, 256), -1),
        "rms_norm": x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5),
        "silu": F.silu(torch.randn(1024, 384)),
        "sdpa": F.scaled_dot_product_attention(*torch.randn(3, 4, 4, 256, 32), is_causal=True),
        "cross_entropy": F.cross_entropy(torch.randn(1024, 1024), torch.randint(0, 1024, (1024,)), reduction="none"),
    }
    print(torch.backends.cpu.get_cpu_capability(), " ".join(f"{k}={digest(v)}" for k, v in outputs.items()))


if __name__ == "__main__":
    main()
