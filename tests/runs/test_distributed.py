"""SOME training under DistributedDataParallel (two gloo processes on CPU) matches one process on the whole batch."""
import os
import socket

import numpy as np
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

SIGMA = 1e-7  # the ranks draw different noise; a tiny sigma makes the comparison exact up to float error


def _data():
    from art_some.data import digits_arrays

    x, y = digits_arrays("train")
    return TensorDataset(torch.from_numpy(x[:16]), torch.from_numpy(y[:16]).long())


def _train(model, loader):
    from art_some import MultiHeadSmoothedClassifier, SOMETrainer

    clf = MultiHeadSmoothedClassifier(model, nn.CrossEntropyLoss(), (1, 8, 8), 10, device_type="cpu", scale=SIGMA,
                                      clip_values=(0.0, 1.0), optimizer=torch.optim.SGD(model.parameters(), lr=0.5))
    return SOMETrainer(clf, lambda_last=1.2, total_epochs=3).fit(loader, nb_epochs=2)


def _fresh_net():
    from art_some.models.multihead import digits_cnn_multihead

    torch.manual_seed(0)
    return digits_cnn_multihead(num_heads=3)


def _worker(rank, world, port, out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data.distributed import DistributedSampler

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        net = _fresh_net()
        data = _data()
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)
        _train(DistributedDataParallel(net), DataLoader(data, batch_size=8, sampler=sampler))
        torch.save(net.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_training_matches_a_single_process_on_the_full_batch(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    net = _fresh_net()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    _train(net, DataLoader(_data(), batch_size=16, shuffle=False))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key, value in net.state_dict().items():
        torch.testing.assert_close(ranks[0][key], ranks[1][key])  # DDP kept the replicas identical
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-4, atol=1e-5)  # and equal to the full batch
    moved = max(float((net.state_dict()[k] - start[k]).abs().max()) for k in start)
    assert moved > 1e-3  # training did move the weights, so the comparison means something
    assert np.isfinite(moved)
