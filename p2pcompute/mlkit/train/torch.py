"""`TorchTrainer`: a DataParallelTrainer whose workers form a `torch.distributed` process group.

Theory of operation. Each worker runs the user's loop inside a wrapper that, before the loop starts, sets up
the process group the way Ray Train does: rank 0 picks a free TCP port on its machine and the group's own
`allgather_object` tells every rank the address; every rank then calls `init_process_group` with the gloo
backend on CPU or nccl on GPUs, and the usual environment variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
`MASTER_ADDR`, `MASTER_PORT`) are set for code that reads them. After the loop the group is destroyed. A
restart after a failure builds a new group on new workers, so no torch state outlives an attempt.

`prepare_model` moves a model to the worker's device and wraps it in `DistributedDataParallel` when there
is more than one worker; `prepare_data_loader` gives each worker its part of a `DataLoader` through a
`DistributedSampler` and moves batches to the device. torch is an optional dependency: importing this module
without it raises an ImportError naming the extra to install.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import socket

try:
    import torch
    import torch.distributed as dist
except ImportError as exc:  # pragma: no cover - exercised only where torch is absent
    raise ImportError("p2pcompute.mlkit.train.torch needs PyTorch: pip install 'p2pcompute[torch]' "
                      "(or pip install torch)") from exc

import p2pcompute as p2p
from p2pcompute.mlkit.train import session
from p2pcompute.mlkit.train.trainer import DataParallelTrainer
from p2pcompute.mlkit.train.worker import call_train_loop


@dataclasses.dataclass
class TorchConfig:
    """`backend`: "gloo", "nccl", or None for nccl when the workers use GPUs and gloo otherwise.
    `timeout_s`: how long a torch collective may wait for the others."""

    backend: str | None = None
    timeout_s: float = 1800.0


def _this_host() -> str:
    """An address of this worker's machine that the other workers can reach: its peer's TCP host, or
    loopback when the peer listens only on a Unix socket (an embedded, single-machine peer)."""
    node = p2p.get_runtime_context().get_node_id()
    for info in p2p.nodes():
        address = str(info.get("Address") or "")
        if info.get("NodeID") == node and address.startswith("tcp://"):
            host = address[len("tcp://"):].split()[0].rsplit(":", 1)[0]
            if host and host not in ("*", "0.0.0.0"):
                return host.strip("[]")
    return "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def get_device() -> "torch.device":
    """This worker's device: its local GPU when the trainer uses GPUs, else the CPU."""
    if torch.cuda.is_available() and os.environ.get("P2P_TRAIN_USE_GPU") == "1":
        return torch.device("cuda", session.get_context().get_local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def _setup_process_group(config: TorchConfig, use_gpu: bool) -> None:
    ctx = session.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    address = (_this_host(), _free_port()) if rank == 0 else None
    host, port = session.allgather_object(address)[0]
    backend = config.backend or ("nccl" if use_gpu and torch.cuda.is_available() else "gloo")
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(ctx.get_local_rank()),
                       "LOCAL_WORLD_SIZE": str(ctx.get_local_world_size()), "NODE_RANK": str(ctx.get_node_rank()),
                       "MASTER_ADDR": host, "MASTER_PORT": str(port),
                       "P2P_TRAIN_USE_GPU": "1" if use_gpu else "0"})
    if use_gpu and torch.cuda.is_available():
        torch.cuda.set_device(get_device())
    dist.init_process_group(backend=backend, init_method=f"tcp://{host}:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=config.timeout_s))


def _wrap(train_loop, config: TorchConfig, use_gpu: bool):
    def torch_train_loop(loop_config):
        _setup_process_group(config, use_gpu)
        try:
            return call_train_loop(train_loop, loop_config)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()

    return torch_train_loop


class TorchTrainer(DataParallelTrainer):
    """DataParallelTrainer with a torch.distributed process group across its workers (Ray Train's name)."""

    def __init__(self, train_loop_per_worker, *, torch_config: TorchConfig | None = None, **kwargs) -> None:
        super().__init__(train_loop_per_worker, **kwargs)
        self.torch_config = torch_config or TorchConfig()
        self._user_loop = train_loop_per_worker
        self.train_loop_per_worker = _wrap(train_loop_per_worker, self.torch_config, self.scaling_config.use_gpu)


def prepare_model(model: "torch.nn.Module") -> "torch.nn.Module":
    """`model` on this worker's device, wrapped in DistributedDataParallel when there are several workers."""
    device = get_device()
    model = model.to(device)
    if session.get_context().get_world_size() > 1:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


class _DeviceLoader:
    """Iterates a DataLoader and moves each batch to the device (tensors, or tuples/lists/dicts of them)."""

    def __init__(self, loader, device):
        self.loader, self.device = loader, device

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield _to_device(batch, self.device)

    def __getattr__(self, name):
        return getattr(self.loader, name)


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def prepare_data_loader(loader: "torch.utils.data.DataLoader", move_to_device: bool = True):
    """`loader` restricted to this worker's share of the dataset (a DistributedSampler), batches on the device."""
    from torch.utils.data import DataLoader, RandomSampler
    from torch.utils.data.distributed import DistributedSampler

    ctx = session.get_context()
    if ctx.get_world_size() > 1 and not isinstance(loader.sampler, DistributedSampler):
        sampler = DistributedSampler(loader.dataset, num_replicas=ctx.get_world_size(), rank=ctx.get_world_rank(),
                                     shuffle=isinstance(loader.sampler, RandomSampler))
        loader = DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                            num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                            pin_memory=loader.pin_memory, drop_last=loader.drop_last)
    return _DeviceLoader(loader, get_device()) if move_to_device else loader


__all__ = ["TorchConfig", "TorchTrainer", "get_device", "prepare_data_loader", "prepare_model"]
