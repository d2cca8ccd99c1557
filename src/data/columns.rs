//! Which columns of a delimited file hold the text, its pair and the label.
//!
//! admix's own layout is a header naming `text`, an optional `text_pair` and `label`. GLUE's task
//! files (as `download_glue_data.py` writes them) are read as they are: their headers are known
//! here, and CoLA's headerless four columns (source, label, annotation, sentence) are recognised by
//! their shape.

/// Where a file's fields are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Columns {
    pub text: usize,
    pub pair: Option<usize>,
    pub label: Option<usize>,
    /// whether the first row was a header (CoLA's files have none)
    pub header: bool,
}

/// GLUE's headers: (text, pair, label) column names, pairs before SST-2's single `sentence` (QNLI
/// has a `sentence` column too).
const GLUE: [(&str, Option<&str>, &str); 5] = [
    ("sentence1", Some("sentence2"), "label"), // RTE, WNLI, MNLI-style
    ("question", Some("sentence"), "label"),   // QNLI
    ("question1", Some("question2"), "is_duplicate"), // QQP
    ("#1 String", Some("#2 String"), "Quality"), // MRPC
    ("sentence", None, "label"),               // SST-2
];

/// What the error of an unknown layout lists.
pub const KNOWN: &str = "a header naming `text` (optional `text_pair`, `label`), or a GLUE task's \
    (sentence1/sentence2/label, question/sentence/label, question1/question2/is_duplicate, \
    #1 String/#2 String/Quality, sentence/label, or CoLA's four columns without a header)";

/// The layout of a file whose first row is `first`: admix's header, a GLUE header, or CoLA's
/// headerless rows. `None` when it is none of these.
pub fn detect(first: &[&str]) -> Option<Columns> {
    let pos = |name: &str| first.iter().position(|f| f.trim() == name);
    if let Some(text) = pos("text") {
        return Some(Columns { text, pair: pos("text_pair"), label: pos("label"), header: true });
    }
    for (text, pair, label) in GLUE {
        let found = (pos(text), pair.map(pos), pos(label));
        if let (Some(text), None | Some(Some(_)), Some(label)) = found {
            return Some(Columns { text, pair: found.1.flatten(), label: Some(label), header: true });
        }
    }
    // CoLA: source, label (0/1), original annotation (`*`, `?*`, `??` or empty), sentence
    let cola = first.len() == 4 && matches!(first[1], "0" | "1") && !first[3].trim().is_empty();
    cola.then_some(Columns { text: 3, pair: None, label: Some(1), header: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(text: usize, pair: Option<usize>, label: usize) -> Option<Columns> {
        Some(Columns { text, pair, label: Some(label), header: true })
    }

    #[test]
    fn admix_and_glue_layouts() {
        assert_eq!(
            detect(&["label", "text"]),
            Some(Columns { text: 1, pair: None, label: Some(0), header: true })
        );
        assert_eq!(detect(&["text"]).unwrap().label, None);
        assert_eq!(detect(&["sentence", "label"]), cols(0, None, 1));
        assert_eq!(detect(&["index", "sentence1", "sentence2", "label"]), cols(1, Some(2), 3));
        assert_eq!(detect(&["index", "question", "sentence", "label"]), cols(1, Some(2), 3));
        assert_eq!(detect(&["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]), cols(3, Some(4), 0));
        assert_eq!(
            detect(&["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]),
            cols(3, Some(4), 5)
        );
        assert_eq!(
            detect(&["gj04", "1", "", "Our friends won't buy this analysis."]),
            Some(Columns { text: 3, pair: None, label: Some(1), header: false })
        );
    }

    #[test]
    fn other_layouts_are_unknown() {
        assert_eq!(detect(&["id", "body", "label"]), None);
        assert_eq!(detect(&["sentence1", "label"]), None); // a pair layout without its pair
        assert_eq!(detect(&["gj04", "2", "", "x"]), None);
        assert_eq!(detect(&["a", "b"]), None);
    }
}
