//! Stage 4: logits of one window → best answer spans, scored as the transformers
//! question-answering pipeline scores them.
//!
//! Tokens outside the context (question, special tokens, padding) get logit -10000 except the
//! classifier token; start and end logits are soft-maxed separately; the classifier token's
//! `p_start * p_end` is the "no answer" score and is then zeroed; a span `s..=e` scores
//! `p_start[s] * p_end[e]` when both ends are context tokens and `e - s < max_answer_len`.
//!
//! Scores of different windows do not compare: every window's best span scores high, even in a
//! window without the answer. [`log_odds_against_no_answer`] makes them compare: a span's
//! probability over its window's "no answer" probability, `s + e - cls_s - cls_e` in logits
//! (the span's score relative to the classifier token, as the original BERT SQuAD code ranks
//! spans of different windows), taken from the logits themselves: as a ratio of probabilities
//! it saturated, since a confident window's "no answer" probability underflows.

/// A span of token positions inside one window, `end` inclusive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenSpan {
    pub start: usize,
    pub end: usize,
    /// `p_start * p_end`, computed in f32 as the reference does; f64, since the document
    /// decoding puts log-odds here ([`log_odds_against_no_answer`]) and then their odds.
    pub score: f64,
}

/// What one window contributes: its best spans (best first) and its "no answer" score.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowScores {
    pub spans: Vec<TokenSpan>,
    /// Each span's start logit plus end logit, in the order of `spans`.
    pub span_logits: Vec<f64>,
    pub null_score: Option<f32>,
    /// The classifier token's start logit plus end logit.
    pub null_logit: Option<f64>,
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
    let logit = |s: usize, e: usize| f64::from(start_logits[s]) + f64::from(end_logits[e]);
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
            spans.push(TokenSpan { start: s, end: e, score: f64::from(p_start[s] * p_end[e]) });
        }
    }
    // Stable: equal scores keep start-major order, as the reference's argmax does.
    spans.sort_by(|a, b| b.score.total_cmp(&a.score));
    spans.truncate(top_k);
    let span_logits = spans.iter().map(|span| logit(span.start, span.end)).collect();
    let null_logit = cls_index.filter(|&c| c < n).map(|c| logit(c, c));
    WindowScores { spans, span_logits, null_score, null_logit }
}

/// A window's spans scored by their log-odds against the window's "no answer": the log of each
/// span's probability over the classifier token's, which is `s + e - cls_s - cls_e` in logits
/// (the soft-maxes' normalizers cancel). A window whose model puts its mass on "no answer" (the
/// answer is elsewhere) gives its best span low log-odds; a window without a classifier token
/// keeps the log of its probabilities.
///
/// A logit of -inf is a probability of zero: such a span gets log-odds -inf (it never wins,
/// even against a "no answer" of -inf, where `-inf - -inf` would be NaN); a "no answer" of
/// -inf is taken as the masked tokens' pair of logits (as unlikely as a token outside the
/// context), so that the window's spans get large finite log-odds that still rank against
/// each other instead of all being +inf.
pub fn log_odds_against_no_answer(scored: WindowScores) -> Vec<TokenSpan> {
    let WindowScores { spans, span_logits, null_logit, .. } = scored;
    let null_logit = null_logit.map(|null| null.max(2.0 * f64::from(MASKED_LOGIT)));
    spans
        .into_iter()
        .zip(span_logits)
        .map(|(span, logit)| {
            let score = match null_logit {
                _ if logit == f64::NEG_INFINITY => f64::NEG_INFINITY,
                Some(null) => logit - null,
                None => span.score.ln(),
            };
            TokenSpan { score, ..span }
        })
        .collect()
}

/// The softmax, in f32 as the reference computes it.
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
        assert!(s.spans.iter().map(|sp| sp.score).sum::<f64>() < 1.0 - f64::from(p_cls));
    }

    #[test]
    fn log_odds_against_no_answer_compare_windows() {
        // Two windows whose best spans have the same probability within their window; the
        // second's model puts its remaining mass on "no answer", the first's elsewhere.
        let answer_here = [0.0, 0.0, 0.0, 0.0, 6.0, 0.0, 0.0, 5.0, 0.0];
        let answer_elsewhere = [6.0, 0.0, 0.0, 0.0, 6.0, 0.0, 0.0, 0.0, 0.0];
        let here = score_window(&answer_here, &answer_here, &CTX, Some(0), 1, 15);
        let elsewhere = score_window(&answer_elsewhere, &answer_elsewhere, &CTX, Some(0), 1, 15);
        let (here, elsewhere) = (log_odds_against_no_answer(here)[0], log_odds_against_no_answer(elsewhere)[0]);
        // In logits: s + e - cls_s - cls_e.
        assert_eq!(elsewhere.score, 0.0, "equal logits, even odds: {elsewhere:?}");
        assert_eq!(here.score, 12.0, "{here:?}");
        // No classifier token: the log of the probabilities.
        let plain = score_window(&answer_here, &answer_here, &CTX, None, 1, 15);
        assert_eq!(log_odds_against_no_answer(plain.clone())[0].score, plain.spans[0].score.ln());
    }

    /// Confident windows do not saturate: with "no answer" logits far below every span's (its
    /// probability underflows f32), spans of different strength keep distinct log-odds, in order.
    #[test]
    fn log_odds_of_confident_windows_stay_distinct_and_ordered() {
        let window = |span_logit: f32| {
            let logits = [-60.0, 0.0, 0.0, 0.0, span_logit, 0.0, 0.0, 0.0, 0.0];
            log_odds_against_no_answer(score_window(&logits, &logits, &CTX, Some(0), 1, 15))[0].score
        };
        let (strong, middling, weak) = (window(30.0), window(25.0), window(20.0));
        assert_eq!((strong, middling, weak), (180.0, 170.0, 160.0));
    }

    /// Found by `props::non_finite_logits_are_inference_errors` (CI, 2026-12-07): end logits of
    /// -inf over a whole window made `-inf - -inf` log-odds, NaN scores answered as a success.
    #[test]
    fn zero_probabilities_give_ordered_log_odds_never_nan() {
        let ninf = f32::NEG_INFINITY;
        let start = [0.0, 0.0, 0.0, 0.0, 2.0, 1.0, 0.0, 0.0, 0.0];
        // Every end logit, the classifier's too, is -inf: every span has probability zero.
        let nowhere = log_odds_against_no_answer(score_window(&start, &[ninf; 9], &CTX, Some(0), 5, 15));
        assert!(!nowhere.is_empty() && nowhere.iter().all(|span| span.score == f64::NEG_INFINITY), "{nowhere:?}");
        // "No answer" alone has probability zero: the spans keep finite log-odds, in order.
        let end = [ninf, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0];
        let certain = log_odds_against_no_answer(score_window(&[ninf, 0.0, 0.0, 0.0, 2.0, 1.0, 0.0, 0.0, 0.0], &end, &CTX, Some(0), 3, 15));
        assert!(certain.iter().all(|span| span.score.is_finite() && span.score > 0.0), "{certain:?}");
        assert!(certain.windows(2).all(|w| w[0].score >= w[1].score) && certain[0].score > certain[2].score, "{certain:?}");
    }

    #[test]
    fn padding_beyond_the_window_is_ignored() {
        let start = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 99.0, 99.0];
        let end = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 99.0, 99.0];
        let s = score_window(&start, &end, &CTX, Some(0), 1, 15);
        assert_eq!((s.spans[0].start, s.spans[0].end), (4, 4));
    }
}
