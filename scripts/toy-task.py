"""Writes a toy sentiment task that even a small random encoder can learn, as admix reads it:
`<subject> was <adverb> <word>` with a positive or a negative word (the vocabulary of the test
suite's toy task), TSV with a header, labels `pos` / `neg` alternating.

    python scripts/toy-task.py DIR [--train 400 --dev 100 --test 200]

Used for checks on the tiny RoBERTa of tests/fixtures/roberta-tiny (docs/results.md).
"""
import argparse
import os
import random

POSITIVE = ["good", "great", "wonderful", "superb"]
NEGATIVE = ["bad", "awful", "terrible", "boring"]
SUBJECTS = ["the movie", "this film", "the plot", "the cast", "it"]
ADVERBS = ["really", "truly", "quite", "so", "very"]


def rows(n, seed):
    r = random.Random(seed)
    out = ["text\tlabel"]
    for i in range(n):
        positive = i % 2 == 0
        word = r.choice(POSITIVE if positive else NEGATIVE)
        out.append(f"{r.choice(SUBJECTS)} was {r.choice(ADVERBS)} {word}\t{'pos' if positive else 'neg'}")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--dev", type=int, default=100)
    ap.add_argument("--test", type=int, default=200)
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    for seed, (split, n) in enumerate([("train", args.train), ("dev", args.dev), ("test", args.test)], start=1):
        with open(os.path.join(args.dir, f"{split}.tsv"), "w") as f:
            f.write(rows(n, seed))


if __name__ == "__main__":
    main()
