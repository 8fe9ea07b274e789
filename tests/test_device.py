"""Where the replicated strategy samples and does its index bookkeeping: on the training GPU when the
graph fits there, else on the CPU. CI has no GPU, so the CPU tests check what makes the GPU path
correct by construction: every tensor distgnn's step path creates names its device, so nothing
lands on the CPU by default when the graph and the model are on a GPU. The last test runs on a GPU
only."""

import math
import sys
import types

import pytest
import torch
from torch.overrides import TorchFunctionMode

from distgnn.core.errors import ConfigError
from distgnn.nn.sampler import sampling_device
from distgnn.training.loop import train_steps
from distgnn.training.replicated import Replicated

from test_tasks import RATING, rating_graph  # noqa: F401  (fixture)
from test_train import tiny_job

FACTORIES = {
    torch.arange,
    torch.empty,
    torch.zeros,
    torch.ones,
    torch.full,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.randperm,
    torch.tensor,
    torch.eye,
    torch.linspace,
}


class UndevicedFactories(TorchFunctionMode):
    """Records the tensor factory calls made by distgnn's own code without ``device=``. The edge
    order of an epoch (:mod:`distgnn.nn.loaders`) is drawn on the host by design: PyG's DataLoader
    hands out its indices as Python ints."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and "device" not in kwargs:
            caller = sys._getframe(1)
            module = caller.f_globals.get("__name__", "")
            if module.startswith("distgnn.") and module != "distgnn.nn.loaders":
                self.calls.append(f"{module}:{caller.f_lineno} torch.{func.__name__}")
        return func(*args, **kwargs)


def test_the_gpu_samples_when_the_graph_fits_and_nothing_else_asks_for_the_cpu():
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    fits = dict(graph_bytes=100, free_bytes=400, num_workers=0)
    assert sampling_device("auto", gpu, **fits) == gpu
    assert sampling_device("auto", gpu, **{**fits, "free_bytes": 399}) == cpu  # over a quarter of it
    assert sampling_device("auto", gpu, **{**fits, "num_workers": 1}) == cpu  # loader processes: CPU
    assert sampling_device("cpu", gpu, **fits) == cpu
    assert sampling_device("auto", cpu, **fits) == cpu
    with pytest.raises(ConfigError, match="sampler.device"):
        sampling_device("gpu", gpu, **fits)


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # LightGCN, sampled softmax with log-Q and item bias
        {"optim.loss": "bpr", "optim.hard_negative_pool": 3},
        {"optim.loss": "bce", "optim.num_negatives": 4},
        {"optim.contrastive_weight": 0.2},
    ],
    ids=["softmax", "bpr-hard-negatives", "bce", "contrastive"],
)
def test_every_tensor_of_a_training_step_is_made_on_a_named_device(tiny_graph, overrides):
    assert_step_names_its_devices(tiny_job(tiny_graph, **{"optim.epochs": 1, **overrides}))


def test_every_tensor_of_a_rating_step_is_made_on_a_named_device(rating_graph):  # noqa: F811
    assert_step_names_its_devices(tiny_job(rating_graph, **RATING))


def assert_step_names_its_devices(job):
    strategy = Replicated(job)
    loader, _ = strategy.make_loader(0)
    sampler = loader.link_sampler
    assert sampler.device == sampler.indptr.device == sampler.generator.device == torch.device("cpu")
    with UndevicedFactories() as mode:
        loss_sum, _ = train_steps(strategy, loader, 2, job.optim, 0)
    assert not mode.calls, mode.calls
    assert math.isfinite(float(loss_sum))


def test_the_check_sees_a_tensor_made_without_a_device(tiny_graph, monkeypatch):
    """The check above is not vacuous: one factory call without ``device=`` in the sampler is found."""
    import distgnn.nn.sampler as sampler_module

    real = sampler_module.sample_negative_items

    def careless(indptr, indices, users, num_per_user, **kwargs):
        return real(indptr, indices, users, num_per_user, **kwargs) + torch.zeros(1, dtype=torch.long)

    monkeypatch.setattr(sampler_module, "sample_negative_items", _in_module(careless, sampler_module))
    job = tiny_job(tiny_graph, **{"optim.epochs": 1})
    strategy = Replicated(job)
    loader, _ = strategy.make_loader(0)
    with UndevicedFactories() as mode:
        train_steps(strategy, loader, 1, job.optim, 0)
    assert mode.calls and all(call.startswith("distgnn.nn.sampler:") for call in mode.calls)


def _in_module(fn, module):
    """``fn`` rebuilt with ``module``'s globals, so that the frames it runs in carry that module's name."""
    return types.FunctionType(fn.__code__, dict(module.__dict__), fn.__name__, fn.__defaults__, fn.__closure__)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("where", ["auto", "cpu"])
def test_a_gpu_run_samples_where_asked(tiny_graph, where):
    job = tiny_job(tiny_graph, **{"optim.epochs": 1, "sampler.device": where})
    strategy = Replicated(job, device=torch.device("cuda"))
    loader, _ = strategy.make_loader(0)
    sampled_on = "cuda" if where == "auto" else "cpu"
    assert loader.link_sampler.device.type == sampled_on
    batch = next(iter(loader))
    assert batch.n_id.device.type == batch.edge_index.device.type == sampled_on
    assert batch.n_id.is_pinned() == (sampled_on == "cpu")  # for the non-blocking copy
    loss_sum, _ = train_steps(strategy, loader, 3, job.optim, 0)
    assert math.isfinite(float(loss_sum))


def test_cpu_collectives_take_a_gloo_group_when_the_default_one_is_nccl(monkeypatch):
    """Under NCCL (Ray Train's backend with GPUs) the loop's CPU scalars (step counts, epoch times,
    loss sums) and CPU gathers cannot use the default group: they take a gloo group made once."""
    import torch.distributed as tdist

    from distgnn.core import dist

    tdist.init_process_group("gloo", store=tdist.HashStore(), rank=0, world_size=1)
    try:
        groups = []
        real_all_reduce, real_all_gather = tdist.all_reduce, tdist.all_gather
        monkeypatch.setattr(
            tdist,
            "all_reduce",
            lambda *a, group=None, **k: groups.append(group) or real_all_reduce(*a, group=group, **k),
        )
        monkeypatch.setattr(
            tdist,
            "all_gather",
            lambda *a, group=None, **k: groups.append(group) or real_all_gather(*a, group=group, **k),
        )
        assert dist.all_reduce_min(3) == 3 and groups == [None]  # gloo is the default: no second group

        monkeypatch.setattr(dist, "_gloo_group", None)
        monkeypatch.setattr(tdist, "get_backend", lambda group=None: "nccl")
        groups.clear()
        assert dist.all_reduce_sum({"loss": 1.5, "steps": 2}) == {"loss": 1.5, "steps": 2.0}
        assert dist.all_reduce_max(0.25) == 0.25
        assert [t.tolist() for t in dist.all_gather_uneven(torch.arange(3))] == [[0, 1, 2]]
        gloo = dist.cpu_group()
        assert gloo is not None and len(groups) == 4 and all(g is gloo for g in groups)
    finally:
        tdist.destroy_process_group()
