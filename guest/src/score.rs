//! Stage 4: logits of one window → best answer spans, scored as the transformers
//! question-answering pipeline scores them.
//!
//! Tokens outside the context (question, special tokens, padding) get logit -10000 except the
//! classifier token; start and end logits are soft-maxed separately; the classifier token's
//! `p_start * p_end` is the "no answer" score and is then zeroed; a span `s..=e` scores
//! `p_start[s] * p_end[e]` when both ends are context tokens and `e - s < max_answer_len`.

/// A span of token positions inside one window, `end` inclusive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenSpan {
    pub start: usize,
    pub end: usize,
    pub score: f32,
}

/// What one window contributes: its best spans (best first) and its "no answer" score.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowScores {
    pub spans: Vec<TokenSpan>,
    pub null_score: Option<f32>,
}

const MASKED_LOGIT: f32 = -10_000.0;

/// Scores the spans of one window. `in_context` has one entry per real (unpadded) token and
/// decides the window's length; longer logit slices (padding) are ignored.
pub fn score_window(
    start_logits: &[f32],
    end_logits: &[f32],
    in_context: &[bool],
    cls_index: Option<usize>,
    top_k: usize,
    max_answer_len: usize,
) -> WindowScores {
    let n = in_context.len().min(start_logits.len()).min(end_logits.len());
    let keep = |i: usize| in_context[i] || cls_index == Some(i);
    let mut p_start = softmax((0..n).map(|i| if keep(i) { start_logits[i] } else { MASKED_LOGIT }));
    let mut p_end = softmax((0..n).map(|i| if keep(i) { end_logits[i] } else { MASKED_LOGIT }));
    let null_score = cls_index.filter(|&c| c < n).map(|c| {
        let score = p_start[c] * p_end[c];
        p_start[c] = 0.0;
        p_end[c] = 0.0;
        score
    });

    let mut spans = Vec::new();
    for s in (0..n).filter(|&s| in_context[s]) {
        let last = (s + max_answer_len).min(n);
        for e in (s..last).filter(|&e| in_context[e]) {
            spans.push(TokenSpan { start: s, end: e, score: p_start[s] * p_end[e] });
        }
    }
    // Stable: equal scores keep start-major order, as the reference's argmax does.
    spans.sort_by(|a, b| b.score.total_cmp(&a.score));
    spans.truncate(top_k);
    WindowScores { spans, null_score }
}

fn softmax(logits: impl Iterator<Item = f32> + Clone) -> Vec<f32> {
    let max = logits.clone().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.map(|x| (x - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|x| x / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // [CLS] q q [SEP] c c c c [SEP]
    const CTX: [bool; 9] = [false, false, false, false, true, true, true, true, false];

    #[test]
    fn best_span_is_argmax_of_start_times_end() {
        let start = [0.0, 0.0, 0.0, 0.0, 1.0, 5.0, 1.0, 0.0, 0.0];
        let end = [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 6.0, 1.0, 0.0];
        let s = score_window(&start, &end, &CTX, Some(0), 1, 15);
        assert_eq!((s.spans[0].start, s.spans[0].end), (5, 6));
        assert!(s.spans[0].score > 0.5 && s.spans[0].score <= 1.0);
    }

    #[test]
    fn question_and_special_tokens_never_answer() {
        // Huge logits on question tokens and the final [SEP] must be ignored.
        let start = [0.0, 50.0, 50.0, 50.0, 1.0, 0.0, 0.0, 0.0, 50.0];
        let end = [0.0, 50.0, 50.0, 50.0, 0.0, 0.0, 0.0, 1.0, 50.0];
        let s = score_window(&start, &end, &CTX, Some(0), 20, 15);
        assert!(s.spans.iter().all(|sp| CTX[sp.start] && CTX[sp.end]));
        assert_eq!((s.spans[0].start, s.spans[0].end), (4, 7));
    }

    #[test]
    fn end_before_start_and_overlong_spans_are_excluded() {
        let start = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0, 0.0];
        let end = [0.0, 0.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 0.0];
        let s = score_window(&start, &end, &CTX, Some(0), 100, 2);
        assert!(s.spans.iter().all(|sp| sp.start <= sp.end && sp.end - sp.start < 2));
        // 4 single-token spans + 3 two-token spans.
        assert_eq!(s.spans.len(), 7);
    }

    #[test]
    fn top_k_is_sorted_and_bounded() {
        let start = [0.0, 0.0, 0.0, 0.0, 3.0, 2.0, 1.0, 0.0, 0.0];
        let end = [0.0, 0.0, 0.0, 0.0, 3.0, 2.0, 1.0, 0.5, 0.0];
        let s = score_window(&start, &end, &CTX, Some(0), 3, 15);
        assert_eq!(s.spans.len(), 3);
        assert!(s.spans.windows(2).all(|w| w[0].score >= w[1].score));
    }

    #[test]
    fn null_score_is_cls_probability_and_cls_is_never_a_span() {
        let start = [8.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let end = [8.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let s = score_window(&start, &end, &CTX, Some(0), 5, 15);
        let p_cls = 8f32.exp() / (8f32.exp() + 4.0);
        assert!((s.null_score.unwrap() - p_cls * p_cls).abs() < 1e-6);
        assert!(s.spans.iter().all(|sp| sp.start != 0));
        // Spans are scored with the CLS mass removed, so they sum to less than one.
        assert!(s.spans.iter().map(|sp| sp.score).sum::<f32>() < 1.0 - p_cls);
    }

    #[test]
    fn padding_beyond_the_window_is_ignored() {
        let start = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 99.0, 99.0];
        let end = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 99.0, 99.0];
        let s = score_window(&start, &end, &CTX, Some(0), 1, 15);
        assert_eq!((s.spans[0].start, s.spans[0].end), (4, 4));
    }
}
