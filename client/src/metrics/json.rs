//! Pretty-printing a JSON text as it came: the server's key order and its
//! numbers exactly (a round trip through `serde_json::Value` would sort
//! the keys and re-format floats). Only whitespace outside strings changes.

/// Re-indents `text`, which must be valid JSON (the caller parsed it), two
/// spaces per level, `"key": value`, empty `{}` and `[]` kept on one line.
pub fn pretty(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = text.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        for _ in 0..depth {
            out.push_str("  ");
        }
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                // Skip to the next token to see whether the container is empty.
                while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                    chars.next();
                }
                if matches!(chars.peek(), Some('}' | ']')) {
                    out.push(chars.next().expect("peeked"));
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_order_and_numbers_their_spelling() {
        let text = r#"{"z":1.50,"a":[1, 2 ,{}],"s":"x, {y}: \"q\"","e":[ ],"n":{"k":null}}"#;
        let p = pretty(text);
        assert_eq!(
            p,
            "{\n  \"z\": 1.50,\n  \"a\": [\n    1,\n    2,\n    {}\n  ],\n  \"s\": \"x, {y}: \\\"q\\\"\",\n  \"e\": [],\n  \"n\": {\n    \"k\": null\n  }\n}\n"
        );
        // Same value as the input.
        let a: serde_json::Value = serde_json::from_str(text).unwrap();
        let b: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn an_escaped_backslash_ends_before_the_closing_quote() {
        let text = r#"["a\\",{"b":"\\\""}]"#;
        let b: serde_json::Value = serde_json::from_str(&pretty(text)).unwrap();
        assert_eq!(b, serde_json::from_str::<serde_json::Value>(text).unwrap());
    }
}
