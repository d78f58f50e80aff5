"""The resource planner: which workers x threads (x GPUs) and strategy to train with.

* :mod:`.budget` (pure): what a plan may use;
* :mod:`.model` (pure): a scaling model of throughput and memory per rank, fitted to
  measurements; :mod:`.overhead` (pure): what a whole fit adds (per fit, per epoch,
  the data transfer), so predictions are the fit's end-to-end samples/s;
* :mod:`.solve` (pure): candidates, their predictions and costs, and the choice, a small
  mixed-integer program (``scipy.optimize.milp``);
* :mod:`.probe`: short probe fits on real workers that measure; :mod:`.timing` (pure)
  splits a probe fit's timeline into per-sample work and overhead;
* :mod:`.plan`: ``sk.plan(net, X, y, budget=...)`` ties them together and returns a
  :class:`Plan` that explains itself (a table of every candidate) and applies itself
  (``plan.apply(session, net, X, y)``).
"""

from __future__ import annotations

from scalekit.planner.budget import Budget, PlanError
from scalekit.planner.model import Measurement, ScalingModel, fit_scaling_model
from scalekit.planner.overhead import OverheadModel
from scalekit.planner.plan import Plan, plan
from scalekit.planner.probe import ProbeConfig, probe
from scalekit.planner.solve import Candidate, solve

__all__ = ["Budget", "Candidate", "Measurement", "OverheadModel", "Plan", "PlanError",
           "ProbeConfig", "ScalingModel", "fit_scaling_model", "plan", "probe", "solve"]
