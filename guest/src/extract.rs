//! Stage 5: token spans → answers that are exact slices of the context.
//!
//! Offsets come from the tokenizer (byte offsets into the context), widened to whole words as
//! the reference pipeline does (`align_to_words`), never rebuilt from word pieces. Answers with
//! the same text (ignoring case) found in several places or windows are merged: the first
//! keeps its offsets and the scores add up. Offsets leave here as character offsets.

use crate::Answer;
use crate::score::TokenSpan;
use crate::window::Window;
use std::collections::HashMap;
use std::collections::hash_map::Entry;

/// An answer in byte offsets, before merging.
#[derive(Clone, Debug, PartialEq)]
struct ByteAnswer {
    start: usize,
    end: usize,
    score: f64,
}

/// Byte range of the context covered by a token span, widened to whole words.
pub fn span_bytes(window: &Window, span: &TokenSpan) -> Option<(usize, usize)> {
    let enc = &window.encoding;
    let word_chars = |token: usize| enc.token_to_word(token).filter(|(seq, _)| *seq == 1).and_then(|(_, word)| enc.word_to_chars(word, 1));
    let offsets = enc.get_offsets();
    let start = word_chars(span.start).map(|w| w.0).or_else(|| offsets.get(span.start).map(|o| o.0))?;
    let end = word_chars(span.end).map(|w| w.1).or_else(|| offsets.get(span.end).map(|o| o.1))?;
    (start <= end).then_some((start, end))
}

/// Merges the spans of all windows into at most `top_k` answers, best first. `null_score` is
/// the empty answer's score when impossible answers are allowed.
pub fn collect_answers<'w>(
    context: &str,
    spans: impl IntoIterator<Item = (&'w Window, TokenSpan)>,
    null_score: Option<f64>,
    top_k: usize,
) -> Vec<Answer> {
    let mut merged: Vec<ByteAnswer> = Vec::new();
    let mut by_text: HashMap<String, usize> = HashMap::new();
    for (window, span) in spans {
        let Some((start, end)) = span_bytes(window, &span) else { continue };
        let Some(text) = context.get(start..end) else { continue };
        match by_text.entry(text.to_lowercase()) {
            Entry::Occupied(seen) => merged[*seen.get()].score += span.score,
            Entry::Vacant(slot) => {
                slot.insert(merged.len());
                merged.push(ByteAnswer { start, end, score: span.score });
            }
        }
    }
    if let Some(score) = null_score {
        merged.push(ByteAnswer { start: 0, end: 0, score });
    }
    merged.sort_by(|a, b| b.score.total_cmp(&a.score));
    merged.truncate(top_k);
    merged
        .into_iter()
        .map(|a| Answer {
            text: context[a.start..a.end].to_string(),
            score: a.score,
            start: char_offset(context, a.start),
            end: char_offset(context, a.end),
        })
        .collect()
}

/// Characters before byte offset `byte` (which the caller knows is a char boundary).
pub fn char_offset(text: &str, byte: usize) -> usize {
    text[..byte].chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Options;
    use crate::tokenize::{encode_windows, tests::tiny_tokenizer};

    fn windows(question: &str, context: &str, options: &Options) -> Vec<Window> {
        let tok = tiny_tokenizer();
        encode_windows(&tok, question, context, options).unwrap().into_iter().map(Window::new).collect()
    }

    fn token_of(window: &Window, text: &str, context: &str) -> usize {
        (0..window.len())
            .find(|&i| {
                window.in_context[i] && {
                    let (s, e) = window.encoding.get_offsets()[i];
                    &context[s..e] == text
                }
            })
            .unwrap()
    }

    #[test]
    fn answer_is_the_exact_context_slice_with_char_offsets() {
        // Accents, CJK and an emoji before the answer: byte and char offsets differ.
        let context = "Café 東京 😀 was invented in 1886.";
        let w = &windows("when", context, &Options::default())[0];
        let t = token_of(w, "1886", context);
        let answers = collect_answers(context, [(w, TokenSpan { start: t, end: t, score: 0.9 })], None, 1);
        assert_eq!(answers[0].text, "1886");
        let chars: Vec<char> = context.chars().collect();
        let sliced: String = chars[answers[0].start..answers[0].end].iter().collect();
        assert_eq!(sliced, "1886");
        assert_eq!(answers[0].start, 26);
    }

    #[test]
    fn casing_and_accents_are_preserved() {
        let context = "The CAFÉ is open.";
        let w = &windows("where", context, &Options::default())[0];
        let t = token_of(w, "CAFÉ", context);
        let answers = collect_answers(context, [(w, TokenSpan { start: t, end: t, score: 0.5 })], None, 1);
        assert_eq!(answers[0].text, "CAFÉ");
    }

    #[test]
    fn sub_word_spans_widen_to_whole_words() {
        // "answers" is "answer" + "##s"; a span on "##s" alone still yields the word.
        let context = "here answers here";
        let w = &windows("where", context, &Options::default())[0];
        let piece = (0..w.len()).find(|&i| w.encoding.get_tokens()[i] == "##s").unwrap();
        let answers = collect_answers(context, [(w, TokenSpan { start: piece, end: piece, score: 0.5 })], None, 1);
        assert_eq!(answers[0].text, "answers");
    }

    #[test]
    fn same_text_across_windows_sums_scores_ignoring_case() {
        let context = "Benz a b c d e f g h a b c d e f g h benz";
        let options = Options { max_seq_len: 12, doc_stride: 2, ..Options::default() };
        let ws = windows("when", context, &options);
        assert!(ws.len() >= 2);
        let first = &ws[0];
        let last = ws.last().unwrap();
        let t0 = token_of(first, "Benz", context);
        let t1 = token_of(last, "benz", context);
        let a = token_of(first, "a", context);
        let answers = collect_answers(
            context,
            [
                (first, TokenSpan { start: t0, end: t0, score: 0.3 }),
                (first, TokenSpan { start: a, end: a, score: 0.4 }),
                (last, TokenSpan { start: t1, end: t1, score: 0.3 }),
            ],
            None,
            2,
        );
        assert_eq!(answers[0].text, "Benz", "first occurrence keeps its offsets");
        assert_eq!(answers[0].start, 0);
        assert!((answers[0].score - 0.6).abs() < 1e-6);
        assert_eq!(answers[1].text, "a");
    }

    #[test]
    fn null_answer_competes_when_allowed() {
        let context = "a b";
        let w = &windows("when", context, &Options::default())[0];
        let t = token_of(w, "a", context);
        let answers = collect_answers(context, [(w, TokenSpan { start: t, end: t, score: 0.2 })], Some(0.7), 2);
        assert_eq!(answers[0], Answer { text: String::new(), score: 0.7, start: 0, end: 0 });
        assert_eq!(answers[1].text, "a");
    }
}
