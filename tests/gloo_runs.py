"""Run several configs on one gloo process group (one process per rank) and read back what each rank ended
with: shared by the tests that compare distributed runs with simulated ones."""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lab.experiment import ExperimentConfig, run
from lab.launch import free_port


def _worker(rank, world_size, port, out_dir, configs):
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size))
    dist.init_process_group("gloo", rank=rank, world_size=world_size, init_method=f"tcp://127.0.0.1:{port}")
    try:
        out = []
        for cfg in configs:
            r = run(ExperimentConfig.from_dict(cfg), save=False, progress=False)
            out.append({"params": r.worker_params, "model": r.model, "ledger": r.ledger, "status": r.status,
                        "error": r.error})
        torch.save(out, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_on_gloo(configs: list[dict], world_size: int, out_dir) -> list[list[dict]]:
    """[rank][config] -> {params, model, ledger, status, error} of `configs` (dicts, backend='distributed')."""
    mp.spawn(_worker, args=(world_size, free_port(), str(out_dir), configs), nprocs=world_size, join=True)
    return [torch.load(os.path.join(str(out_dir), f"{rank}.pt"), weights_only=False) for rank in range(world_size)]
