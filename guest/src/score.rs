//! Stage 4: logits of one window → best answer spans, scored as the transformers
//! question-answering pipeline scores them.
//!
//! Tokens outside the context (question, special tokens, padding) get logit -10000 except the
//! classifier token; start and end logits are soft-maxed separately; the classifier token's
//! `p_start * p_end` is the "no answer" score and is then zeroed; a span `s..=e` scores
//! `p_start[s] * p_end[e]` when both ends are context tokens and `e - s < max_answer_len`.
//!
//! Each window also reports its softmax denominators ([`WindowScores::mass`]),
//! so that [`document_weights`] can turn per-window scores into one softmax over the whole
//! document, where scores of different windows compare (the original BERT SQuAD code's
//! ranking by `start_logit + end_logit`, kept as probabilities).

/// A span of token positions inside one window, `end` inclusive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenSpan {
    pub start: usize,
    pub end: usize,
    /// `p_start * p_end`, computed in f32 as the reference does, kept in f64 so that
    /// re-weighting for the document ([`document_weights`]) does not underflow.
    pub score: f64,
}

/// What one window contributes: its best spans (best first) and its "no answer" score.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowScores {
    pub spans: Vec<TokenSpan>,
    pub null_score: Option<f32>,
    /// `Σ exp(logit)` over the tokens the start and the end softmax ran on (context tokens
    /// and the classifier token): how much the window's unnormalized scores weigh.
    pub mass: (Mass, Mass),
}

/// A softmax denominator `sum · e^max`, kept in two parts so that logits as large as f32
/// allows neither overflow nor lose the sum to rounding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mass {
    pub max: f64,
    pub sum: f64,
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
    let (mut p_start, start_mass) = softmax((0..n).map(|i| if keep(i) { start_logits[i] } else { MASKED_LOGIT }));
    let (mut p_end, end_mass) = softmax((0..n).map(|i| if keep(i) { end_logits[i] } else { MASKED_LOGIT }));
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
            spans.push(TokenSpan { start: s, end: e, score: f64::from(p_start[s] * p_end[e]) });
        }
    }
    // Stable: equal scores keep start-major order, as the reference's argmax does.
    spans.sort_by(|a, b| b.score.total_cmp(&a.score));
    spans.truncate(top_k);
    WindowScores { spans, null_score, mass: (start_mass, end_mass) }
}

/// Each window's share of the whole document's mass: a window's span score times its weight
/// is that span's probability under one softmax of start logits and one of end logits over
/// all windows' tokens together. The weights sum to at most one.
pub fn document_weights(masses: &[(Mass, Mass)]) -> Vec<f64> {
    let shares = |part: fn(&(Mass, Mass)) -> Mass| {
        let top = masses.iter().map(|m| part(m).max).fold(f64::NEG_INFINITY, f64::max);
        let scaled: Vec<f64> = masses.iter().map(|m| part(m).sum * (part(m).max - top).exp()).collect();
        let total: f64 = scaled.iter().sum();
        scaled.into_iter().map(move |x| x / total)
    };
    shares(|m| m.0).zip(shares(|m| m.1)).map(|(start, end)| start * end).collect()
}

/// The softmax (in f32, as the reference) and its denominator.
fn softmax(logits: impl Iterator<Item = f32> + Clone) -> (Vec<f32>, Mass) {
    let max = logits.clone().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.map(|x| (x - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    (exp.into_iter().map(|x| x / sum).collect(), Mass { max: f64::from(max), sum: f64::from(sum) })
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
        assert!(s.spans.iter().map(|sp| sp.score).sum::<f64>() < 1.0 - f64::from(p_cls));
    }

    #[test]
    fn document_weights_make_one_softmax_over_all_windows() {
        // Two windows: the second has the larger logits, so its best span must win once
        // weighted, although each window alone gives its best span a similar probability.
        let quiet = [0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0];
        let loud = [0.0, 0.0, 0.0, 0.0, 9.0, 7.0, 7.0, 7.0, 0.0];
        let a = score_window(&quiet, &quiet, &CTX, Some(0), 1, 15);
        let b = score_window(&loud, &loud, &CTX, Some(0), 1, 15);
        let weights = document_weights(&[a.mass, b.mass]);
        assert!(weights.iter().sum::<f64>() <= 1.0, "{weights:?}");
        let joint = |w: &WindowScores, x: &[f64]| w.spans[0].score * x[0];
        assert!(joint(&b, &weights[1..]) > joint(&a, &weights[..1]) * 100.0, "{weights:?}");
        // The weighted score is exactly exp(s + e) over both windows' masses.
        let z = |m: Mass| m.sum * m.max.exp();
        let (zs, ze) = (z(a.mass.0) + z(b.mass.0), z(a.mass.1) + z(b.mass.1));
        assert!((joint(&b, &weights[1..]) - (9.0f64 + 9.0).exp() / (zs * ze)).abs() < 1e-6);
        // One window: weight one, scores unchanged.
        assert!((document_weights(&[b.mass])[0] - 1.0).abs() < 1e-12);
        // Logits as large as f32 allows: two equal windows share the mass, neither overflows.
        let huge = [0.0, 0.0, 0.0, 0.0, f32::MAX, f32::MAX, 0.0, 0.0, 0.0];
        let h = score_window(&huge, &huge, &CTX, Some(0), 1, 15);
        assert_eq!(document_weights(&[h.mass, h.mass]), [0.25, 0.25]);
    }

    #[test]
    fn padding_beyond_the_window_is_ignored() {
        let start = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 99.0, 99.0];
        let end = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 99.0, 99.0];
        let s = score_window(&start, &end, &CTX, Some(0), 1, 15);
        assert_eq!((s.spans[0].start, s.spans[0].end), (4, 4));
    }
}
