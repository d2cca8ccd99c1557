"""Makes tests/fixtures/roberta-tiny: a small RoBERTa with random weights and its own byte-level
BPE tokenizer, and what the PyTorch reference stack computes for it.

    python scripts/make-roberta-fixture.py [--out tests/fixtures/roberta-tiny]

No RoBERTa weights are reachable from the package registries, so the model is made here: a
byte-level BPE tokenizer trained with the `tokenizers` library on the text below, and a RoBERTa
of 3 layers, hidden size 32, 4 heads and FFN 64 drawn from a seeded generator (LayerNorm γ drawn
around 1 and β around 0, so that neither is the identity). Needs torch (2.15 was used),
transformers==4.57.6, adapters==1.3.0, tokenizers and safetensors. Everything runs in eval mode
(no dropout) with eager attention, once in float32 and once in float64; the outputs admix is
compared against are float64. The README written beside the files says what each tensor is.
"""
import argparse
import json
import os
import sys

import torch
import transformers
import adapters
import safetensors
import tokenizers
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, RobertaConfig, RobertaModel, RobertaTokenizerFast
from adapters import AutoAdapterModel, DoubleSeqBnConfig, SeqBnConfig

SENTENCES = [
    "The movie was absolutely wonderful, I loved every minute of it.",
    "This is the worst product I have ever bought; it broke after two days.",
    "na\u00efve caf\u00e9 \u2014 it's GREAT!!!",
    "Meh.",
    "In the early decades of the twentieth century, the small coastal town underwent a remarkable "
    "transformation: fishermen who had for generations relied on wooden boats began to adopt "
    "motorized trawlers, refrigeration, and radio communication.",
    "Tokyo \u6771\u4eac \U0001f60a costs $19.99 (20% off)",
]
LABELS = [0, 1, 0, 1, 0, 1]
PAIRS = [
    ("The cat sat on the mat.", "A cat was sitting on a mat."),
    ("He bought a car yesterday.", "Stock prices fell sharply on Monday after the announcement."),
    ("Meh.", "The film, which ran for almost three hours, never found its rhythm."),
]
PAIR_LABELS = [1, 0, 0]
# the tokenizer's training text: the sentences above and a few more, so that merges form
CORPUS = [s for s in SENTENCES] + [t for p in PAIRS for t in p] + [
    "the film is a charming and often affecting journey",
    "an utterly incompetent conclusion to a boring movie",
    "it is a gorgeous, witty, seductive movie",
    "the acting, costumes, music, cinematography and sound are all astounding",
    "a sentimental mess that never rings true",
    "the story is predictable but the performances are strong",
]
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # roberta-base's ids 0..4
VOCAB = 400
MAX_LEN = 40
SEED = 2026
MODEL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
             layer_norm_eps=1e-5, initializer_range=0.1, type_vocab_size=1)
ADAPTERS = {
    # name: (config, labels, seed)
    "pfeiffer": (SeqBnConfig(reduction_factor=4), 2, 11),
    "houlsby": (DoubleSeqBnConfig(reduction_factor=4), 3, 12),
}


def make_tokenizer(directory):
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False)
    fast = RobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                model_max_length=MAX_LEN)
    fast.save_pretrained(directory)
    return tok.get_vocab_size()


def make_model(directory, vocab):
    cfg = RobertaConfig(vocab_size=vocab, max_position_embeddings=MAX_LEN + 2, pad_token_id=1, bos_token_id=0,
                        eos_token_id=2, **MODEL)
    torch.manual_seed(SEED)
    model = RobertaModel(cfg, add_pooling_layer=False)
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for n, p in sorted(model.named_parameters()):
            if "LayerNorm.weight" in n:
                p.normal_(1.0, 0.2, generator=g)
            elif n.endswith(".bias"):
                p.normal_(0.0, 0.1, generator=g)
    model.save_pretrained(directory, safe_serialization=True)


def valid_rows(x, lens):
    """[B, S, ...] → the rows of valid tokens, sentence after sentence: [sum(lens), ...]."""
    return torch.cat([x[b, :n] for b, n in enumerate(lens)])


def trainable(model, name):
    return {n: p for n, p in model.named_parameters() if f".adapters.{name}." in n or n.startswith(f"heads.{name}.")}


def adapter_model(directory, dtype):
    """The model with adapters `pfeiffer` (seq_bn) and `houlsby` (double_seq_bn) and their heads, redrawn from N(0, 0.1)."""
    model = AutoAdapterModel.from_pretrained(directory, attn_implementation="eager")
    for name, (cfg, labels, seed) in ADAPTERS.items():
        torch.manual_seed(seed)
        model.add_adapter(name, config=cfg)
        model.add_classification_head(name, num_labels=labels)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in sorted(trainable(model, name).items()):
                p.normal_(0.0, 0.1, generator=g)
    model.eval()
    return model.to(dtype)


def grads_of(model, name, enc, labels):
    """Adapter `name`: logits, mean cross-entropy, and its gradients w.r.t. the adapter's and head's
    tensors and w.r.t. the word-embedding lookup output."""
    model.set_active_adapters(name)
    model.active_head = name
    model.zero_grad()
    params = trainable(model, name)
    for n, p in model.named_parameters():
        p.requires_grad_(n in params)
    embeds = model.roberta.embeddings.word_embeddings(enc["input_ids"]).detach().requires_grad_()
    # with inputs_embeds RoBERTa numbers every position, pads included; the valid rows (which
    # come first) get the same positions as from input_ids, and only they are kept
    out = model(inputs_embeds=embeds, attention_mask=enc["attention_mask"])
    loss = torch.nn.functional.cross_entropy(out.logits, labels)
    loss.backward()
    return out.logits.detach(), loss.detach(), embeds.grad.detach(), {n: p.grad.detach().clone() for n, p in params.items()}


def encode(tok, texts, pairs=None):
    enc = tok(texts, pairs, padding="longest", truncation=True, max_length=MAX_LEN, return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask")}


def compute(directory):
    tok = AutoTokenizer.from_pretrained(directory)
    single = encode(tok, SENTENCES)
    pair = encode(tok, [a for a, _ in PAIRS], [b for _, b in PAIRS])
    out, weights = {}, {}
    for which, enc in (("single", single), ("pair", pair)):
        lens = enc["attention_mask"].sum(1).tolist()
        out[f"{which}.input_ids"] = enc["input_ids"]
        out[f"{which}.attention_mask"] = enc["attention_mask"]
        for dtype, suffix in ((torch.float32, ""), (torch.float64, "_f64")):
            model = RobertaModel.from_pretrained(directory, attn_implementation="eager", add_pooling_layer=False)
            model = model.to(dtype).eval()
            with torch.no_grad():
                h = model(**enc, output_hidden_states=True).hidden_states
            mask = enc["attention_mask"].unsqueeze(-1).to(dtype)
            mean = (h[-1] * mask).sum(1) / mask.sum(1)
            out[f"{which}.hidden_states_valid{suffix}"] = torch.stack([valid_rows(x, lens) for x in h])
            out[f"{which}.sentence_embedding{suffix}"] = torch.nn.functional.normalize(mean, dim=-1)
    labels = torch.tensor(LABELS)
    for dtype, suffix in ((torch.float32, ""), (torch.float64, "_f64")):
        model = adapter_model(directory, dtype)
        lens = single["attention_mask"].sum(1).tolist()
        for name, (_, n_labels, _) in ADAPTERS.items():
            lab = labels % n_labels
            logits, loss, gx, grads = grads_of(model, name, single, lab)
            out[f"{name}.labels"] = lab
            out[f"{name}.logits{suffix}"] = logits
            out[f"{name}.loss{suffix}"] = loss
            out[f"{name}.grad.inputs_embeds_valid{suffix}"] = valid_rows(gx, lens)
            for n, g in grads.items():
                out[f"{name}.grad{suffix}.{n}"] = g
            model.set_active_adapters(name)
            model.active_head = name
            with torch.no_grad():
                out[f"{name}.pair_logits{suffix}"] = model(**pair).logits
        if dtype == torch.float32:
            saved = model
            weights = {n: p.detach().clone() for n, p in model.named_parameters() if ".adapters." in n or n.startswith("heads.")}
    return out, weights, saved, tok


README = """# roberta-tiny: a RoBERTa made here, and what PyTorch computes for it

No RoBERTa weights are reachable from the package registries, so `scripts/make-roberta-fixture.py`
makes one: a byte-level BPE tokenizer (vocabulary {vocab}, roberta-base's special tokens `<s>`
`<pad>` `</s>` `<unk>` `<mask>` = 0..4, `RobertaProcessing`: `<s> A </s>` and `<s> A </s></s> B </s>`)
trained with the `tokenizers` library on the script's own text, and a RoBERTa of 3 layers, hidden
size 32, 4 heads of 8, FFN 64, {positions} positions (`padding_idx` 1, so {max_len} usable), one token
type, LayerNorm eps 1e-5, drawn with seed {seed} (initializer range 0.1; then LayerNorm γ from
N(1, 0.2), every bias from N(0, 0.1)). Made with python {python}, torch {torch}, transformers
{transformers}, adapters {adapters}, tokenizers {tokenizers}, safetensors {safetensors}. Everything
ran in eval mode with eager attention, in float32 and (tensors suffixed `_f64`) float64.

## Files

| file | what |
|---|---|
| `model/` | the model as transformers saves it (`RobertaModel.save_pretrained`: `config.json`, `model.safetensors` with unprefixed names) and its tokenizer (`tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`) |
| `pfeiffer/`, `houlsby/` | AdapterHub checkpoints (`save_adapter(dir, name, with_head=True, use_safetensors=True)`): `pfeiffer` is seq_bn with reduction 4 and a 2-label head, `houlsby` is double_seq_bn (swish) with reduction 4 and a 3-label head; tensors named `roberta.encoder.layer.{{i}}.…adapters.{{name}}.…` and `heads.{{name}}.{{1,4}}.…` |
| `oracle.safetensors` | the outputs below |
| `inputs.json` | the sentences, pairs, labels, valid token counts and library versions |

`oracle.safetensors`, for the {n_single} sentences (`single.`) and the {n_pair} sentence pairs (`pair.`),
padded to the longest and truncated at {max_len} tokens:
- `{{single,pair}}.input_ids`, `.attention_mask` (I64): the reference tokenizer's output;
- `{{single,pair}}.hidden_states_valid[_f64]` [4, valid tokens, 32]: the embedding output and each
  layer's, valid tokens only, sentence after sentence;
- `{{single,pair}}.sentence_embedding[_f64]` [n, 32]: mean over valid tokens, L2-normalised;
- for each adapter `pfeiffer` and `houlsby` (with its head): `.labels` (LABELS mod its label count),
  `.logits[_f64]`, `.loss[_f64]` (mean cross-entropy) on the sentences, `.pair_logits[_f64]` on the
  pairs, `.grad.inputs_embeds_valid[_f64]` (w.r.t. the word-embedding lookup output, valid rows)
  and `.grad[_f64].<tensor>` for every adapter and head tensor.

The adapters' and heads' tensors were redrawn from N(0, 0.1) with `torch.Generator().manual_seed`
(pfeiffer 11, houlsby 12), tensor by tensor in sorted name order, so that they are not AdapterHub's
near-identity initialisation.
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "roberta-tiny"))
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    model_dir = os.path.join(args.out, "model")
    os.makedirs(model_dir, exist_ok=True)
    vocab = make_tokenizer(model_dir)
    make_model(model_dir, vocab)
    out, weights, saved, tok = compute(model_dir)
    save_file({k: v.contiguous() for k, v in sorted(out.items())}, os.path.join(args.out, "oracle.safetensors"))
    for name in ADAPTERS:
        saved.save_adapter(os.path.join(args.out, name), name, with_head=True, use_safetensors=True)
        for cfg in ("adapter_config.json", "head_config.json"):
            path = os.path.join(args.out, name, cfg)
            with open(path) as f:
                c = json.load(f)
            c["model_name"] = "roberta-tiny"  # AdapterHub records the local path
            with open(path, "w") as f:
                json.dump(c, f, indent=2, sort_keys=True)
    versions = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "adapters": adapters.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
    }
    info = {
        "sentences": SENTENCES,
        "labels": LABELS,
        "pairs": [list(p) for p in PAIRS],
        "pair_labels": PAIR_LABELS,
        "max_len": MAX_LEN,
        "single_lens": out["single.attention_mask"].sum(1).tolist(),
        "pair_lens": out["pair.attention_mask"].sum(1).tolist(),
        "seed": SEED,
        "adapters": {n: {"labels": l, "seed": s} for n, (_, l, s) in ADAPTERS.items()},
        "versions": versions,
    }
    with open(os.path.join(args.out, "inputs.json"), "w") as f:
        json.dump(info, f, indent=1, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(README.format(vocab=vocab, positions=MAX_LEN + 2, max_len=MAX_LEN, seed=SEED,
                              n_single=len(SENTENCES), n_pair=len(PAIRS), **versions))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
