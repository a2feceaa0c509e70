"""The arithmetic count behind the achieved TFLOP/s, and the bench's step timing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from earlyad.train.flops import (
    bf16_peak_tflops,
    forward_flops,
    model_flops,
    training_flops_per_sample,
)
from earlyad.train.model import ModelConfig

ROOT = Path(__file__).resolve().parents[1]


def test_a_hand_counted_network():
    net = nn.Sequential(nn.Conv3d(1, 2, kernel_size=3), nn.Flatten(), nn.Linear(16, 3))
    # conv: 2 channels x 2^3 outputs x 27 taps multiply-adds; linear: 3 x 16
    assert forward_flops(net, (1, 4, 4, 4)) == 2 * (2 * 8 * 27) + 2 * (3 * 16)


def test_grouped_and_strided_convolutions_count_what_they_compute():
    conv = nn.Conv3d(4, 6, kernel_size=(3, 1, 1), stride=2, groups=2)
    # out (6, 2, 2, 2): each output sums 2 input channels x 3 taps
    assert forward_flops(conv, (4, 6, 4, 4)) == 2 * (6 * 2 * 2 * 2) * 2 * 3


@pytest.mark.parametrize("variant", ["paper", "liu2022"])
def test_the_full_model_costs_what_the_reference_says(variant):
    """REFERENCE.md: about 100 GMAC forward per 96^3 sample, ~0.6 TFLOP per training sample."""
    config = ModelConfig(variant=variant)
    macs = model_flops(config) / 2
    assert 95e9 < macs < 105e9
    assert training_flops_per_sample(config) == 3 * model_flops(config)
    assert 0.57e12 < training_flops_per_sample(config) < 0.63e12


def test_width_scales_the_work_roughly_quadratically():
    full, half = model_flops(ModelConfig()), model_flops(ModelConfig(width=0.5))
    assert 0.2 < half / full < 0.3


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA A100-SXM4-40GB", 312.0),  # MeluXina's GPUs
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A10", 125.0),
        ("Tesla T4", None),
    ],
)
def test_bf16_peaks(name, peak):
    assert bf16_peak_tflops(name) == peak


def test_the_bench_times_the_trainers_step_and_reports_its_tflops():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "dataloader.py"), "--step-only",
         "--step-device", "cpu", "--step-width", "0.0625", "--step-batch", "2",
         "--step-steps", "1"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("training step on CPU") and "batch 2" in line, done.stdout
    number = r"([0-9.]+(?:e[-+][0-9]+)?)"  # printed to 4 significant digits
    work = float(re.search(number + " TFLOP per step", line).group(1))
    exact = 2 * training_flops_per_sample(ModelConfig(width=0.0625)) / 1e12
    assert work == pytest.approx(exact, rel=1e-3)
    seconds = float(re.search("median " + number + " s", line).group(1))
    achieved = float(re.search(number + " TFLOP/s achieved", line).group(1))
    assert seconds > 0 and achieved == pytest.approx(exact / seconds, rel=2e-3)
