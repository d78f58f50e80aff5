"""Where ranks compute (scalekit.training.devices): the process group's backends per
device type, one GPU per rank, precisions. Tables of cases; torch.cuda is faked where
a worker's GPUs are asked for (this machine has none)."""

from __future__ import annotations

import dataclasses

import pytest

from scalekit.errors import ConfigError, UsageError
from scalekit.training import devices as d
from scalekit.training.devices import GpuInfo, WorkerDevices

# -- the process group ----------------------------------------------------------------


@pytest.mark.parametrize(("requested", "device", "expected"), [
    ("auto", "cpu", "gloo"),  # a CPU net never touches NCCL, GPU or not
    ("gloo", "cpu", "gloo"),
    ("auto", "cuda", "cpu:gloo,cuda:nccl"),  # CPU collectives over gloo, CUDA over NCCL
    ("nccl", "cuda", "cpu:gloo,cuda:nccl"),
    ("gloo", "cuda", "gloo"),  # the documented fallback: everything over gloo
])
def test_backend_per_device_type(requested, device, expected):
    assert d.process_group_backend(requested, device) == expected


def test_nccl_for_a_cpu_net_is_refused():
    with pytest.raises(ConfigError) as info:
        d.process_group_backend("nccl", "cpu")
    assert "scalekit.training.backend: got 'nccl', expected auto or gloo" in str(info.value)
    assert "device='cuda'" in str(info.value)


def test_other_devices_are_refused_with_the_choice():
    with pytest.raises(UsageError, match="'cpu' and 'cuda'"):
        d.process_group_backend("auto", "mps")


@pytest.mark.parametrize(("device", "expected"), [
    (None, "cpu"), ("cpu", "cpu"), ("cuda", "cuda"), ("cuda:1", "cuda"), ("mps", "mps"),
])
def test_device_type(device, expected):
    assert d.device_type(device) == expected


def test_device_type_of_a_torch_device():
    import torch

    assert d.device_type(torch.device("cuda", 2)) == "cuda"
    assert d.device_type(torch.device("cpu")) == "cpu"


# -- one GPU per rank ------------------------------------------------------------------

A, B, C, D = (GpuInfo(uuid=f"GPU-{x}", name="NVIDIA H200", total_memory=141 << 30)
              for x in "abcd")


def worker(name, host="h1", gpus=(), nccl=True):
    return WorkerDevices(worker=name, host=host, gpus=tuple(gpus), nccl=nccl)


@pytest.mark.parametrize(("inventory", "index", "left_out"), [
    # pinned workers (scalekit's GPU workers: own GPU first, peers after it)
    ([worker("w0", gpus=[A, B]), worker("w1", gpus=[B, A])], {"w0": 0, "w1": 0}, []),
    # pinned, one GPU visible each
    ([worker("w0", gpus=[A]), worker("w1", gpus=[B])], {"w0": 0, "w1": 0}, []),
    # unpinned workers on a 4-GPU host: distinct GPUs, like torchrun's local rank
    ([worker(f"w{i}", gpus=[A, B, C, D]) for i in range(3)], {"w0": 0, "w1": 1, "w2": 2}, []),
    # two hosts, each with its GPU 0: no conflict
    ([worker("w0", "h1", [A]), worker("w1", "h2", [A])], {"w0": 0, "w1": 0}, []),
    # two workers on a one-GPU host: the second would share it
    ([worker("w0", gpus=[A]), worker("w1", gpus=[A])], {"w0": 0}, ["w1"]),
    # a CPU-only worker among GPU workers
    ([worker("w0", gpus=[A]), worker("w1", gpus=[])], {"w0": 0}, ["w1"]),
    ([worker("w0"), worker("w1")], {}, ["w0", "w1"]),
])
def test_assign_gpus(inventory, index, left_out):
    got_index, got_left = d.assign_gpus(inventory)
    assert got_index == index
    assert sorted(got_left) == left_out


def test_a_shared_gpu_is_named_with_its_owner():
    _, left_out = d.assign_gpus([worker("tcp://a:1", gpus=[A]), worker("tcp://a:2", gpus=[A])])
    assert left_out["tcp://a:2"] == (
        "worker tcp://a:2 would share NVIDIA H200 (GPU-a) with worker tcp://a:1: "
        "NCCL needs one GPU per rank")


def test_the_placement_error_says_what_and_how_to_fix_it():
    _, left_out = d.assign_gpus([worker("w0", gpus=[A]), worker("w1", gpus=[A])])
    message = str(d.placement_error(left_out, 2))
    assert "worker w1 would share NVIDIA H200 (GPU-a) with worker w0" in message
    assert "sk.cluster(gpus='auto')" in message and "--gpus auto" in message
    assert "max_workers=1" in message
    assert "Nothing was started; the cluster is unchanged." in message
    _, left_out = d.assign_gpus([worker("w0"), worker("w1")])
    message = str(d.placement_error(left_out, 2))
    assert "worker w0 has no GPU" in message and "device='cpu'" in message
    assert "max_workers" not in message  # no worker could take a rank


def test_nccl_missing_names_the_workers_and_the_fallback():
    message = str(d.nccl_error(["w1", "w0"]))
    assert "w0, w1" in message and "scalekit.training.backend: gloo" in message


class FakeProps:
    def __init__(self, name, uuid, total_memory):
        self.name, self.uuid, self.total_memory = name, uuid, total_memory


class FakeCuda:
    def __init__(self, props):
        self.props = props

    def is_available(self):
        return bool(self.props)

    def device_count(self):
        return len(self.props)

    def get_device_properties(self, i):
        return self.props[i]


class FakeDist:
    def __init__(self, nccl):
        self.nccl = nccl

    def is_nccl_available(self):
        return self.nccl


def test_worker_devices_lists_the_gpus_in_the_workers_order():
    cuda = FakeCuda([FakeProps("NVIDIA H200", "GPU-b", 1 << 30),
                     FakeProps("NVIDIA H200", "GPU-a", 2 << 30)])
    found = d.worker_devices(cuda=cuda, dist=FakeDist(True))
    assert found.gpus == (GpuInfo("GPU-b", "NVIDIA H200", 1 << 30),
                          GpuInfo("GPU-a", "NVIDIA H200", 2 << 30))
    assert found.nccl is True
    assert "/" in found.host  # hostname/boot id, as the shared-memory reducer compares


def test_worker_devices_without_a_gpu_reports_none_and_no_nccl():
    found = d.worker_devices(cuda=FakeCuda([]), dist=FakeDist(True))
    assert found.gpus == () and found.nccl is False
    real = d.worker_devices()  # this machine: torch without a GPU
    assert real.gpus == () and dataclasses.asdict(real)["nccl"] is False


# -- precision -------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "expected"), [
    (None, "32"), ("32", "32"), (32, "32"), ("fp32", "32"), ("bf16", "bf16"),
    ("bf16-mixed", "bf16"), ("BF16", "bf16"), ("fp16", "fp16"), ("16", "fp16"),
    (16, "fp16"), ("16-mixed", "fp16"),
])
def test_precision_spellings(given, expected):
    assert d.normalize_precision(given) == expected


@pytest.mark.parametrize("given", ["bf32", "int8", "64", 8])
def test_bad_precisions_name_the_choices(given):
    with pytest.raises(ConfigError, match="one of '32', 'bf16', 'fp16'"):
        d.normalize_precision(given)


@pytest.mark.parametrize(("precision", "device", "ok"), [
    ("32", "cpu", True), ("bf16", "cpu", True), ("fp16", "cpu", False),
    ("32", "cuda", True), ("bf16", "cuda", True), ("fp16", "cuda", True),
])
def test_precision_per_device(precision, device, ok):
    if ok:
        d.check_precision(precision, device)
        return
    with pytest.raises(ConfigError) as info:
        d.check_precision(precision, device)
    assert "precision='bf16'" in str(info.value)  # the fix


def test_autocast_dtypes():
    import torch

    assert d.autocast_dtype("32") is None
    assert d.autocast_dtype("bf16") is torch.bfloat16
    assert d.autocast_dtype("fp16") is torch.float16


def test_training_config_carries_precision_and_device_data():
    from scalekit.config import TrainConfig

    assert TrainConfig().precision == "32" and TrainConfig().data_on_device == "auto"
    assert TrainConfig(precision="bf16-mixed").precision == "bf16"
    assert TrainConfig(data_on_device="false").data_on_device is False
    with pytest.raises(ConfigError, match=r"^scalekit\.training\.precision: got 'half'"):
        TrainConfig(precision="half")
    with pytest.raises(ConfigError, match=r"scalekit\.training\.data-on-device"):
        TrainConfig(data_on_device="sometimes")
