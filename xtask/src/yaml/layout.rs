//! Where each key and value of a YAML document stands, from the parser's own spans, so an
//! error found after parsing (an unknown image, a bad parameter) names the line of its key.
//!
//! Paths are written like the error messages write fields: `cases[3].params.children`.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::fmt;

/// The shape of a document with the line of every node (1-based).
#[derive(Debug, Clone, Default)]
pub struct Layout {
    root: Option<Node>,
}

#[derive(Debug, Clone)]
struct Node {
    line: u64,
    column: u64,
    shape: Shape,
}

#[derive(Debug, Clone)]
enum Shape {
    Leaf,
    Seq(Vec<Node>),
    /// Entries in document order: the key, its line and column, and the value.
    Map(Vec<(String, u64, u64, Node)>),
}

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let Some(end) = inner.find(']') else { break };
            match inner[..end].parse() {
                Ok(i) => out.push(Step::Index(i)),
                Err(_) => out.push(Step::Key(&inner[..end])),
            }
            rest = &inner[end + 1..];
        }
    }
    out
}

impl Layout {
    /// Reads the layout of `text`; a syntax error comes back as the parser reports it.
    pub fn parse(text: &str) -> Result<Layout, serde_saphyr::Error> {
        let root: Option<Tree> = serde_saphyr::from_str(text)?;
        Ok(Layout {
            root: root.map(Tree::into_node),
        })
    }

    /// The line of the key (or list entry) at `path`; when the path goes deeper than the
    /// document, the line of the deepest part that exists.
    pub fn line(&self, path: &str) -> Option<u64> {
        let mut node = self.root.as_ref()?;
        let mut line = None;
        for step in steps(path) {
            let next = match (&node.shape, step) {
                (Shape::Map(entries), Step::Key(k)) => entries
                    .iter()
                    .find(|(key, ..)| key == k)
                    .map(|(_, l, _, n)| (*l, n)),
                (Shape::Seq(items), Step::Index(i)) => items.get(i).map(|n| (n.line, n)),
                _ => None,
            };
            let Some((l, n)) = next else { break };
            line = Some(l);
            node = n;
        }
        line.or(Some(node.line))
    }

    /// The path of the node that starts at `line`:`column` (where the parser reported an
    /// error), or of the innermost node before it.
    pub fn path_at(&self, line: u64, column: u64) -> Option<String> {
        let mut node = self.root.as_ref()?;
        let mut path = String::new();
        let before = |l: u64, c: u64| (l, c) <= (line, column);
        loop {
            let step = match &node.shape {
                Shape::Leaf => None,
                Shape::Seq(items) => items
                    .iter()
                    .enumerate()
                    .rfind(|(_, n)| before(n.line, n.column))
                    .map(|(i, n)| (format!("[{i}]"), n)),
                Shape::Map(entries) => {
                    entries
                        .iter()
                        .rfind(|(_, l, c, _)| before(*l, *c))
                        .map(|(k, _, _, n)| {
                            let dot = if path.is_empty() { "" } else { "." };
                            (format!("{dot}{k}"), n)
                        })
                }
            };
            let Some((part, next)) = step else { break };
            path.push_str(&part);
            node = next;
        }
        (!path.is_empty()).then_some(path)
    }
}

/// A node as the parser hands it over, with its span.
#[derive(Deserialize)]
#[serde(transparent)]
struct Tree(Spanned<TreeShape>);

enum TreeShape {
    Leaf,
    Seq(Vec<Tree>),
    Map(Vec<(Spanned<Key>, Tree)>),
}

impl Tree {
    fn into_node(self) -> Node {
        let at = self.0.referenced;
        let shape = match self.0.value {
            TreeShape::Leaf => Shape::Leaf,
            TreeShape::Seq(items) => Shape::Seq(items.into_iter().map(Tree::into_node).collect()),
            TreeShape::Map(entries) => Shape::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| {
                        let kat = k.referenced;
                        (k.value.0, kat.line(), kat.column(), v.into_node())
                    })
                    .collect(),
            ),
        };
        Node {
            line: at.line(),
            column: at.column(),
            shape,
        }
    }
}

/// A mapping key written as any scalar, kept as text.
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        d.deserialize_any(ShapeVisitor).map(|s| match s {
            ScalarOr::Scalar(text) => Key(text),
            ScalarOr::Other => Key(String::new()),
        })
    }
}

impl<'de> Deserialize<'de> for TreeShape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TreeShape, D::Error> {
        d.deserialize_any(TreeVisitor)
    }
}

struct TreeVisitor;

macro_rules! leaf {
    ($($method:ident: $ty:ty),*) => {
        $(fn $method<E: de::Error>(self, _: $ty) -> Result<TreeShape, E> {
            Ok(TreeShape::Leaf)
        })*
    };
}

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = TreeShape;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }
    leaf!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);
    fn visit_unit<E: de::Error>(self) -> Result<TreeShape, E> {
        Ok(TreeShape::Leaf)
    }
    fn visit_none<E: de::Error>(self) -> Result<TreeShape, E> {
        Ok(TreeShape::Leaf)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<TreeShape, D::Error> {
        TreeShape::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TreeShape, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(TreeShape::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TreeShape, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key()? {
            entries.push((key, map.next_value()?));
        }
        Ok(TreeShape::Map(entries))
    }
}

/// What a key turned out to be.
enum ScalarOr {
    Scalar(String),
    Other,
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = ScalarOr;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping key")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<ScalarOr, E> {
        Ok(ScalarOr::Scalar(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScalarOr, E> {
        Ok(ScalarOr::Scalar(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScalarOr, E> {
        Ok(ScalarOr::Scalar(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<ScalarOr, E> {
        Ok(ScalarOr::Scalar(v.to_string()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<ScalarOr, E> {
        Ok(ScalarOr::Scalar(v.to_string()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<ScalarOr, E> {
        Ok(ScalarOr::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ScalarOr, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(ScalarOr::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ScalarOr, A::Error> {
        while map
            .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
            .is_some()
        {}
        Ok(ScalarOr::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "name: s\nimages: [a, b]\ncases:\n  - name: x\n    params: {children: 5}\n  - name: y\n    params:\n      childrn: 5\n";

    #[test]
    fn lines_of_keys_and_entries() {
        let l = Layout::parse(DOC).unwrap();
        assert_eq!(l.line("name"), Some(1));
        assert_eq!(l.line("images[1]"), Some(2));
        assert_eq!(l.line("cases[0].params.children"), Some(5));
        assert_eq!(l.line("cases[1].params.childrn"), Some(8));
        assert_eq!(l.line("cases[1]"), Some(6));
        // Deeper than the document: the deepest part that exists.
        assert_eq!(l.line("cases[1].deep.children"), Some(6));
    }

    #[test]
    fn path_of_a_reported_position() {
        let l = Layout::parse(DOC).unwrap();
        assert_eq!(l.path_at(8, 7).as_deref(), Some("cases[1].params.childrn"));
        assert_eq!(l.path_at(2, 13).as_deref(), Some("images[1]"));
    }

    #[test]
    fn syntax_errors_carry_a_location() {
        let e = Layout::parse("a: [1, 2\nb: c\n").unwrap_err();
        assert!(e.location().is_some(), "{e}");
    }
}
