"""The files a training run writes: ``checkpoint.pt`` (to resume) and ``model.pt`` (to evaluate),
and the ``pretrain`` stage's backbone weights.

Both hold only what ``torch.load(weights_only=True)`` accepts (tensors, numbers, strings and
containers of them), so loading one, from wherever it came, never runs code. A file that does
not load, or lacks a key this project writes, is refused with one line naming it.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError

RESUME_KEYS = ("config", "iteration", "log", "model", "optimizer", "scheduler", "scaler", "rng")
MODEL_KEYS = ("config", "model")
BACKBONE_KEYS = ("config", "backbone")  # the pretrain stage's backbone weights


def load_checkpoint(path: str | Path, keys: tuple[str, ...], device: torch.device | str = "cpu") -> dict:
    """The checkpoint at ``path``, loaded without running code, with every one of ``keys``."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except PermissionError:
        raise
    except Exception as error:  # truncated, random bytes, a pickle with code in it, ...: all mean "not a checkpoint"
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise CheckpointError(f"{path}: not a valid checkpoint ({reason})") from error
    missing = [key for key in keys if key not in state] if isinstance(state, dict) else list(keys)
    if missing:
        raise CheckpointError(f"{path}: not a checkpoint of this project (missing {', '.join(missing)})")
    return state


def seed_everything(seed: int) -> None:
    """Seed torch's, NumPy's and Python's generators, so that a run's states (and its checkpoints) are a function of its seed."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def rng_states() -> dict:
    """Every random generator's state, as tensors, lists and numbers."""
    name, keys, position, has_gauss, cached_gauss = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gauss],
        "python": [version, list(python_state), gauss_next],
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, position, has_gauss, cached_gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gauss))
    version, python_state, gauss_next = states["python"]
    random.setstate((version, tuple(python_state), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
