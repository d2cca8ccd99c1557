"""PyTorch peer of benches/train_step.rs: one seq_bn adapter-training step (frozen MiniLM, forward,
backward, gradient clipping, AdamW) at batch 32 x 128, all tokens valid, without and with dropout
0.1; same shapes, same threads.

    python benches/pytorch_train_step.py [--threads 2]

Needs torch and safetensors (pip); reuses the functional model of pytorch_forward.py. Eager
PyTorch, f32; 2 warm-up steps, median over 10.
"""
import json, os, statistics, sys, time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from pytorch_forward import forward, setup  # noqa: E402


def main():
    args, w, ad, head = setup(0.02)
    params = [p.requires_grad_() for layer in ad for p in layer] + [p.requires_grad_() for p in head]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(1000, 29000, (32, 128))
    labels = torch.arange(32) % 2

    def step(p):
        opt.zero_grad()
        loss = F.cross_entropy(forward(w, ad, head, ids, dropout=p), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    print(f"PyTorch {torch.__version__}, MiniLM-L6 seq_bn adapter training step, f32, {args.threads} threads")
    for p in (0.0, 0.1):
        for _ in range(2):
            step(p)
        ms = []
        for _ in range(10):
            t = time.perf_counter()
            step(p)
            ms.append((time.perf_counter() - t) * 1e3)
        ms.sort()
        name = f"adapter step 32 x 128, dropout {p}"
        print(f"{name}   median {statistics.median(ms):8.2f} ms   min {ms[0]:8.2f}   max {ms[-1]:8.2f}   (10 reps)")
        print(json.dumps({"bench": f"pytorch {name}", "median_ms": round(statistics.median(ms), 3), "min_ms": round(ms[0], 3), "reps": 10}))


if __name__ == "__main__":
    main()
