"""The benchmark's kernel checks: it reports the kernel the dispatcher chooses, and never lets the math kernel stand in."""

import pytest
import torch

from paper_repro import bench
from paper_repro.losses import padded_widths


def test_the_kernel_named_is_the_cpu_flash_kernel_for_the_cpu_widths():
    assert bench.aggregation_kernel(2, 64, 64, 256, 19, torch.float32, torch.device("cpu")) == "flash_attention"
    assert bench.aggregation_kernel(2, 64, 16, 8, 21, torch.bfloat16, torch.device("cpu")) == "flash_attention"  # pooled keys


@pytest.mark.filterwarnings("ignore:Flash attention")  # PyTorch says why its flash kernel refuses the shapes: the point of the test
def test_a_fallback_to_the_math_kernel_is_an_error(monkeypatch):
    """The CUDA widths (values narrower than the queries) on the CPU, whose flash kernel refuses them:
    the case raises instead of timing the math kernel."""
    def cuda_widths(device_type, dim, classes):
        return padded_widths("cuda", dim, classes)

    monkeypatch.setattr("paper_repro.bench.padded_widths", cuda_widths)
    monkeypatch.setattr("paper_repro.losses.padded_widths", cuda_widths)
    with pytest.raises(RuntimeError, match="No available kernel"):
        bench.aggregation_kernel(2, 64, 64, 256, 19, torch.float32, torch.device("cpu"))
    case = {"variant": "fused", "n": 64, "dim": 256, "classes": 19, "batch": 2, "tau": 0.1, "precision": "float32", "repeats": 1,
            "device": "cpu"}
    with pytest.raises(RuntimeError, match="No available kernel"):
        bench._aggregation_case(case)
    monkeypatch.undo()
    assert bench._aggregation_case(case)["kernel"] == "flash_attention"


def test_a_case_restricted_to_one_kernel_names_that_kernel_or_raises():
    """The GPU check times each fused kernel alone: the row names the one it was restricted to, and a kernel that refuses
    the shapes (the CPU has no memory-efficient kernel) raises instead of another one standing in."""
    case = {"variant": "fused", "n": 64, "dim": 16, "classes": 5, "batch": 2, "tau": 0.1, "precision": "float32", "repeats": 1,
            "device": "cpu"}
    assert bench._aggregation_case(case | {"kernel": "flash_attention"})["kernel"] == "flash_attention"
    with pytest.raises(RuntimeError, match="No available kernel|No viable backend"):
        bench._aggregation_case(case | {"kernel": "efficient_attention"})
