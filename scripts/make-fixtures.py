"""Regenerates tests/fixtures/minilm-oracle: what the PyTorch reference stack computes for
all-MiniLM-L6-v2 on eight sentences, trimmed to the tensors admix's tests read.

    python scripts/make-fixtures.py [--model DIR] [--out tests/fixtures/minilm-oracle] [--compare DIR]

Needs torch (2.15 was used), transformers==4.57.6, adapters==1.3.0, safetensors, and the model that
`admix fetch` puts in $ADMIX_HOME/models/all-MiniLM-L6-v2. Everything runs in eval mode (no
dropout) with eager attention, once in float32 and once in float64. `--compare DIR` checks the
freshly computed tensors against an earlier set (the full, untrimmed files of the same layout)
and prints the largest difference of each before writing; tests/fixtures/minilm-oracle/README.md
says what each tensor is.

Random parts, so that a rerun gives the same files: adapter `clean` and `adv` are added to the
model with AdapterHub's seq_bn config and a 2-layer classification head, then every one of their
tensors is redrawn from N(0, 0.05) by `torch.Generator().manual_seed(seed)` (clean 1234, adv 4321),
tensor by tensor in sorted name order; `mix` = 0.3 * clean + 0.7 * adv, every adapter and head
tensor. `variant` (seed 99) exercises AdapterHub settings beyond the defaults: seq_bn with
reduction 32, scaling 2.0 and leave_out [1, 4], and a 3-layer ReLU head over three labels; it is
saved as AdapterHub saves a checkpoint (`save_adapter(dir, "variant", with_head=True,
use_safetensors=True)`) into variant/, and its logits go into the oracle.
"""
import argparse
import hashlib
import json
import os
import sys

import torch
import transformers
import adapters
import safetensors
import tokenizers
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, BertModel
from adapters import AutoAdapterModel

SENTENCES = [
    "The movie was absolutely wonderful, I loved every minute of it.",
    "This is the worst product I have ever bought; it broke after two days.",
    "na\u00efve caf\u00e9 \u2014 it's GREAT!!!",
    "In the early decades of the twentieth century, the small coastal town underwent a remarkable "
    "transformation: fishermen who had for generations relied on wooden boats and hand-woven nets "
    "began to adopt motorized trawlers, refrigeration, and radio communication, which in turn "
    "attracted merchants, engineers, teachers, and eventually tourists from distant cities. The old "
    "harbor was dredged and widened, a railway spur connected the cannery to the national network, "
    "and a modest hotel with forty rooms opened near the lighthouse. Yet many residents remained "
    "ambivalent about these changes, arguing that prosperity had come at the cost of community, "
    "tradition, and the quiet rhythm of tides that had once governed every aspect of daily life, "
    "from weddings to funerals, and that their grandchildren would never know the sea as they had "
    "known it.",
    "Meh.",
    "Call me at 555-0123 or email foo.bar@example.com \u2014 price: $19.99 (20% off), Tokyo \u6771\u4eac \U0001f60a",
    "Unbelievably, the acting was subpar... yet the cinematography? Breathtaking.",
    "I don't think I'd recommend it to anyone who isn't already a fan of the genre.",
]
LABELS = [0, 1, 0, 1, 0, 1, 0, 1]
MAX_LEN = 128
SEEDS = {"clean": 1234, "adv": 4321}
MIX_LAMBDA = 0.3
VARIANT = dict(seed=99, reduction_factor=32, scaling=2.0, leave_out=[1, 4], head_layers=3,
               head_activation="relu", labels=["negative", "neutral", "positive"])
ADAMW = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def valid_rows(x, lens):
    """[B, S, ...] → the rows of valid tokens, sentence after sentence: [sum(lens), ...]."""
    return torch.cat([x[b, :n] for b, n in enumerate(lens)])


def adapter_model(model_dir, dtype):
    """MiniLM with the adapters clean, adv and mix and their heads, in eval mode."""
    model = AutoAdapterModel.from_pretrained(model_dir, attn_implementation="eager")
    for name, seed in SEEDS.items():
        torch.manual_seed(seed)
        model.add_adapter(name, config="seq_bn")
        model.add_classification_head(name, num_labels=2)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in sorted(trainable(model, name).items()):
                p.normal_(0.0, 0.05, generator=g)
    model.add_adapter("mix", config="seq_bn")
    model.add_classification_head("mix", num_labels=2)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, p in trainable(model, "mix").items():
            clean = params[n.replace(".mix.", ".clean.")]
            adv = params[n.replace(".mix.", ".adv.")]
            p.copy_(MIX_LAMBDA * clean + (1.0 - MIX_LAMBDA) * adv)
    model.eval()
    return model.to(dtype)


def variant_model(model_dir, dtype):
    """MiniLM with adapter `variant` (non-default AdapterHub settings), in eval mode."""
    from adapters import SeqBnConfig
    model = AutoAdapterModel.from_pretrained(model_dir, attn_implementation="eager")
    v = VARIANT
    cfg = SeqBnConfig(reduction_factor=v["reduction_factor"], scaling=v["scaling"], leave_out=v["leave_out"])
    model.add_adapter("variant", config=cfg)
    model.add_classification_head(
        "variant",
        num_labels=len(v["labels"]),
        layers=v["head_layers"],
        activation_function=v["head_activation"],
        id2label=dict(enumerate(v["labels"])),
    )
    g = torch.Generator().manual_seed(v["seed"])
    with torch.no_grad():
        for n, p in sorted(trainable(model, "variant").items()):
            p.normal_(0.0, 0.05, generator=g)
    model.set_active_adapters("variant")
    model.active_head = "variant"
    model.eval()
    return model.to(dtype)


def trainable(model, name):
    return {
        n: p
        for n, p in model.named_parameters()
        if f".adapters.{name}." in n or n.startswith(f"heads.{name}.")
    }


def logits_and_grads(model, enc, labels, dtype):
    """Adapter `clean`: logits, loss, and the loss's gradients w.r.t. its 28 tensors and the
    word-embedding lookup output (before position/type embeddings and the embedding LayerNorm)."""
    model.set_active_adapters("clean")
    model.active_head = "clean"
    model.zero_grad()
    params = trainable(model, "clean")
    for n, p in model.named_parameters():
        p.requires_grad_(n in params)
    embeds = model.bert.embeddings.word_embeddings(enc["input_ids"]).detach().to(dtype).requires_grad_()
    out = model(inputs_embeds=embeds, attention_mask=enc["attention_mask"], token_type_ids=enc["token_type_ids"])
    loss = torch.nn.functional.cross_entropy(out.logits, labels)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in params.items()}
    return out.logits.detach(), loss.detach(), embeds.grad.detach(), grads


def logits_of(model, name, enc):
    model.set_active_adapters(name)
    model.active_head = name
    with torch.no_grad():
        return model(**enc).logits


def compute(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = tok(SENTENCES, padding="longest", truncation=True, max_length=MAX_LEN, return_tensors="pt")
    enc = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    lens = enc["attention_mask"].sum(1).tolist()
    labels = torch.tensor(LABELS)
    t = {}

    # the plain encoder
    for dtype, suffix in ((torch.float32, ""), (torch.float64, "_f64")):
        bert = BertModel.from_pretrained(model_dir, attn_implementation="eager", add_pooling_layer=False)
        bert = bert.to(dtype).eval()
        with torch.no_grad():
            out = bert(**enc, output_hidden_states=True)
        mask = enc["attention_mask"].unsqueeze(-1).to(dtype)
        mean = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
        t[f"sentence_embedding{suffix}"] = torch.nn.functional.normalize(mean, dim=-1)
        t[f"hidden_states{suffix}"] = torch.stack(out.hidden_states)
        t[f"last_hidden_state{suffix}"] = out.last_hidden_state

    # the adapters, their logits and gradients, in f32 and f64
    for dtype, suffix in ((torch.float32, ""), (torch.float64, "_f64")):
        model = adapter_model(model_dir, dtype)
        logits, loss, gx, grads = logits_and_grads(model, enc, labels, dtype)
        t[f"logits{suffix}"], t[f"loss{suffix}"], t[f"grad.inputs_embeds{suffix}"] = logits, loss, gx
        for n, g in grads.items():
            t[f"grad{suffix}.{n}"] = g
        if dtype == torch.float32:
            weights = {
                n: p.detach().clone()
                for n, p in model.named_parameters()
                if ".adapters." in n or n.startswith("heads.")
            }
            t["adv.logits"] = logits_of(model, "adv", enc)
            t["mix.logits"] = logits_of(model, "mix", enc)
            t["mix.loss"] = torch.nn.functional.cross_entropy(t["mix.logits"], labels)
            # two AdamW steps on the same batch, through the input_ids path
            model.set_active_adapters("clean")
            model.active_head = "clean"
            params = trainable(model, "clean")
            opt = torch.optim.AdamW(params.values(), **ADAMW)
            for step in (1, 2):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(**enc).logits, labels)
                t[f"adamw.step{step}.loss_before"] = loss.detach()
                loss.backward()
                opt.step()
                for n, p in params.items():
                    t[f"adamw.after_step{step}.{n}"] = p.detach().clone()
        # the configurations AdapterHub resolves, for the checkpoint tests
        configs = {
            "adapter_config": model.adapters_config.get("clean").to_dict(),
            "head_config": dict(model.heads["clean"].config),
        }
    for dtype, suffix in ((torch.float32, ""), (torch.float64, "_f64")):
        variant = variant_model(model_dir, dtype)
        with torch.no_grad():
            t[f"variant.logits{suffix}"] = variant(**enc).logits
    return enc, lens, labels, weights, t, configs, variant.to(torch.float32)


def compare(t, weights, enc, directory):
    """Largest difference of each recomputed tensor against an earlier, untrimmed set."""
    old = {}
    for f in ("base_minilm.safetensors", "adapter_oracle.safetensors", "adapter_weights.safetensors"):
        old.update({(f, k): v for k, v in load_file(os.path.join(directory, f)).items()})
    worst = 0.0
    for (f, k), v in sorted(old.items()):
        if f == "adapter_oracle.safetensors" and k.startswith(("hidden_states", "last_hidden_state")):
            continue  # the adapter model's hidden states: not recomputed (no test reads them)
        new = weights.get(k) if f == "adapter_weights.safetensors" else enc.get(k, t.get(k))
        if new is None:
            continue
        d = (new.double() - v.double()).abs().max().item() if v.numel() else 0.0
        worst = max(worst, d)
        if d > 0:
            print(f"  {f}:{k}: max abs difference {d:.3e}")
    print(f"compared with {directory}: largest difference {worst:.3e}")
    return worst


def main():
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    home = os.environ.get("ADMIX_HOME") or os.path.join(cache, "admix")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(home, "models", "all-MiniLM-L6-v2"))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "minilm-oracle"))
    ap.add_argument("--compare", help="an earlier, untrimmed set of the same files to check against")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    enc, lens, labels, weights, t, configs, variant = compute(args.model)
    if args.compare:
        compare(t, weights, enc, args.compare)

    v = lambda x: valid_rows(x, lens).contiguous()
    base = {k: enc[k].contiguous() for k in enc}
    base["hidden_states_valid"] = torch.stack([v(h) for h in t["hidden_states"]])
    base["last_hidden_state_valid_f64"] = v(t["last_hidden_state_f64"])
    base["sentence_embedding_f64"] = t["sentence_embedding_f64"].contiguous()
    oracle = {"labels": labels, "logits_f64": t["logits_f64"], "loss_f64": t["loss_f64"]}
    oracle["grad.inputs_embeds_valid_f64"] = v(t["grad.inputs_embeds_f64"])
    # the gradient at pad positions is exactly zero in the reference
    assert t["grad.inputs_embeds_f64"].abs().sum().item() == oracle["grad.inputs_embeds_valid_f64"].abs().sum().item()
    for k, x in t.items():
        if k.startswith("grad_f64."):
            oracle[k] = x
        if k.startswith("adamw.") or k in ("adv.logits", "mix.logits", "variant.logits_f64"):
            oracle[k] = x
    oracle = {k: x.contiguous() for k, x in oracle.items()}

    os.makedirs(args.out, exist_ok=True)
    save_file(base, os.path.join(args.out, "base_minilm.safetensors"))
    save_file(oracle, os.path.join(args.out, "adapter_oracle.safetensors"))
    save_file({k: x.contiguous() for k, x in sorted(weights.items())}, os.path.join(args.out, "adapter_weights.safetensors"))
    variant.save_adapter(os.path.join(args.out, "variant"), "variant", with_head=True, use_safetensors=True)
    for cfg in ("adapter_config.json", "head_config.json"):
        # AdapterHub records the model's local path; name the model instead
        path = os.path.join(args.out, "variant", cfg)
        with open(path) as f:
            saved = json.load(f)
        saved["model_name"] = "all-MiniLM-L6-v2"
        with open(path, "w") as f:
            json.dump(saved, f, indent=2, sort_keys=True)
    info = {
        "model_safetensors_sha256": sha256(os.path.join(args.model, "model.safetensors")),
        "tokenizer_json_sha256": sha256(os.path.join(args.model, "tokenizer.json")),
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "adapters": adapters.__version__,
            "safetensors": safetensors.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "sentences": SENTENCES,
        "labels": LABELS,
        "max_len": MAX_LEN,
        "n_valid_tokens": lens,
        "adapter_seeds": SEEDS,
        "mix_lambda": MIX_LAMBDA,
        "adamw": {**ADAMW, "betas": list(ADAMW["betas"])},
        "variant": VARIANT,
        **configs,
    }
    with open(os.path.join(args.out, "sentences.json"), "w") as f:
        json.dump(info, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
