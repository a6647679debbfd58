"""bf16 training steps that torch's own kernels get wrong, worked around in atrous: each runs
in a subprocess, since the fault is a heap corruption that kills the process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from atrous.layers import BiasAfterConv2d


def test_bias_after_conv_is_conv2d_in_fp32():
    torch.manual_seed(0)
    reference = torch.nn.Conv2d(64, 5, 3, padding=2, dilation=2)
    moved = BiasAfterConv2d(64, 5, 3, padding=2, dilation=2)
    moved.load_state_dict(reference.state_dict())
    x = torch.randn(2, 64, 9, 11)
    torch.testing.assert_close(moved(x), reference(x), rtol=1e-6, atol=1e-6)
    assert list(moved.state_dict()) == ["weight", "bias"]


@pytest.mark.parametrize("classes", [11, 2])
def test_fcn_trains_under_bf16_autocast(classes):
    """FCN-32s' score_fr (4096 -> K, K small) under CPU bf16 autocast: torch 2.14's weight
    gradient of the biased convolution corrupted the heap on AMX CPUs (a crash, not a wrong
    number); elsewhere this passes either way."""
    script = textwrap.dedent(f"""
        import torch, atrous
        torch.manual_seed(0)
        model = atrous.create_model("fcn32s", {classes}).train()
        x = torch.randn(2, 3, 64, 64)
        for _ in range(2):
            with torch.autocast("cpu", torch.bfloat16):
                out = model(x)
            out.float().square().mean().backward()
        trained = [p for p in model.parameters() if p.requires_grad]
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
