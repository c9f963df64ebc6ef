"""Multi-process data parallel training on CPU with the gloo backend (what torchrun sets up)."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, run_dir: str, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from test_trainer import Tiny, TinyConfig, toy_splits
    from sketchlab.train.trainer import Trainer, init_distributed, prepare_data

    assert init_distributed(torch.device("cpu"))   # what `sketchlab train` does under torchrun
    torch.manual_seed(rank)        # different inits: DDP must broadcast rank 0's weights
    data = prepare_data(Tiny, TinyConfig(), toy_splits())
    model = Tiny(data.config)
    tr = Trainer(model, data, run_dir, device=torch.device("cpu"), progress=False, max_steps=6,
                 log=lambda m: None)
    tr.train()
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, f"{out_dir}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_gloo_two_processes(tmp_path):
    port = _free_port()
    mp.spawn(_worker, args=(2, port, str(tmp_path / "run"), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in a:
        if k == "seen":
            continue          # a per-rank statistic updated outside DDP
        assert torch.allclose(a[k], b[k]), k
    assert (tmp_path / "run" / "model.safetensors").is_file()       # written by rank 0 only
    # each rank saw its own half of the data: 64 sketches / 2 ranks / batch 8 = 4 batches an epoch
    assert float(a["seen"]) == 6 * 8
