"""The ``run`` stage: one run of the study, trained and then evaluated in one process.

The pipeline's unit of work (``run@...`` in ``dvc.yaml``, one job of ``python -m
paper_repro launch``): :func:`paper_repro.train.train` resumes from the run's last
checkpoint (a finished run resumes at its end and only rewrites ``model.pt``), then rank 0
evaluates the final model (:func:`paper_repro.evaluate.evaluate`). One process instead of
two saves a Python and PyTorch start-up and a DVC stage per run.
"""

from __future__ import annotations

import os

from .evaluate import evaluate
from .layout import Layout
from .settings import RunSettings
from .train import train


def run(settings: RunSettings, layout: Layout = Layout()) -> dict | None:
    """Train the run (under ``torchrun``: every rank), then evaluate it on rank 0; returns its metrics there."""
    train(settings, layout)
    if int(os.environ.get("RANK", "0")) > 0:
        return None
    return evaluate(settings, layout)
