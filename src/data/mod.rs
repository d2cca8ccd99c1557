//! Data: the built-in MR dataset, user-supplied text files, and how tokenized examples are batched.

pub mod batches;
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
}
