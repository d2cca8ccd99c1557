"""PyTorch peer of benches/forward.rs: the same MiniLM forward + seq_bn adapter + head, same shapes.

    python benches/pytorch_forward.py [--threads 2]

Needs torch and safetensors (pip). Reads the model fetched by `admix fetch` ($ADMIX_HOME).
Eager PyTorch, f32, inference mode; 2 warm-up runs, then medians over 10 (batch 32) / 50 (batch 1).
"""
import argparse, json, math, os, statistics, time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def model_dir():
    home = os.environ.get("ADMIX_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "admix")
    return os.path.join(home, "models", "all-MiniLM-L6-v2")


def forward(w, ad, head, ids, heads=12, layers=6, eps=1e-12, dropout=0.0):
    """The model; `dropout` > 0 drops at BERT's and the head's sites (training)."""
    drop = (lambda t: F.dropout(t, dropout, training=True)) if dropout > 0 else (lambda t: t)
    b, s = ids.shape
    h = w["embeddings.word_embeddings.weight"].shape[1]
    x = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][:s]
         + w["embeddings.token_type_embeddings.weight"][0])
    x = drop(F.layer_norm(x, (h,), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps))
    d = h // heads
    for l in range(layers):
        p = f"encoder.layer.{l}."
        lin = lambda t, n: F.linear(t, w[p + n + ".weight"], w[p + n + ".bias"])
        q, k, v = (lin(x, f"attention.self.{n}").view(b, s, heads, d).transpose(1, 2) for n in ("query", "key", "value"))
        att = drop(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)) @ v
        a = drop(lin(att.transpose(1, 2).reshape(b, s, h), "attention.output.dense"))
        a = F.layer_norm(a + x, (h,), w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps)
        f = drop(lin(F.gelu(lin(a, "intermediate.dense")), "output.dense"))
        g, bb = w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]
        r = f + a
        z = F.layer_norm(r, (h,), g, bb, eps)
        dw, db, uw, ub = ad[l]
        x = F.layer_norm(r + F.linear(F.relu(F.linear(z, dw, db)), uw, ub), (h,), g, bb, eps)
    w1, b1, w2, b2 = head
    return F.linear(drop(torch.tanh(F.linear(drop(x[:, 0]), w1, b1))), w2, b2)


def setup(std):
    """Parses --threads, seeds, loads MiniLM; returns (args, weights, adapter, head), the adapter
    and head random N(0, std) (shapes of seq_bn reduction 16 and a 2-label head)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    w = load_file(os.path.join(model_dir(), "model.safetensors"))
    h, r = 384, 24
    t = lambda *s: torch.randn(*s) * std
    ad = [(t(r, h), t(r), t(h, r), t(h)) for _ in range(6)]
    head = (t(h, h), t(h), t(2, h), t(2))
    return args, w, ad, head


def main():
    args, w, ad, head = setup(0.05)
    print(f"PyTorch {torch.__version__}, MiniLM-L6 forward + seq_bn adapter + head, f32, {args.threads} threads")
    for batch, reps in ((32, 10), (1, 50)):
        ids = torch.randint(1000, 29000, (batch, 128))
        with torch.inference_mode():
            for _ in range(2):
                forward(w, ad, head, ids)
            ms = []
            for _ in range(reps):
                t = time.perf_counter()
                forward(w, ad, head, ids)
                ms.append((time.perf_counter() - t) * 1e3)
        ms.sort()
        print(f"forward batch {batch} x 128   median {statistics.median(ms):8.2f} ms   min {ms[0]:8.2f}   max {ms[-1]:8.2f}   ({reps} reps)")
        print(json.dumps({"bench": f"pytorch forward batch {batch} x 128", "median_ms": round(statistics.median(ms), 3), "min_ms": round(ms[0], 3), "reps": reps}))


if __name__ == "__main__":
    main()
