//! A config file's `[[peer]]` tables, found without parsing the file as a whole: a network of
//! 100,000 hosts has 100,000 of them, and a TOML document of that size held in memory costs about a
//! kilobyte a table. [`split`] hands back the rest of the file (each peer table's lines left empty,
//! so line numbers stay right) and where each table's keys are, to be parsed one at a time.
//!
//! A line is a table header when, outside a multi-line string, it starts with `[`; a header whose
//! name is `peer` inside double brackets starts a peer table, which runs to the next header. What
//! this reading could get wrong (a header-like line inside an unusual multi-line value) makes the
//! parse fail with a syntax error; it never moves a key from one table to another unnoticed,
//! because every piece is still parsed by a full TOML parser.

use std::ops::Range;

/// The file without its peer tables, and the byte range of each peer table's body (after its
/// header line) in the original text, in file order.
pub struct Split {
    pub rest: String,
    pub peers: Vec<Range<usize>>,
}

/// Whether `line` (trimmed) is the header of an array-of-tables element named `peer`.
fn is_peer_header(line: &str) -> bool {
    let Some(inner) = line.strip_prefix("[[") else { return false };
    let Some(end) = inner.find("]]") else { return false };
    let after = inner[end + 2..].trim_start();
    if !(after.is_empty() || after.starts_with('#')) {
        return false;
    }
    matches!(inner[..end].trim(), "peer" | "\"peer\"" | "'peer'")
}

/// How many multi-line string delimiters (`"""`, `'''`) `line` holds: an odd number opens or
/// closes one.
fn delimiters(line: &str) -> usize {
    // Counted as `str::matches` would (left to right, not overlapping), without building a
    // substring searcher for each of the file's lines.
    let count = |quote: u8| {
        let bytes = line.as_bytes();
        let (mut n, mut i) = (0, 0);
        while i + 3 <= bytes.len() {
            if bytes[i..i + 3] == [quote; 3] {
                n += 1;
                i += 3;
            } else {
                i += 1;
            }
        }
        n
    };
    count(b'"') + count(b'\'')
}

pub fn split(text: &str) -> Split {
    let mut rest = String::with_capacity(text.len().min(1 << 16));
    let mut peers = Vec::new();
    let mut in_string = false;
    // The body of the peer table being read: where it starts.
    let mut body: Option<usize> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let trimmed = line.trim_start();
        if !in_string && trimmed.starts_with('[') {
            if let Some(b) = body.take() {
                peers.push(b..start);
            }
            if is_peer_header(trimmed) {
                body = Some(offset);
            }
        }
        if delimiters(line) % 2 == 1 {
            in_string = !in_string;
        }
        if body.is_some() {
            // The header and the body: left out, their line ends kept.
            if line.ends_with('\n') {
                rest.push('\n');
            }
        } else {
            rest.push_str(line);
        }
    }
    if let Some(b) = body {
        peers.push(b..text.len());
    }
    Split { rest, peers }
}

/// Whether `s` holds a control character other than tab (which TOML allows in neither comments
/// nor basic strings).
fn has_control(s: &str) -> bool {
    s.chars().any(|c| c.is_control() && c != '\t')
}

/// Reads a table body that is nothing but `key = "value"` lines (bare keys, basic strings without
/// escapes, an optional comment after), blank lines and comment lines, calling `pair` with each
/// key and value in order: what generated configs hold, read without a TOML parser per table.
/// Returns false at the first line of any other shape, or when `pair` returns false (a key it
/// does not take, or takes twice): the full TOML parser then reads the table and reports it.
pub fn simple_pairs<'a>(body: &'a str, mut pair: impl FnMut(&'a str, &'a str) -> bool) -> bool {
    let comment_or_nothing = |s: &str| s.is_empty() || (s.starts_with('#') && !has_control(s));
    for line in body.lines() {
        let line = line.trim_matches([' ', '\t']);
        if line.is_empty() || line.starts_with('#') {
            if has_control(line) {
                return false;
            }
            continue;
        }
        let Some((key, rest)) = line.split_once('=') else { return false };
        let key = key.trim_end_matches([' ', '\t']);
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return false;
        }
        let Some(rest) = rest.trim_start_matches([' ', '\t']).strip_prefix('"') else { return false };
        // Without escapes, the first quote ends the string.
        let Some(end) = rest.find('"') else { return false };
        let value = &rest[..end];
        if value.contains('\\') || has_control(value) {
            return false;
        }
        if !comment_or_nothing(rest[end + 1..].trim_start_matches([' ', '\t'])) || !pair(key, value) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delimiters_are_counted_as_substring_matches_are() {
        for line in [
            "",
            "a = \"x\"",
            "\"\"\"",
            "\"\"\"\"",
            "\"\"\"\"\"\"",
            "x = '''a''' \"\"\"",
            "'''''''",
            "\"\"\"'''\"",
        ] {
            let expected = line.matches("\"\"\"").count() + line.matches("'''").count();
            assert_eq!(delimiters(line), expected, "{line:?}");
        }
    }

    fn pairs(body: &str) -> Option<Vec<(&str, &str)>> {
        let mut out = Vec::new();
        simple_pairs(body, |k, v| {
            out.push((k, v));
            true
        })
        .then_some(out)
    }

    #[test]
    fn simple_tables_are_read_without_a_parser_and_the_rest_is_left_to_it() {
        let body = "subnet = \"10.0.0.0/26\"\n\n  # a comment\npublic_ip=\"100.64.0.1\" # the host\r\n\tbackend = \"gre\"";
        assert_eq!(
            pairs(body),
            Some(vec![("subnet", "10.0.0.0/26"), ("public_ip", "100.64.0.1"), ("backend", "gre")])
        );
        for odd in [
            "subnet = \"a\\u0041\"",
            "subnet = 'literal'",
            "subnet = \"\"\"multi\nline\"\"\"",
            "a.b = \"dotted\"",
            "\"quoted\" = \"key\"",
            "subnet = \"x\" y",
            "subnet = 5",
            "subnet = \"unterminated",
            "[[peer]]",
            "subnet = \"a\u{7}b\"",
        ] {
            assert_eq!(pairs(odd), None, "{odd:?} is for the full parser");
        }
        assert!(!simple_pairs("a = \"1\"\nb = \"2\"", |k, _| k == "a"), "a key the caller refuses");
    }

    #[test]
    fn peer_tables_are_cut_out_and_lines_kept() {
        let text = "iface = \"eth0\"\n[backend]\ntype = \"gre\"\n[[peer]]\nsubnet = \"a\"\n\n[[ peer ]] # two\nsubnet = \"b\"\n[etcd]\nx = 1\n[[peer]]\nsubnet = \"c\"";
        let s = split(text);
        assert_eq!(s.rest, "iface = \"eth0\"\n[backend]\ntype = \"gre\"\n\n\n\n\n\n[etcd]\nx = 1\n\n");
        let line_of = |t: &str, what: &str| t.lines().position(|l| l == what);
        assert_eq!(line_of(&s.rest, "[etcd]"), line_of(text, "[etcd]"), "line numbers kept");
        let bodies: Vec<&str> = s.peers.iter().map(|r| &text[r.clone()]).collect();
        assert_eq!(bodies, ["subnet = \"a\"\n\n", "subnet = \"b\"\n", "subnet = \"c\""]);
    }

    #[test]
    fn headers_inside_multi_line_strings_and_other_arrays_are_not_peers() {
        let text = "password = \"\"\"\n[[peer]]\n\"\"\"\n[[peers]]\nx = 1\n[[peer.sub]]\ny = 2\n";
        let s = split(text);
        assert!(s.peers.is_empty(), "{:?}", s.peers);
        assert_eq!(s.rest, text);
    }
}
