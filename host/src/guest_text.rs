//! Guest-supplied text made safe to show: the host's logs and the kubelet's events are
//! read by people and parsed by tools, so a guest's error messages, names and IDs are
//! data, never markup. Control characters (newlines that forge log lines, terminal
//! escapes) and invisible format characters (bidirectional overrides that make text read
//! differently than it is) become spaces, and the text is cut to a bounded length.

/// Longest guest text kept in one message, in bytes.
pub const MAX_BYTES: usize = 1024;
/// Longest guest-chosen name (a path, a key, an ID) quoted in an error, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// `text` with control and format characters replaced by spaces, cut to at most `max`
/// bytes at a character boundary and marked with `…` where cut.
pub fn clean_to(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out: String = text[..end]
        .chars()
        .map(|c| if is_hidden(c) { ' ' } else { c })
        .collect();
    if end < text.len() {
        out.push('…');
    }
    out
}

/// [`clean_to`] with [`MAX_BYTES`]: for a guest's message.
pub fn clean(text: &str) -> String {
    clean_to(text, MAX_BYTES)
}

/// A guest-chosen name quoted for an error message: cleaned, cut to
/// [`MAX_NAME_BYTES`] and in double quotes, so where it starts and ends is unambiguous.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", clean_to(name, MAX_NAME_BYTES))
}

/// Characters that must not reach a reader as they are: C0/C1 controls, and the
/// zero-width and bidirectional formatting characters.
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{FEFF}'
            | '\u{061C}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_escapes_and_bidi_overrides_become_spaces() {
        assert_eq!(clean("a\nb\r\u{1b}[31mc"), "a b  [31mc");
        assert_eq!(clean("gpu\u{202E}0\u{2066}x\u{200B}"), "gpu 0 x ");
        assert_eq!(clean("\u{85}next"), " next", "C1 NEL is a line break too");
        assert_eq!(quote("a\"b"), "\"a\"b\"");
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        let long = "é".repeat(1000);
        let out = clean(&long);
        assert!(out.len() <= MAX_BYTES + '…'.len_utf8());
        assert!(out.ends_with('…'));
        assert_eq!(clean("short"), "short");
        assert!(quote(&"x".repeat(10_000)).len() < MAX_NAME_BYTES + 8);
    }
}
