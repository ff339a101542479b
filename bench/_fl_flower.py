"""The Flower contender of bench/fl_throughput.py (needs the optional `bench` extra: flwr[simulation]).

Flower's simulation engine runs the server's FedAvg strategy in this process and the clients in Ray actor
processes; each actor builds the shared workload itself (`_fl_systems.workload`, deterministic) and a
NumPyClient trains the same module on the same batches as the other contenders. The strategy times each
round from `configure_fit` to the end of `aggregate_fit` and pauses there for the coordinator (`Gate`).
"""
from __future__ import annotations

import logging
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from _fl_systems import Workload, accuracy, workload
from flwr.client import ClientApp, NumPyClient
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg

_WORKLOADS: dict = {}  # in each actor: (n, rounds) -> the workload


class FlowerClient(NumPyClient):
    def __init__(self, cid: int, w: Workload, n: int, rounds: int):
        if (w, n, rounds) not in _WORKLOADS:
            import lab  # noqa: F401  (one torch thread, as everywhere in the lab)

            _WORKLOADS[(w, n, rounds)] = workload(w, n, rounds)
        self.cid, self.w, (self.data, _, self.order, self.model) = cid, w, _WORKLOADS[(w, n, rounds)]

    def fit(self, parameters, config):
        with torch.no_grad():
            for p, v in zip(self.model.parameters(), parameters):
                p.copy_(torch.from_numpy(np.asarray(v)))
        opt = torch.optim.SGD(self.model.parameters(), lr=self.w.lr)
        x, y, r = self.data.x_train, self.data.y_train, int(config["round"]) - 1
        for t in range(self.w.steps):
            idx = self.order[r, t, self.cid]
            loss = F.cross_entropy(self.model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return [p.detach().numpy().copy() for p in self.model.parameters()], self.w.examples, {}


def client_fn_for(w: Workload, n: int, rounds: int):
    def client_fn(context):
        return FlowerClient(int(context.node_config["partition-id"]), w, n, rounds).to_client()

    return client_fn


def run_flower(w: Workload, n: int, rounds: int, gate) -> float:
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.WARNING)
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join([here, os.path.dirname(here), *sys.path[1:]])  # Ray's actors
    data, _, _, model = workload(w, n, 1)
    final = {}

    class Timed(FedAvg):
        def configure_fit(self, server_round, parameters, client_manager):
            self.t0 = time.perf_counter()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):
            if failures:
                raise RuntimeError(f"Flower round {server_round}: {len(failures)} clients failed: {failures[:1]}")
            out = super().aggregate_fit(server_round, results, failures)
            final["params"] = out[0]
            gate.after_round(time.perf_counter() - self.t0)
            return out

    start = [p.detach().numpy() for p in model.parameters()]

    def server_fn(context):
        strategy = Timed(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n,
                         on_fit_config_fn=lambda r: {"round": r}, initial_parameters=ndarrays_to_parameters(start))
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))

    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False}}
    clients = ClientApp(client_fn=client_fn_for(w, n, rounds))
    run_simulation(server_app=ServerApp(server_fn=server_fn), client_app=clients, num_supernodes=n,
                   backend_config=backend)
    with torch.no_grad():
        for p, v in zip(model.parameters(), parameters_to_ndarrays(final["params"])):
            p.copy_(torch.from_numpy(np.asarray(v)))
    return accuracy(model, data)
