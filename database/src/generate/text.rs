//! What messages say: chat-like text of varied length. A TEXT message's
//! length (in characters) is log-normal with median [`MEDIAN_CHARS`] and
//! σ = [`LENGTH_SIGMA`], clamped to 1..=500: mostly a few words, a long
//! tail of paragraphs (mean ≈ 42 characters, ~1.5% over 200). The words
//! come from [`WORDS`] (a few non-ASCII, as real chat has); JOIN and LEAVE
//! carry a short greeting.

use super::rng::Rng;

pub const MEDIAN_CHARS: f64 = 28.0;
pub const LENGTH_SIGMA: f64 = 0.9;
pub const MAX_CHARS: usize = 500;

pub const WORDS: [&str; 95] = [
    "hi",
    "hello",
    "hey",
    "yes",
    "no",
    "maybe",
    "ok",
    "okay",
    "sure",
    "thanks",
    "lol",
    "haha",
    "the",
    "a",
    "is",
    "it",
    "this",
    "that",
    "we",
    "you",
    "I",
    "they",
    "and",
    "or",
    "but",
    "so",
    "to",
    "of",
    "in",
    "on",
    "for",
    "with",
    "at",
    "from",
    "about",
    "just",
    "really",
    "very",
    "build",
    "deploy",
    "release",
    "test",
    "tests",
    "bug",
    "fix",
    "merge",
    "branch",
    "review",
    "server",
    "client",
    "queue",
    "database",
    "latency",
    "throughput",
    "p99",
    "logs",
    "metrics",
    "today",
    "tomorrow",
    "now",
    "later",
    "soon",
    "again",
    "still",
    "already",
    "meeting",
    "lunch",
    "coffee",
    "weekend",
    "game",
    "movie",
    "book",
    "music",
    "weather",
    "train",
    "think",
    "know",
    "see",
    "need",
    "want",
    "works",
    "broke",
    "looks",
    "good",
    "great",
    "fine",
    "weird",
    "fast",
    "slow",
    "done",
    "👍",
    "🎉",
    "😂",
    "café",
    "naïve",
];

const JOIN_TEXTS: [&str; 5] = ["hi all", "joined", "hello!", "hey everyone", "morning"];
const LEAVE_TEXTS: [&str; 5] = ["bye", "gotta go", "left", "see you", "good night"];

/// The length (characters) of a TEXT message.
pub fn text_length(rng: &mut Rng) -> usize {
    let chars = (MEDIAN_CHARS.ln() + LENGTH_SIGMA * rng.normal())
        .exp()
        .round();
    (chars as usize).clamp(1, MAX_CHARS)
}

/// A TEXT message of [`text_length`] characters.
pub fn text(rng: &mut Rng) -> String {
    let length = text_length(rng);
    let mut out = String::with_capacity(length + 8);
    let mut chars = 0;
    while chars < length {
        if chars > 0 {
            // Now and then a sentence ends.
            let gap = if rng.below(8) == 0 { ". " } else { " " };
            out.push_str(gap);
            chars += gap.len();
        }
        let word = WORDS[rng.below(WORDS.len() as u64) as usize];
        out.push_str(word);
        chars += word.chars().count();
    }
    // Cut to the exact length, on a character boundary; never end on a
    // space (a trimmed client would not send one).
    if let Some((at, _)) = out.char_indices().nth(length) {
        out.truncate(at);
    }
    if out.ends_with(' ') {
        out.pop();
        out.push('.');
    }
    out
}

pub fn join_text(rng: &mut Rng) -> &'static str {
    JOIN_TEXTS[rng.below(JOIN_TEXTS.len() as u64) as usize]
}

pub fn leave_text(rng: &mut Rng) -> &'static str {
    LEAVE_TEXTS[rng.below(LEAVE_TEXTS.len() as u64) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_have_their_drawn_length_and_a_chat_like_spread() {
        let mut rng = Rng::stream(5, 5);
        let n = 50_000;
        let mut total = 0;
        let mut long = 0;
        for _ in 0..n {
            let mut probe = rng.clone();
            let want = text_length(&mut probe);
            let t = text(&mut rng);
            let chars = t.chars().count();
            assert_eq!(chars, want, "{t:?}");
            assert!((1..=MAX_CHARS).contains(&chars));
            assert!(!t.ends_with(' ') && !t.contains('\0'));
            total += chars;
            long += usize::from(chars > 200);
        }
        let mean = total as f64 / f64::from(n);
        assert!((38.0..46.0).contains(&mean), "mean {mean}");
        let long = long as f64 / f64::from(n);
        assert!((0.008..0.025).contains(&long), "over 200: {long}");
    }
}
