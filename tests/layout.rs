//! The library's shape: no module depends on itself through others, and no command-line type lives
//! below the binary (src/main.rs and src/cmd/ parse flags; the library takes typed configs).
//!
//! Dependencies are read from the source: every `crate::a::b` and `super::…` path outside comments
//! and test modules. Two modules with the same parent form an edge when one names the other (or
//! something inside it); a cycle among siblings at any depth is reported with the files that
//! make it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The library files (the binary's main.rs and cmd/ left out) with their module paths.
fn library() -> Vec<(PathBuf, Vec<String>)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    rust_files(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
            if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
                parts.pop();
            }
            (parts.first().map(String::as_str) != Some("main")
                && parts.first().map(String::as_str) != Some("cmd"))
            .then_some((p, parts))
        })
        .collect()
}

/// The code of a file without comments and without its test module.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap();
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// Every module path a file's code names, made absolute.
fn references(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = vec![];
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let at_start = i == 0 || !word(bytes[i - 1]);
        let rest: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
        let (base, skip): (Vec<String>, usize) = if at_start && rest.starts_with("crate::") {
            (vec![], 7)
        } else if at_start && rest.starts_with("super::") {
            let mut ups = 0;
            let mut j = i;
            while bytes[j..].iter().take(7).collect::<String>() == "super::" {
                ups += 1;
                j += 7;
            }
            (module[..module.len().saturating_sub(ups)].to_vec(), j - i)
        } else if at_start && rest.starts_with("self::") {
            (module.to_vec(), 6)
        } else {
            i += 1;
            continue;
        };
        let mut j = i + skip;
        let mut path = base;
        loop {
            let start = j;
            while j < bytes.len() && word(bytes[j]) {
                j += 1;
            }
            if j == start {
                break;
            }
            path.push(bytes[start..j].iter().collect());
            if bytes[j..].iter().take(2).collect::<String>() == "::" {
                j += 2;
            } else {
                break;
            }
        }
        out.push(path);
        i = j.max(i + 1);
    }
    out
}

#[test]
fn no_module_depends_on_itself() {
    // edges between siblings at every depth, each with the files that make it
    let mut edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (path, module) in library() {
        for target in references(&code(&path), &module) {
            for k in 1..=module.len().min(target.len()) {
                if module[..k - 1] != target[..k - 1] || module[k - 1] == target[k - 1] {
                    continue;
                }
                let (a, b) = (module[..k].join("::"), target[..k].join("::"));
                edges.entry(a).or_default().entry(b).or_default().insert(path.display().to_string());
            }
        }
    }
    // a module is on a cycle iff it reaches itself
    let mut cycles = vec![];
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        while let Some((node, trail)) = stack.pop() {
            for next in edges.get(&node).map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
                if next == *start {
                    let mut t = trail.clone();
                    t.push(next.clone());
                    let why: Vec<String> = t
                        .windows(2)
                        .map(|w| format!("{} -> {} ({:?})", w[0], w[1], edges[&w[0]][&w[1]]))
                        .collect();
                    cycles.push(why.join("; "));
                } else if seen.insert(next.clone()) {
                    let mut t = trail.clone();
                    t.push(next.clone());
                    stack.push((next, t));
                }
            }
        }
    }
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
    // the check sees real dependencies (a reader that found none would pass vacuously)
    assert!(edges["model"].contains_key("backend") && edges["train"].contains_key("attack"));
}

#[test]
fn no_command_line_types_below_the_binary() {
    let lib = library();
    assert!(lib.len() > 50, "the library's files were not found");
    let offending: Vec<String> =
        lib.iter().filter(|(p, _)| code(p).contains("clap")).map(|(p, _)| p.display().to_string()).collect();
    assert!(offending.is_empty(), "clap in library modules: {offending:?}");
}

#[test]
fn the_reader_finds_paths_and_resolves_super() {
    let m = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    let got = references(
        "use super::ops::{A, B};\nlet x = crate::model::bert::Bert::new(); super::super::io",
        &m("backend::cuda::launch"),
    );
    assert_eq!(got, vec![m("backend::cuda::ops"), m("model::bert::Bert::new"), m("backend::io")]);
}

/// Kernel files, launch files, CPU op files and kernel checks share stems: every kernel of
/// `kernels/X.cu` is launched from `src/backend/cuda/launch/X.rs`, the CPU reference of the family
/// is `src/backend/cpu/X.rs`, and the check table has entries named `X: …`.
#[test]
fn kernel_families_line_up_with_ops_and_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let checks: Vec<&str> = admix::backend::cuda::checks::CHECKS.iter().map(|(n, _)| *n).collect();
    let mut families = 0;
    for e in std::fs::read_dir(root.join("kernels")).unwrap() {
        let p = e.unwrap().path();
        let stem = p.file_stem().unwrap().to_string_lossy().to_string();
        // the emulator's own checks, not ops
        if p.extension().is_none_or(|x| x != "cu") || stem == "conformance" || stem == "selftest" {
            continue;
        }
        families += 1;
        let launch = std::fs::read_to_string(root.join(format!("src/backend/cuda/launch/{stem}.rs")))
            .unwrap_or_else(|_| panic!("kernels/{stem}.cu has no src/backend/cuda/launch/{stem}.rs"));
        assert!(
            root.join(format!("src/backend/cpu/{stem}.rs")).exists(),
            "kernels/{stem}.cu has no cpu/{stem}.rs"
        );
        assert!(
            checks.iter().any(|c| c.starts_with(&format!("{stem}:"))),
            "kernels/{stem}.cu has no check named `{stem}: …` in {checks:?}"
        );
        let source = std::fs::read_to_string(&p).unwrap();
        for kernel in source.split("__global__ void ").skip(1) {
            let name: String = kernel
                .trim_start_matches("__launch_bounds__")
                .trim_start_matches(|c: char| "(), \n".contains(c) || c.is_ascii_digit())
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            assert!(!name.is_empty(), "a kernel of kernels/{stem}.cu without a name");
            // attention's head-size variants are launched by a name built from their prefix
            let prefix = name.split("_dpl").next().unwrap();
            assert!(
                launch.contains(&format!("\"{name}\"")) || launch.contains(&format!("\"{prefix}_dpl")),
                "kernel {name} of kernels/{stem}.cu is not launched from launch/{stem}.rs"
            );
        }
    }
    assert!(families >= 10, "found {families} kernel families");
    for c in &checks {
        let stem = c.split(':').next().unwrap();
        assert!(
            root.join(format!("kernels/{stem}.cu")).exists() || stem == "loss",
            "check `{c}` names no kernel family"
        );
    }
}
