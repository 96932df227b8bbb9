//! `docs/ARCHITECTURE.md` stays true to the code: every file and function it names exists, every picture it
//! shows is in the repository, and every block that `scripts/make_guide_figures.sh` fills is filled.

use regex::Regex;
use std::collections::BTreeSet;
use std::path::Path;

const GUIDE: &str = "docs/ARCHITECTURE.md";

fn guide() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(GUIDE)).expect("read docs/ARCHITECTURE.md")
}

/// The code references of the guide: `src/x.rs`, `src/x.rs::f` or `src/x.rs::Type::f`, in backquotes.
fn references(text: &str) -> BTreeSet<(String, Vec<String>)> {
    let re = Regex::new(r"`(src/[A-Za-z0-9_/]+\.rs)((?:::[A-Za-z_][A-Za-z0-9_]*)*)`").unwrap();
    re.captures_iter(text)
        .map(|c| {
            let items = c[2].split("::").filter(|s| !s.is_empty()).map(str::to_string).collect();
            (c[1].to_string(), items)
        })
        .collect()
}

/// Does `source` define `item` (a function, type, trait or constant), or, for `Type::f`, a function `f` in an
/// `impl` block of `Type`?
fn defines(source: &str, items: &[String]) -> bool {
    let item_re = |name: &str| {
        Regex::new(&format!(r"(?m)^\s*(pub(\([a-z]+\))? )?(fn|struct|enum|trait|const|type) {name}\b")).unwrap()
    };
    match items {
        [] => true,
        [name] => item_re(name).is_match(source),
        [ty, f] => {
            let impl_re = Regex::new(&format!(r"(?m)^impl(<[^>]*>)? ([A-Za-z0-9_]+ for )?{ty}\b")).unwrap();
            let fn_re = Regex::new(&format!(r"(?m)^    (pub(\([a-z]+\))? )?fn {f}\b")).unwrap();
            // The function must appear after one of the type's impl headers and before the next item at column 0.
            let found = impl_re.find_iter(source).any(|m| {
                let rest = &source[m.end()..];
                let end = rest.find("\n}").unwrap_or(rest.len());
                fn_re.is_match(&rest[..end])
            });
            found
        }
        _ => false,
    }
}

#[test]
fn every_file_and_function_the_guide_names_exists() {
    let text = guide();
    let refs = references(&text);
    assert!(refs.len() >= 30, "the guide should name the code of every part of the paper; found {refs:?}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut missing = Vec::new();
    for (file, items) in &refs {
        match std::fs::read_to_string(root.join(file)) {
            Err(_) => missing.push(format!("{file} (no such file)")),
            Ok(source) if !defines(&source, items) => missing.push(format!("{file}::{}", items.join("::"))),
            Ok(_) => {}
        }
    }
    assert!(missing.is_empty(), "{GUIDE} names code that does not exist: {missing:#?}");
}

#[test]
fn the_reference_checker_rejects_what_does_not_exist() {
    let src = "impl Foo {\n    pub fn bar() {}\n}\nimpl Baz {\n    fn qux() {}\n}\npub fn free() {}\n";
    assert!(defines(src, &["Foo".into(), "bar".into()]));
    assert!(defines(src, &["free".into()]));
    assert!(!defines(src, &["Foo".into(), "qux".into()]), "qux belongs to Baz, not Foo");
    assert!(!defines(src, &["missing".into()]));
    let refs = references("see `src/a.rs::T::f` and `src/b.rs`, not src/c.rs");
    assert_eq!(refs.len(), 2);
}

#[test]
fn every_picture_the_guide_shows_exists() {
    let text = guide();
    let re = Regex::new(r#"!\[[^\]]*\]\(([^)]+)\)|<img src="([^"]+)""#).unwrap();
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let pictures: Vec<String> =
        re.captures_iter(&text).map(|c| c.get(1).or(c.get(2)).unwrap().as_str().to_string()).collect();
    assert!(pictures.len() >= 4, "the guide shows the positional encoding, attention maps and curves: {pictures:?}");
    for p in pictures {
        assert!(docs.join(&p).is_file(), "{GUIDE} shows {p}, which is not in docs/");
    }
}

#[test]
fn every_generated_block_is_filled() {
    let text = guide();
    let re = Regex::new(r"(?s)<!-- BEGIN generated:([a-z-]+) -->(.*?)<!-- END generated:([a-z-]+) -->").unwrap();
    let mut blocks = 0;
    for c in re.captures_iter(&text) {
        assert_eq!(&c[1], &c[3], "generated block {} ends as {}", &c[1], &c[3]);
        assert!(c[2].trim().len() > 40, "generated block {} is empty: run scripts/make_guide_figures.sh", &c[1]);
        blocks += 1;
    }
    assert_eq!(blocks, text.matches("<!-- BEGIN generated:").count(), "a generated block is not closed");
    assert!(blocks >= 5, "the guide should hold nmt explain excerpts and attention maps");
}
