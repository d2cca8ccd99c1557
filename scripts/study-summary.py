"""The cross-task summary of AdpMixup studies: one markdown table of methods × runs, and one of the
study's four targets per run, read from the report.json that `admix mixup` writes.

    python scripts/study-summary.py --links-from docs \
        "SST-2 (b), m = 1=docs/runs/glue-sst2-advonly-2026-12-07" ...

Each argument is LABEL=RUN_DIR (a directory holding report.json); each run's label links to its
report.md, relative to --links-from (the directory of the page the tables go into). Multi-seed
runs give mean ± sd over their seeds; single-seed runs the one value. The methods shown are those chosen without the
test sets (the upper bounds and the configured-τ entropy row are in each run's own report).
Standard library only.
"""
import argparse
import json
import os
import sys

# the rows of a run's table, in this order; a run lacks some of them (no adv-all with one known
# attack, no full models under --no-full)
ORDER = [
    "clean adapter",
    "adversarial adapter",
    "adv-all",
    "full fine-tuning",
    "full adversarial training",
    "Model Soup",
    "Adapter Soup",
    "AdpMixup, static β",
    "AdpMixup, entropy β",
    "AdpMixup, calibrated entropy β",
    "AdpMixup, learned router",
]


def kind(name):
    """The row of ORDER a method belongs to, or None for the rows left out."""
    if "upper bound" in name or name.startswith("oracle") or name.startswith("static β_clean"):
        return None
    if name.startswith("AdpMixup, entropy β") and "dev-tuned" not in name:
        return None  # the configured τ; the dev-tuned row is the study's
    if name.startswith("adversarial training, adapter"):
        return "adv-all"  # one adapter on clean + every known attack's examples
    for k in sorted(ORDER, key=len, reverse=True):
        if name.startswith(k):
            return k
    sys.exit(f"error: a method this script does not know: `{name}`")


def fmt(mean, sd=None, n=1):
    if mean is None or mean != mean:
        return "–"
    return f"{mean:.1f}" if n < 2 or sd is None else f"{mean:.1f} ± {sd:.1f}"


def mean(xs):
    xs = [x for x in xs if x == x]
    return sum(xs) / len(xs) if xs else float("nan")


def rows(report):
    """(kind, name, clean, known, unseen, adaptive, params, seconds) per method shown."""
    known = [s["attack"] for s in report["sets"] if s["known"]]
    unseen = [s["attack"] for s in report["sets"] if not s["known"]]
    # admix writes one seed row per method of the first seed's table, in its order
    seed_rows = report.get("seed_rows") or [None] * len(report["methods"])
    out = []
    for m, s in zip(report["methods"], seed_rows):
        k = kind(m["name"])
        if k is None:
            continue
        if s:
            def spread(key, sets):
                if key in s and s[key].get("n"):
                    return fmt(s[key]["mean"], s[key]["sd"], s[key]["n"])
                if len(sets) == 1:
                    t = s["transfer"][sets[0]]
                    return fmt(t["mean"], t["sd"], t["n"])
                return fmt(mean([s["transfer"][a]["mean"] for a in sets]))

            clean = fmt(s["clean"]["mean"], s["clean"]["sd"], s["clean"]["n"])
            kn, un = spread("robust_known", known), spread("robust_unseen", unseen)
        else:
            clean, kn, un = fmt(m["clean"]), fmt(m["robust_known"]), fmt(m["robust_unseen"])
        adaptive = m.get("adaptive") or {}
        adv = fmt(mean(list(adaptive.values()))) if adaptive else "–"
        # over several seeds the values chosen on dev differ: the seed row's name (τ = ·)
        name = s["method"] if s else m["name"]
        out.append((k, name, clean, kn, un, adv, m["trainable_params"], m["train_seconds"]))
    out.sort(key=lambda r: ORDER.index(r[0]))
    return out


def params(n):
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{round(n / 1e3)}k"


def target_cells(report):
    """Per target, whether some AdpMixup rule meets it, naming the best rule and its margin."""
    t = report.get("targets") or []
    if not t:
        return ["–"] * 5

    def best(get, need):
        scored = [(get(r), r["rule"]) for r in t if get(r) is not None]
        if not scored:
            return "n/a"
        v, rule = max(scored)
        short = rule.replace("AdpMixup, ", "").split(" (")[0]
        return f"{'✓' if need(v) else '✗'} {short} ({v:+.1f})"

    worst_known = lambda r: min(r["known"].values()) if r.get("known") else None  # noqa: E731
    top = max(t, key=lambda r: r["score"])
    ratio = top.get("time_ratio")
    cheap = ratio is not None and ratio < 1 / 3
    short = top["rule"].replace("AdpMixup, ", "").split(" (")[0]
    time = "no full AT" if ratio is None else f"{ratio:.2f}× full AT's time"

    def meets_all(r):
        k, u = worst_known(r), r.get("unseen")
        return r["clean"] >= -1.5 and (k is None or k >= -3.0) and (u is None or u >= 0.0)

    all_three = [r["rule"].replace("AdpMixup, ", "").split(" (")[0] for r in t if meets_all(r)]
    return [
        "✓ " + ", ".join(all_three) if all_three else "✗",
        best(lambda r: r["clean"], lambda v: v >= -1.5),
        best(worst_known, lambda v: v >= -3.0),
        best(lambda r: r.get("unseen"), lambda v: v >= 0.0),
        f"{'✓' if top['score'] >= 0 and cheap else '✗'} {short} ({top['score']:+.1f}; {time})",
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    ap.add_argument("--links-from", default=".", metavar="DIR")
    args = ap.parse_args()
    runs = []
    for arg in args.runs:
        label, _, d = arg.rpartition("=")
        if not label:
            sys.exit(f"error: `{arg}` is not LABEL=RUN_DIR")
        path = os.path.join(d, "report.json")
        try:
            with open(path) as f:
                runs.append((label, os.path.relpath(d, args.links_from), json.load(f)))
        except (OSError, ValueError) as e:
            sys.exit(f"error: cannot read {path}: {e}")
    print("| run | method | clean | known robust | unseen robust | adaptive (seed 42) | params | train time, s |")
    print("|---|---|---|---|---|---|---|---|")
    for label, d, r in runs:
        for i, (_, name, clean, kn, un, adv, p, secs) in enumerate(rows(r)):
            run = f"[{label}]({d}/report.md)" if i == 0 else ""
            print(f"| {run} | {name} | {clean} | {kn} | {un} | {adv} | {params(p)} | {secs:,.0f} |")
    print()
    print("| target | " + " | ".join(label for label, _, _ in runs) + " |")
    print("|---|" + "---|" * len(runs))
    names = [
        "one rule meets the first three at once",
        "clean within 1.5 of the clean adapter",
        "each known set within 3 of the best adversarial adapter",
        "unseen ≥ adv-all",
        "best (clean + robust)/2 of the adapter methods, < 1/3 of full AT's time",
    ]
    cells = [target_cells(r) for _, _, r in runs]
    for i, n in enumerate(names):
        print(f"| {n} | " + " | ".join(c[i] for c in cells) + " |")


if __name__ == "__main__":
    main()
