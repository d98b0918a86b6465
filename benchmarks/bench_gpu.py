"""Time per training step on the GPU against the CPU, measured in the same run.

Full-batch Adam steps on the exact objective (forward, backward, update) for the ResNet and the
transformer at the CPU presets' size (N = 1,000, width 64) and at the paper's size (N = 60,000
MNIST-shaped inputs), plus 5 seeds batched on the GPU (deepnet.batched) against one after
another. Synthetic inputs of the real shapes: the step time does not depend on the values.

    python benchmarks/bench_gpu.py [--steps 30]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from deepnet import RunConfig, build_model
from deepnet.data import Dataset
from deepnet.objective import batch_objective


def _data(kind: str, n: int, k: int = 10) -> Dataset:
    rng = np.random.default_rng(0)
    y = np.arange(n) % k
    x = rng.normal(size=(n, 1, 28, 28)).astype(np.float32)
    if kind == "vector":
        x = x.reshape(n, -1)[:, :40]
    return Dataset("synthetic", kind, x, y, None, None, k, [str(i) for i in range(k)])


def step_time(cfg: RunConfig, data: Dataset, device: str, steps: int) -> float:
    """Seconds per full-batch Adam step (median of ``steps`` after warm-up)."""
    torch.manual_seed(0)
    dev = torch.device(device)
    model = build_model(cfg, data).to(dev)
    x = torch.as_tensor(data.x_train, device=dev)
    y = torch.as_tensor(data.y_train, device=dev)
    decayed = [p for _, p in model.decayed_parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)

    def step() -> None:
        loss = batch_objective(model, x, y, cfg.lam, "ce", decayed)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device")
    torch.set_num_threads(1)
    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; CPU: 1 thread")
    cases = [
        ("rn1 L=8, N=1,000 (mnist1d shape)", RunConfig(arch="rn1", depth=8), "vector", 1000),
        ("rn1 L=34, N=1,000", RunConfig(arch="rn1", depth=34), "vector", 1000),
        ("t11 L=8, N=1,000, 16 patches", RunConfig(arch="t11", depth=8), "image", 1000),
        ("rn1 L=8, N=60,000 MNIST (paper)", RunConfig(arch="rn1", depth=8), "image", 60000),
    ]
    print(f"{'case':<36} {'CPU ms/step':>12} {'GPU ms/step':>12} {'speed-up':>9}")
    for name, cfg, kind, n in cases:
        data = _data(kind, n)
        cpu = step_time(cfg, data, "cpu", max(3, args.steps // (10 if n > 10000 else 1)))
        gpu = step_time(cfg, data, "cuda", args.steps)
        print(f"{name:<36} {1e3 * cpu:>12.2f} {1e3 * gpu:>12.2f} {cpu / gpu:>8.1f}×", flush=True)

    from deepnet import train
    from deepnet.batched import train_batched

    data = _data("vector", 1000)
    base = dict(arch="rn1", depth=8, epochs=200, lr=1e-3, device="cuda", eval_every=200)
    configs = [RunConfig(**base, seed=s) for s in range(5)]
    train_batched(configs[:2], data)  # warm-up (kernels, allocator)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for c in configs:
        train(c, data=data, progress=False)
    torch.cuda.synchronize()
    one_by_one = time.perf_counter() - t
    t = time.perf_counter()
    train_batched(configs, data)
    torch.cuda.synchronize()
    batched = time.perf_counter() - t
    print(
        f"5 seeds × 200 Adam steps, rn1 L=8 N=1,000 on the GPU: one after another "
        f"{one_by_one:.2f} s, batched {batched:.2f} s ({one_by_one / batched:.1f}×)"
    )


if __name__ == "__main__":
    main()
