"""PyTorch + AdapterHub peer of `admix train` on MR: MiniLM + seq_bn adapter (reduction 16) + head,
batch 32, max length 64, dynamic padding (random batches padded to their longest), AdamW lr 1e-3,
6% warmup + linear decay, dropout on (train mode), seed 42, gradient clipping 1.0, on this machine.

    python benches/pytorch_mr_epoch.py [--threads 2] [--steps 60]

Times `--steps` training steps (after 3 warm-up steps) and projects an epoch of 320 steps; with
--steps 0 it trains 3 full epochs and reports dev/test accuracy too (slow). Needs torch,
transformers==4.57.6, adapters==1.3.0. Reads MR and the model fetched by `admix fetch`; the MR split
is exported by `admix mr --export DIR` (train/dev/test.jsonl).
"""
import argparse, json, os, random, statistics, sys, time

import torch
from transformers import AutoTokenizer, get_linear_schedule_with_warmup
import adapters
from adapters import AutoAdapterModel


def home():
    return os.environ.get("ADMIX_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "admix")


def load(path):
    with open(path) as f:
        rows = [json.loads(l) for l in f]
    return [r["text"] for r in rows], [r["label"] for r in rows]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--data", required=True, help="directory with train/dev/test.jsonl (admix mr --export)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    random.seed(42)
    torch.manual_seed(42)
    model_dir = os.path.join(home(), "models", "all-MiniLM-L6-v2")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoAdapterModel.from_pretrained(model_dir)
    model.add_adapter("clean", config="seq_bn")
    model.add_classification_head("clean", num_labels=2)
    model.train_adapter("clean")
    model.set_active_adapters("clean")
    model.train()
    texts, labels = load(os.path.join(args.data, "train.jsonl"))
    epochs, bs = 3, 32
    steps_per_epoch = (len(texts) + bs - 1) // bs
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    sched = get_linear_schedule_with_warmup(opt, int(0.06 * epochs * steps_per_epoch), epochs * steps_per_epoch)

    def batches():
        order = list(range(len(texts)))
        random.shuffle(order)
        for i in range(0, len(order), bs):
            idx = order[i:i + bs]
            enc = tok([texts[j] for j in idx], padding="longest", truncation=True, max_length=64, return_tensors="pt")
            yield enc, torch.tensor([labels[j] for j in idx])

    def step(enc, y):
        out = model(**enc, labels=y)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        return out.loss.item()

    print(f"PyTorch {torch.__version__}, adapters {adapters.__version__}, {args.threads} threads")
    if args.steps > 0:
        it = batches()
        for _ in range(3):
            step(*next(it))
        times = []
        for _ in range(args.steps):
            enc, y = next(it)
            t = time.perf_counter()
            step(enc, y)
            times.append(time.perf_counter() - t)
        mean = statistics.mean(times)
        print(f"{args.steps} steps: mean {mean * 1e3:.1f} ms/step, median {statistics.median(times) * 1e3:.1f}; "
              f"projected epoch ({steps_per_epoch} steps): {mean * steps_per_epoch:.1f} s")
        print(json.dumps({"bench": "pytorch adapters MR step", "mean_ms": round(mean * 1e3, 2),
                          "projected_epoch_s": round(mean * steps_per_epoch, 1)}))
        return
    for epoch in range(epochs):
        t = time.perf_counter()
        for enc, y in batches():
            step(enc, y)
        print(f"epoch {epoch + 1}: {time.perf_counter() - t:.1f} s")
    model.eval()
    for split in ("dev", "test"):
        xs, ys = load(os.path.join(args.data, f"{split}.jsonl"))
        correct = 0
        with torch.no_grad():
            for i in range(0, len(xs), 64):
                enc = tok(xs[i:i + 64], padding="longest", truncation=True, max_length=64, return_tensors="pt")
                correct += (model(**enc).logits.argmax(-1) == torch.tensor(ys[i:i + 64])).sum().item()
        print(f"{split} accuracy {100 * correct / len(xs):.2f}%")


if __name__ == "__main__":
    main()
