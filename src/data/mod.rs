//! Data: the built-in MR dataset, user-supplied text files, and how tokenized examples are batched.

pub mod batches;
pub mod columns;
pub mod input;
pub mod labeled;
pub mod mr;

/// The examples of `data` (`mr` and a split, or a labelled file) for a head with `labels`.
pub fn labelled_examples(data: &str, split: &str, labels: &[String]) -> anyhow::Result<Vec<Example>> {
    Ok(match data {
        "mr" => {
            if labels.len() != 2 {
                anyhow::bail!("the checkpoint's head has {} labels; MR has 2", labels.len());
            }
            mr::load(&crate::assets::mr_path())?.get(mr::Split::parse(split)?).to_vec()
        }
        path => {
            let set = labeled::LabelSet { names: labels.to_vec() };
            set.encode(labeled::read(std::path::Path::new(path))?, path)?
        }
    })
}

/// How a data source is named in messages: `MR test`, or the file.
pub fn describe(data: &str, split: &str) -> String {
    if data == "mr" {
        format!("MR {split}")
    } else {
        data.to_string()
    }
}

/// `bytes` without a leading UTF-8 byte-order mark.
pub fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// The lines of a text file with their 1-based numbers: a UTF-8 byte-order mark at the start is
/// dropped, and `\n`, `\r\n` and a lone `\r` (old Mac files) all end a line.
pub fn lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut rest = strip_bom(bytes);
    let mut n = 0;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        n += 1;
        let end = rest.iter().position(|&b| b == b'\n' || b == b'\r').unwrap_or(rest.len());
        let line = &rest[..end];
        let skip = match rest.get(end..end + 2) {
            Some(b"\r\n") => 2,
            _ if end < rest.len() => 1,
            _ => 0,
        };
        rest = &rest[end + skip..];
        Some((n, line))
    })
}

/// Holds out `n` of `examples`, seeded and stratified by label: each label keeps its share of the
/// held-out part (largest remainder, ties to the smaller label id). Returns (the rest, held out),
/// both in the input's order. GLUE's dev split serves as the test set, so the dev split for tuning
/// is carved from train this way.
pub fn stratified_split(examples: Vec<Example>, n: usize, seed: u64) -> (Vec<Example>, Vec<Example>) {
    let total = examples.len();
    let n = n.min(total);
    let labels = examples.iter().map(|e| e.label + 1).max().unwrap_or(0);
    let mut by_label: Vec<Vec<usize>> = vec![vec![]; labels];
    for (i, e) in examples.iter().enumerate() {
        by_label[e.label].push(i);
    }
    // quotas: floor of each label's share, the remainder to the largest fractional parts
    let share = |l: usize| (n * by_label[l].len()) as f64 / total.max(1) as f64;
    let mut quota: Vec<usize> = (0..labels).map(|l| share(l).floor() as usize).collect();
    let mut order: Vec<usize> = (0..labels).collect();
    order.sort_by(|&a, &b| {
        (share(b) - share(b).floor()).total_cmp(&(share(a) - share(a).floor())).then(a.cmp(&b))
    });
    let short = n - quota.iter().sum::<usize>();
    for &l in order.iter().take(short) {
        quota[l] += 1;
    }
    let mut rng = crate::rng::Rng::new(seed);
    let mut held = vec![false; total];
    for (members, q) in by_label.iter_mut().zip(quota) {
        rng.shuffle(members);
        for &i in &members[..q] {
            held[i] = true;
        }
    }
    let (mut rest, mut out) = (vec![], vec![]);
    for (e, h) in examples.into_iter().zip(held) {
        if h {
            out.push(e)
        } else {
            rest.push(e)
        }
    }
    (rest, out)
}

/// A labelled example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub text: String,
    pub pair: Option<String>,
    pub label: usize,
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_end_at_any_newline_and_skip_a_bom() {
        let got: Vec<(usize, &[u8])> = super::lines(b"\xEF\xBB\xBFa\r\nb\rc\n\nd").collect();
        assert_eq!(got, [(1, &b"a"[..]), (2, b"b"), (3, b"c"), (4, b""), (5, b"d")]);
        assert_eq!(super::lines(b"").count(), 0);
        assert_eq!(super::lines(b"x\n").count(), 1);
    }

    #[test]
    fn stratified_split_keeps_label_shares_and_is_seeded() {
        use super::{stratified_split, Example};
        // 70 of label 0, 30 of label 1, 5 of label 2
        let ex: Vec<Example> = (0..105)
            .map(|i| Example {
                text: format!("t{i}"),
                pair: None,
                label: if i < 70 {
                    0
                } else if i < 100 {
                    1
                } else {
                    2
                },
            })
            .collect();
        let (rest, dev) = stratified_split(ex.clone(), 21, 7);
        let count = |v: &[Example], l: usize| v.iter().filter(|e| e.label == l).count();
        // shares 14, 6, 1
        assert_eq!((count(&dev, 0), count(&dev, 1), count(&dev, 2)), (14, 6, 1));
        assert_eq!(rest.len() + dev.len(), 105);
        let mut all: Vec<&str> = rest.iter().chain(&dev).map(|e| e.text.as_str()).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 105, "the parts are disjoint and cover the input");
        let index = |e: &Example| e.text[1..].parse::<usize>().unwrap();
        assert!(dev.windows(2).all(|w| index(&w[0]) < index(&w[1])), "input order kept");
        assert_eq!(stratified_split(ex.clone(), 21, 7).1, dev, "same seed, same split");
        assert_ne!(stratified_split(ex.clone(), 21, 8).1, dev);
        // 10 of 105: shares 6.67, 2.86, 0.48 → floors 6 + 2 + 0, the two left to the largest remainders
        let (_, small) = stratified_split(ex, 10, 1);
        assert_eq!((count(&small, 0), count(&small, 1), count(&small, 2)), (7, 3, 0));
    }
}
