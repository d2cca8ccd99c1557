"""Cross-check admix checkpoints with Python AdapterHub, both ways.

    python scripts/check-adapterhub.py runs/clean/best [--model DIR] [--data /tmp/mr | --texts FILE] [--limit 200]

Loads the base model (`--model`, a BERT or RoBERTa directory; by default the MiniLM that
`admix fetch` installs), then `load_adapter(checkpoint)` (which also loads
the head saved beside it), scores the first --limit texts of the MR test split (exported by
`admix mr --export DIR`), and prints the largest logit difference against `admix score` on the
same texts, and both accuracies. Then AdapterHub saves the adapter and head again
(`save_adapter(..., with_head=True, use_safetensors=True)`) and `admix score` reads that
directory: its logits must be the same. Needs torch, transformers==4.57.6, adapters==1.3.0.
"""
import argparse, json, os, subprocess, sys, tempfile

import torch
from transformers import AutoTokenizer
from adapters import AutoAdapterModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--model", help="the base model's directory (default: the fetched MiniLM)")
    ap.add_argument("--data", default="/tmp/mr")
    ap.add_argument("--texts", help="a TSV file with a header and text<TAB>label rows, instead of MR test")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--admix", default="target/release/admix")
    args = ap.parse_args()
    home = os.environ.get("ADMIX_HOME") or os.path.join(os.path.expanduser("~/.cache"), "admix")
    model_dir = args.model or os.path.join(home, "models", "all-MiniLM-L6-v2")
    info = json.load(open(os.path.join(args.checkpoint, "admix.json")))
    max_len = info.get("max_len", 128)
    if args.texts:
        rows = [l.rstrip("\n").split("\t") for l in open(args.texts)][1:][: args.limit]
        texts, label_names = [r[0] for r in rows], [r[1] for r in rows]
        head = json.load(open(os.path.join(args.checkpoint, "head_config.json")))
        label2id = head["config"]["label2id"]
        labels = [label2id[l] for l in label_names]
        source = args.texts
    else:
        subprocess.run([args.admix, "mr", "--export", args.data], check=True, stdout=subprocess.DEVNULL)
        rows = [json.loads(l) for l in open(os.path.join(args.data, "test.jsonl"))][: args.limit]
        texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
        source = "MR test"

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoAdapterModel.from_pretrained(model_dir)
    name = model.load_adapter(args.checkpoint, use_safetensors=True)
    model.set_active_adapters(name)
    model.eval()
    with torch.no_grad():
        enc = tok(texts, padding="longest", truncation=True, max_length=max_len, return_tensors="pt")
        ref = model(**enc).logits

    def admix_logits(checkpoint):
        inp = "\n".join(texts) + "\n"
        out = subprocess.run([args.admix, "score", "-", "--model", model_dir, "--adapter", checkpoint,
                              "--max-len", str(max_len)],
                             input=inp, capture_output=True, text=True, check=True).stdout
        return torch.tensor([json.loads(l)["logits"] for l in out.splitlines()])

    ours = admix_logits(args.checkpoint)
    acc = lambda logits: sum(int(p) == y for p, y in zip(logits.argmax(-1), labels)) / len(labels)
    print(f"adapter `{name}` from {args.checkpoint} on {model.config.model_type} {model_dir}: "
          f"{len(texts)} texts of {source}")
    print(f"max |logit difference| admix vs AdapterHub: {(ours - ref).abs().max().item():.2e}")
    print(f"accuracy: admix {100 * acc(ours):.2f}%, AdapterHub {100 * acc(ref):.2f}%")
    with tempfile.TemporaryDirectory() as saved:
        model.save_adapter(saved, name, with_head=True, use_safetensors=True)
        files = ", ".join(sorted(os.listdir(saved)))
        again = admix_logits(saved)
    print(f"saved again by AdapterHub ({files}) and read by admix: "
          f"max |logit difference| {(again - ours).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
