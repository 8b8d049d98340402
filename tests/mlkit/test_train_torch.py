"""TorchTrainer (only where PyTorch is installed): two workers form a gloo process group, DDP keeps their
replicas equal, and prepare_data_loader gives each worker half of the data."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from p2pcompute.mlkit import train  # noqa: E402

pytestmark = [pytest.mark.mlkit, pytest.mark.integration]


def _loop(config):
    import torch.distributed as dist
    from torch.utils.data import DataLoader, TensorDataset

    from p2pcompute.mlkit.train import torch as ttorch

    torch.manual_seed(0)
    X = torch.randn(64, 3)
    y = X @ torch.tensor([1.0, -2.0, 0.5])
    loader = ttorch.prepare_data_loader(DataLoader(TensorDataset(X, y), batch_size=8, shuffle=True))
    model = ttorch.prepare_model(torch.nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    seen = 0
    for _ in range(5):
        for xb, yb in loader:
            opt.zero_grad()
            loss = ((model(xb).squeeze(1) - yb) ** 2).mean()
            loss.backward()
            opt.step()
            seen += len(xb)
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(weights) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, weights)
    train.report({"loss": float(loss), "seen": seen, "world": dist.get_world_size(),
                  "replicas_equal": all(torch.equal(g, gathered[0]) for g in gathered)})


@pytest.mark.timeout(120)
def test_torch_trainer_runs_ddp_across_two_workers(ml_cluster, tmp_path):
    from p2pcompute.mlkit.train.torch import TorchTrainer

    result = TorchTrainer(
        _loop, scaling_config=train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0}),
        run_config=train.RunConfig(storage_path=str(tmp_path), name="torch", verbose=0)).fit()
    m = result.metrics
    assert m["world"] == 2 and m["replicas_equal"]
    assert m["seen"] == 5 * 32  # each worker saw half of the 64 rows per epoch
    assert m["loss"] < 1.0
