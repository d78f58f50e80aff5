"""The solver's choice, as table cases on measured-looking inputs."""

from __future__ import annotations

import pytest

from scalekit.planner.budget import Budget, PlanError
from scalekit.planner.model import Measurement, fit_scaling_model
from scalekit.planner.solve import enumerate_candidates, solve

from .measured import GiB, MiB, big_model, one_machine, synthetic


def choice(measured, budget, **kwargs):
    c = solve(fit_scaling_model(measured), budget, **kwargs).choice
    return (c.workers, c.threads, c.gpus, c.strategy)


# -- what the measurements say ---------------------------------------------------------


def test_one_machine_threads_beat_ranks():
    """The notes' measurement: on one 2-core machine, 1 worker x 2 threads beats 2
    single-thread ranks; the planner follows the numbers, not 'more workers'."""
    assert choice(one_machine(), Budget(cores=2)) == (1, 2, 0, "ddp")


def test_one_core_one_worker():
    assert choice(one_machine(), Budget(cores=1)) == (1, 1, 0, "ddp")


def test_across_machines_ranks_pay_and_ddp_beats_fsdp_when_memory_allows():
    # cheap communication (e.g. fast network, large batches): throughput grows with W
    configs = [("ddp", 1, 1, 0), ("ddp", 1, 4, 0), ("ddp", 2, 1, 0), ("ddp", 4, 1, 0),
               ("fsdp", 2, 1, 0), ("fsdp", 4, 1, 0)]
    measured = synthetic(1e-3, 1e-5, 0.6, {"ddp": 2e-6, "fsdp": 1e-5}, configs=configs)
    assert choice(measured, Budget(cores=16)) == (16, 1, 0, "ddp")
    # the same with 8 workers at most: 8 x 2 threads
    assert choice(measured, Budget(cores=16, max_workers=8)) == (8, 2, 0, "ddp")


def test_memory_picks_fsdp_when_ddp_does_not_fit():
    measured = big_model()  # 3 GiB of state; ddp ranks need 4 GiB, fsdp 3/W + 1.2 GiB
    roomy = Budget(cores=8, memory_per_worker="8GiB")
    assert choice(measured, roomy)[3] == "ddp"  # ddp is faster when it fits
    tight = Budget(cores=8, memory_per_worker="3GiB")
    workers, threads, _, strategy = choice(measured, tight)
    assert strategy == "fsdp" and workers >= 2
    plan = solve(fit_scaling_model(measured), tight)
    ddp_rows = [c for c in plan.candidates if c.strategy == "ddp"]
    assert ddp_rows and all(not c.feasible for c in ddp_rows)
    assert all(any("/rank > 3.0 GiB" in w for w in c.why_not) for c in ddp_rows)
    assert plan.choice.memory_per_rank <= 3 * GiB


def test_very_tight_memory_needs_more_shards():
    measured = big_model()
    # 3 GiB / W + 1.2 GiB <= 2 GiB needs W >= 4
    workers, _, _, strategy = choice(measured, Budget(cores=8, memory_per_worker="2GiB"))
    assert strategy == "fsdp" and workers >= 4


def test_total_memory_of_one_machine_limits_the_workers():
    configs = [("ddp", 1, 1, 0), ("ddp", 2, 1, 0), ("ddp", 4, 1, 0), ("fsdp", 2, 1, 0)]
    # more workers are faster; a ddp rank needs 500 MiB, an fsdp rank 400 MiB + 100 / W
    measured = synthetic(1e-3, 1e-5, 0.6, {"ddp": 2e-6, "fsdp": 1e-5}, configs=configs,
                         state=100 * MiB)
    plan = solve(fit_scaling_model(measured), Budget(cores=16, total_memory=2 * GiB))
    assert plan.choice.workers * plan.choice.memory_per_rank <= 2 * GiB
    assert (plan.choice.workers, plan.choice.threads, plan.choice.strategy) == (4, 1, "ddp")
    assert all(any("in all > 2.0 GiB" in w for w in c.why_not)
               for c in plan.candidates if c.workers > 4)


def test_hourly_cost_limit():
    configs = [("ddp", 1, 1, 0), ("ddp", 2, 1, 0), ("ddp", 4, 1, 0), ("fsdp", 2, 1, 0)]
    measured = synthetic(1e-3, 1e-5, 0.6, {"ddp": 2e-6, "fsdp": 1e-5}, configs=configs)
    budget = Budget(cores=16, threads=(1,), cost_per_worker_hour=0.5, max_cost_per_hour=3.0)
    assert choice(measured, budget) == (6, 1, 0, "ddp")  # 6 x 0.5 = 3.0 per hour


def test_cheapest_allocation_that_meets_the_deadline():
    configs = [("ddp", 1, 1, 0), ("ddp", 1, 2, 0), ("ddp", 2, 1, 0), ("ddp", 4, 1, 0),
               ("fsdp", 2, 1, 0)]
    # 1 ms a sample on one thread: 1M samples x 10 epochs = 2.8 h on one worker
    measured = synthetic(1e-3, 0.0, 0.8, {"ddp": 1e-6, "fsdp": 1e-5}, configs=configs)
    model = fit_scaling_model(measured)
    budget = Budget(cores=32, threads=(1, 2), cost_per_worker_hour=1.0,
                    cost_per_core_hour=0.2)
    kwargs = dict(objective="cost", epochs=10, n_samples=1_000_000)
    slow = solve(model, budget, **kwargs).choice
    # no deadline: the cheapest fit, on one worker (threads pay: 1.4/h for 1.7 h)
    assert (slow.workers, slow.threads) == (1, 2)
    for hours in (2.0, 1.0, 0.5, 0.25):
        plan = solve(model, budget, deadline=hours * 3600, **kwargs)
        c = plan.choice
        assert c.fit_seconds <= hours * 3600
        # nothing that meets the deadline is cheaper
        meets = [x for x in plan.candidates if x.feasible]
        assert c.fit_cost == pytest.approx(min(x.fit_cost for x in meets))
        late = [x for x in plan.candidates if x.fit_seconds > hours * 3600]
        assert all(any("deadline" in w for w in x.why_not) for x in late)


def test_max_cost_of_the_whole_fit():
    measured = one_machine()
    model = fit_scaling_model(measured)
    budget = Budget(cores=2, cost_per_core_hour=10.0, max_cost=0.05)
    c = solve(model, budget, epochs=10, n_samples=60_000).choice
    assert c.fit_cost <= 0.05


def test_gpus_when_present_and_measured():
    configs = [("ddp", 1, 1, 0), ("ddp", 1, 4, 0), ("ddp", 2, 1, 0), ("fsdp", 2, 1, 0),
               ("ddp", 1, 1, 1), ("ddp", 2, 1, 1)]
    measured = synthetic(1e-3, 1e-5, 0.8, {"ddp": 1e-6, "fsdp": 3e-6}, configs=configs,
                         a_gpu=2e-5)
    assert choice(measured, Budget(cores=8, gpus=2)) == (2, 1, 1, "ddp")
    assert choice(measured, Budget(cores=8, gpus=1)) == (1, 1, 1, "ddp")
    assert choice(measured, Budget(cores=8))[2] == 0
    # GPU candidates without a GPU measurement are in the table, not chosen
    cpu = [m for m in measured if not m.gpus]
    plan = solve(fit_scaling_model(cpu), Budget(cores=8, gpus=2))
    assert plan.choice.gpus == 0
    gpu_rows = [c for c in plan.candidates if c.gpus]
    assert gpu_rows and all(c.why_not == ("GPU throughput not measured",) for c in gpu_rows)


def test_hybrid_candidates_need_two_replicas_of_two_shards():
    model = fit_scaling_model(big_model())
    cands = enumerate_candidates(model, Budget(cores=8, threads=(1,)))
    hybrid = sorted({(c.workers, c.shard_size) for c in cands if c.strategy == "hybrid"})
    assert hybrid == [(4, 2), (6, 2), (6, 3), (8, 2), (8, 4)]
    # on one worker only ddp stands for every strategy
    assert [c.strategy for c in cands if c.workers == 1] == ["ddp"]


def test_hybrid_when_memory_allows_a_shard_group_but_not_a_replica():
    measured = big_model() + synthetic(
        2e-3, 5e-5, 0.9, {"hybrid": 2.2e-4}, configs=[("hybrid", 4, 1, 0)], state=3 * GiB,
        overhead={"hybrid": int(1.2 * GiB)})
    # shard groups of 4 hold 0.75 GiB each: 1.95 GiB a rank, under 2 GiB; ddp does not
    # fit, and hybrid's cheaper communication beats fsdp across 8 ranks
    c = solve(fit_scaling_model(measured), Budget(cores=8, threads=(1,),
                                                  memory_per_worker="2GiB")).choice
    assert (c.workers, c.strategy, c.shard_size) == (8, "hybrid", 4)


def test_local_sgd_only_when_asked_for():
    measured = one_machine() + [Measurement("local_sgd", 2, 1, 50_000,
                                            state_bytes=3_600_000, peak_rss=450 * MiB)]
    model = fit_scaling_model(measured)
    assert solve(model, Budget(cores=2, threads=(1,))).choice.strategy == "ddp"
    c = solve(model, Budget(cores=2, threads=(1,)),
              strategies=("ddp", "fsdp", "local_sgd")).choice
    assert (c.workers, c.strategy) == (2, "local_sgd")


def test_ties_go_to_the_simpler_allocation():
    # threads and workers measured to make no difference at all
    measured = [Measurement("ddp", 1, 1, 1000.0), Measurement("ddp", 1, 2, 1000.0),
                Measurement("ddp", 2, 1, 1000.0), Measurement("fsdp", 2, 1, 1000.0)]
    assert choice(measured, Budget(cores=4)) == (1, 1, 0, "ddp")


# -- infeasible budgets -----------------------------------------------------------------


@pytest.mark.parametrize(("budget", "kwargs", "says"), [
    (Budget(cores=8, memory_per_worker="1GiB"), {},
     "the least a rank needs is 1.6 GiB (8 x 1 thread, fsdp) but memory_per_worker is 1.0 GiB"),
    (Budget(cores=2, total_memory="100MiB"), {}, "total memory: at least"),
    (Budget(cores=8, cost_per_worker_hour=2.0, max_cost_per_hour=1.0), {},
     "the cheapest allocation costs 2.00/h"),
    (Budget(cores=2), {"epochs": 1000, "n_samples": 10**8, "deadline": 60.0},
     "deadline: the fastest allocation takes"),
    (Budget(cores=2, cost_per_core_hour=1.0, max_cost=1e-9),
     {"epochs": 1, "n_samples": 10**6}, "fit cost: the cheapest fit costs"),
])
def test_infeasible_budgets_say_which_limit_and_by_how_much(budget, kwargs, says):
    measured = big_model() if budget.memory_per_worker else one_machine()
    with pytest.raises(PlanError) as info:
        solve(fit_scaling_model(measured), budget, **kwargs)
    assert "no allocation satisfies the budget" in str(info.value)
    assert says in str(info.value)
    assert isinstance(info.value, ValueError)


def test_conflicting_limits_name_the_closest_candidate():
    model = fit_scaling_model(big_model())
    # 4 GiB ranks fit only with fsdp on 2+ workers, but 1 worker is all the cost allows
    budget = Budget(cores=8, memory_per_worker="3GiB", cost_per_worker_hour=1.0,
                    max_cost_per_hour=1.5)
    with pytest.raises(PlanError, match="the limits conflict; the closest candidate"):
        solve(model, budget)


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"cores": 0}, "Budget.cores: got 0"),
    ({"cores": 2, "max_workers": -1}, "Budget.max_workers: got -1"),
    ({"cores": 2, "memory_per_worker": "lots"}, "Budget.memory_per_worker: got 'lots'"),
    ({"cores": 2, "total_memory": -5}, "Budget.total_memory: got -5"),
    ({"cores": 2, "cost_per_worker_hour": -1.0}, "Budget.cost_per_worker_hour"),
    ({"cores": 2, "max_cost": 0}, "Budget.max_cost: got 0"),
    ({"cores": 2, "threads": (0,)}, "Budget.threads"),
    ({"cores": 2, "gpus": -1}, "Budget.gpus"),
    ({}, "set at least one of cores, max_workers or max_cost_per_hour"),
])
def test_bad_budgets(kwargs, says):
    with pytest.raises(PlanError, match=says.replace("(", r"\(").replace(")", r"\)")):
        Budget(**kwargs)


def test_budget_from_a_dict_or_this_machine():
    assert Budget.of({"cores": 4, "memory_per_worker": "2GiB"}) == Budget(
        cores=4, memory_per_worker=2 * GiB)
    with pytest.raises(PlanError, match="Budget has no field 'core'"):
        Budget.of({"core": 4})
    here = Budget.of(None)
    assert here.cores >= 1 and here.total_memory > 0


@pytest.mark.parametrize(("cores", "threads"), [(1, (1,)), (2, (1, 2)), (6, (1, 2, 4, 6)),
                                                 (8, (1, 2, 4, 8))])
def test_default_thread_options(cores, threads):
    assert Budget(cores=cores).thread_options() == threads


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"objective": "speed"}, "objective: got 'speed'"),
    ({"objective": "cost", "epochs": 1, "n_samples": 10}, "needs prices"),
    ({"objective": "cost"}, "need the number of epochs"),
    ({"deadline": 10.0}, "need the number of epochs"),
    ({"strategies": ("zero",)}, "unknown strategies"),
])
def test_questions_the_solver_cannot_answer(kwargs, says):
    with pytest.raises(PlanError, match=says):
        solve(fit_scaling_model(one_machine()), Budget(cores=2), **kwargs)
