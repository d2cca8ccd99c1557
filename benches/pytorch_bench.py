"""PyTorch peer of `admix bench`'s model suite: the same cases at the same shapes, eager and
torch.compile, so that every admix number has its peer beside it.

    python benches/pytorch_bench.py --device cpu --models minilm --threads 2 --out peer.json
    admix bench --models minilm --peer peer.json        # the table gets the peer's columns
    python benches/pytorch_bench.py --precision bf16 --threads 2 --out peer-bf16.json
    admix bench --models minilm --precision bf16 --peer peer-bf16.json

Cases (names as admix bench prints them): `forward batch B` (encoder + seq_bn adapter + head,
inference), `adapter train step batch W` (frozen encoder, forward, backward, clip_grad_norm_,
AdamW, dropout 0.1), `pgd step batch W` (the loss gradient w.r.t. the word embeddings, then an L2
step). MiniLM with its real weights (fetched by `admix fetch`), bert-base/large with random ones.
On the CPU f32 by default, or `--precision bf16`: f32 weights under `torch.autocast("cpu",
torch.bfloat16)` (the linear layers' GEMMs in bf16, as admix's `--precision bf16`; optimizer state
f32); on CUDA bf16 weights and activations (admix's kernels store bf16 too). Warm-up runs, then the
median and p99 of the timed runs (CUDA events on a GPU).
Needs torch and safetensors; reuses the functional model of pytorch_forward.py.
"""
import argparse, contextlib, json, math, os, sys, time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
from pytorch_forward import forward, model_dir  # noqa: E402

SHAPES = {  # layers, hidden, heads, ffn
    "bert-base": (12, 768, 12, 3072),
    "bert-large": (24, 1024, 16, 4096),
}


def weights(name, device, dtype, minilm_dir):
    """(weights, layers, heads) of a model: MiniLM's file, or random N(0, 0.02) of a shape."""
    if name == "minilm":
        w = load_file(os.path.join(minilm_dir, "model.safetensors"))
        w = {k.removeprefix("bert."): v for k, v in w.items()}
        layers, heads = 6, 12
    else:
        layers, h, heads, ffn = SHAPES[name]
        g = torch.Generator().manual_seed(1)
        t = lambda *s: torch.randn(*s, generator=g) * 0.02
        w = {"embeddings.word_embeddings.weight": t(30522, h), "embeddings.position_embeddings.weight": t(512, h),
             "embeddings.token_type_embeddings.weight": t(2, h),
             "embeddings.LayerNorm.weight": 1 + t(h), "embeddings.LayerNorm.bias": t(h)}
        for l in range(layers):
            p = f"encoder.layer.{l}."
            for n, (o, i) in {"attention.self.query": (h, h), "attention.self.key": (h, h), "attention.self.value": (h, h),
                              "attention.output.dense": (h, h), "intermediate.dense": (ffn, h), "output.dense": (h, ffn)}.items():
                w[p + n + ".weight"], w[p + n + ".bias"] = t(o, i), t(o)
            for n in ("attention.output.LayerNorm", "output.LayerNorm"):
                w[p + n + ".weight"], w[p + n + ".bias"] = 1 + t(h), t(h)
    return {k: v.to(device, dtype) for k, v in w.items()}, layers, heads


def member(h, layers, device, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    t = lambda *s: (torch.randn(*s, generator=g) * 0.02).to(device, dtype)
    r = h // 16
    return [(t(r, h), t(r), t(h, r), t(h)) for _ in range(layers)], (t(h, h), t(h), t(2, h), t(2))


def timed(fn, warmup, reps, cuda):
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(reps):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); fn(); b.record(); b.synchronize()
            ms.append(a.elapsed_time(b))
        else:
            t = time.perf_counter(); fn(); ms.append((time.perf_counter() - t) * 1e3)
    ms.sort()
    rank = lambda q: ms[min(len(ms), max(1, math.ceil(len(ms) * q))) - 1]
    return rank(0.5), rank(0.99)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--models", default="minilm", help="minilm,bert-base,bert-large")
    ap.add_argument("--model", default=None, help="MiniLM's directory (default: the fetched one)")
    ap.add_argument("--batches", default=None, help="default: 1,8,32 (cpu) / 1,8,32,128 (cuda)")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--work-batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=None, help="default: 10 (cpu) / 50 (cuda)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--precision", default=None, choices=["f32", "bf16"],
                    help="cpu: f32 (default) or bf16 autocast; cuda: bf16 only")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    cuda = a.device == "cuda"
    if a.threads:
        torch.set_num_threads(a.threads)
    batches = [int(b) for b in (a.batches or ("1,8,32,128" if cuda else "1,8,32")).split(",")]
    reps = a.reps or (50 if cuda else 10)
    precision = a.precision or ("bf16" if cuda else "f32")
    if cuda and precision != "bf16":
        sys.exit("error: on cuda the peer runs bf16 only (as admix's kernels)")
    dtype = torch.bfloat16 if cuda else torch.float32
    # the CPU's bf16: autocast over f32 weights (the GEMMs in bf16, master weights f32)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" and not cuda \
        else contextlib.nullcontext
    modes = ["eager"] + ([] if a.no_compile else ["compile"])
    rows = []

    def record(model, case, mode, fn):
        def run():
            with autocast():
                fn()
        med, p99 = timed(run, a.warmup, reps, cuda)
        row = next((r for r in rows if r["model"] == model and r["case"] == case), None)
        if row is None:
            row = {"model": model, "case": case}
            rows.append(row)
        row[f"{mode}_ms"], row[f"{mode}_p99_ms"] = med, p99
        print(f"{model:10} {case:32} {mode:8} median {med:9.3f} ms  p99 {p99:9.3f} ms", file=sys.stderr)

    for name in a.models.split(","):
        w, layers, heads = weights(name, a.device, dtype, a.model or model_dir())
        h = w["embeddings.word_embeddings.weight"].shape[1]
        ad, head = member(h, layers, a.device, dtype, 1)
        fwd = lambda ids, ad=ad, head=head, **kw: forward(w, ad, head, ids, heads=heads, layers=layers, **kw)
        for mode in modes:
            f = fwd if mode == "eager" else torch.compile(fwd, dynamic=False)
            for b in batches:
                ids = torch.randint(1000, 29000, (b, a.seq), device=a.device)
                with torch.inference_mode():
                    record(name, f"forward batch {b}", mode, lambda: f(ids))
            wb = a.work_batch
            ids = torch.randint(1000, 29000, (wb, a.seq), device=a.device)
            labels = torch.arange(wb, device=a.device) % 2
            params = [p.requires_grad_() for layer in ad for p in layer] + [p.requires_grad_() for p in head]
            opt = torch.optim.AdamW(params, lr=1e-3)

            def step():
                opt.zero_grad()
                loss = F.cross_entropy(f(ids, dropout=0.1).float(), labels)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
            record(name, f"adapter train step batch {wb}", mode, step)
            for p in params:
                p.requires_grad_(False)
            # PGD: the gradient w.r.t. a perturbation of the word rows, then an L2 step (ε = 1, α = 0.25)
            delta = torch.zeros(wb, a.seq, h, device=a.device, dtype=dtype)

            def pgd():
                nonlocal delta
                d = delta.clone().requires_grad_()
                loss = F.cross_entropy(forward_delta(w, ad, head, ids, d, heads, layers).float(), labels)
                (g,) = torch.autograd.grad(loss, d)
                g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
                nd = d.detach() + 0.25 * g
                delta = nd / nd.flatten(1).norm(dim=1).clamp_min(1.0)[:, None, None]
            if mode == "eager":
                record(name, f"pgd step batch {wb}", mode, pgd)
        save(a, rows, reps, cuda, dtype, precision)  # after each model: a run cut short keeps what it measured


def save(a, rows, reps, cuda, dtype, precision):
    if not a.out:
        return
    meta = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "threads": torch.get_num_threads(), "dtype": str(dtype).removeprefix("torch."),
            "precision": precision,
            "seq": a.seq, "reps": reps, "warmup": a.warmup}
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"peer": "pytorch", **meta, "rows": rows}, f, indent=1)
    os.replace(tmp, a.out)


def forward_delta(w, ad, head, ids, delta, heads, layers):
    """forward() with the word-embedding rows perturbed by delta [B, S, H]."""
    table = w["embeddings.word_embeddings.weight"]
    b, s = ids.shape
    rows = table[ids] + delta
    # feed the perturbed rows through a one-off table (ids → their own rows)
    w2 = dict(w)
    w2["embeddings.word_embeddings.weight"] = rows.reshape(b * s, -1)
    return forward(w2, ad, head, torch.arange(b * s, device=ids.device).reshape(b, s), heads=heads, layers=layers)


if __name__ == "__main__":
    main()
