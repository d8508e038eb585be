//! Property-based fuzzing of scoring and offset mapping (`proptest`).
//!
//! Contexts and questions mix the text that makes byte, character and token offsets disagree:
//! accents (precomposed and combining), CJK, Hangul, emoji with ZWJ and skin tones, bidi
//! controls, whitespace runs and control characters, plus arbitrary `char`s. Logits are
//! arbitrary finite floats, extreme ones included. Whatever comes in, nothing panics; every
//! answer is `start <= end <= chars` with `text` exactly those characters of the context;
//! scores are finite, sorted best first, at most `top_k`; bad options and logits of the wrong
//! shape are errors.
//!
//! Case count: proptest's default (256 per property), or the `PROPTEST_CASES` environment
//! variable, which proptest's default config reads (`PROPTEST_CASES=5000 cargo test -p
//! qa-guest props`). A failing case is saved to `guest/proptest-regressions/props.txt` and
//! replayed first on every later run: commit that file when it appears. The hand-written
//! corpus `fixtures/fuzz/guest-contexts.json` runs in plain tests (`corpus_*`) on every run
//! and the generators draw from it too.

use crate::extract::collect_answers;
use crate::infer::{Logits, QaModel};
use crate::pipeline::{MAX_ANSWER_LEN, MAX_BATCH_ROWS, MAX_SEQ_LEN, MAX_TOP_K, ModelProfile, answer};
use crate::score::{TokenSpan, score_window};
use crate::tokenize::{encode_windows, tests::tiny_tokenizer};
use crate::window::{Batch, Window};
use crate::{Answer, Decoding, Options, QaError};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::collections::HashSet;
use std::sync::LazyLock;

// ---------------------------------------------------------------------------------------------
// The seed corpus.

#[derive(serde::Deserialize)]
struct Corpus {
    cases: Vec<Seed>,
}

#[derive(Clone, Debug, serde::Deserialize)]
struct Seed {
    name: String,
    question: String,
    context: String,
}

static CORPUS: LazyLock<Vec<Seed>> = LazyLock::new(|| {
    let corpus: Corpus =
        serde_json::from_str(include_str!("../../fixtures/fuzz/guest-contexts.json")).expect("fixtures/fuzz/guest-contexts.json parses");
    corpus.cases
});

// ---------------------------------------------------------------------------------------------
// Generators.

/// What generated texts are assembled from: words the tiny tokenizer knows, words it does not,
/// and characters whose bytes, chars and tokens do not line up.
#[rustfmt::skip]
const PIECES: &[&str] = &[
    // In the tiny vocabulary.
    "when", "was", "the", "car", "invented", "?", "in", "1886", "benz", "patented", "it", ".", "cafe",
    "answers", "here", "a", "b", "h", "東", "京", "😀",
    // Accents, precomposed and combining, and case mappings that change length.
    "Café", "CAFÉ", "cafe\u{301}", "e\u{301}\u{302}\u{303}", "\u{301}", "\u{327}\u{327}", "İstanbul", "ß",
    "ẞ", "ﬁ", "ǅ", "ΣΑΣ", "σας",
    // Scripts.
    "東京都", "中文字", "한국어", "ภาษาไทย", "हिन्दी", "क्ष", "مرحبا", "שלום", "𝐀𝐁𝐂", "𝟏𝟖𝟖𝟔",
    // Emoji.
    "👩\u{200d}👩\u{200d}👧", "🇫🇷", "🇩🇪", "👍🏽", "\u{1f3fd}", "\u{fe0f}",
    // Invisible, special and unassigned.
    "\u{200b}", "\u{200c}", "\u{200d}", "\u{2060}", "\u{feff}", "\u{202e}", "\u{202c}", "\u{200f}",
    "\u{fffd}", "\u{fffe}", "\u{ffff}", "\u{e000}", "\u{10ffff}",
    // White space.
    " ", "   ", "\t", "\n", "\r\n", "\u{b}", "\u{c}", "\u{a0}", "\u{3000}", "\u{2028}", "\u{2029}", "\u{85}",
    // Control characters.
    "\u{0}", "\u{1}", "\u{7}", "\u{1b}[31m", "\u{7f}", "\u{9f}",
    // Punctuation glued to words.
    "(1886),", "[benz];", "\"1886\".", "…", "—", "«»", "'s", "##s", "[CLS]", "[SEP]", "[UNK]",
];

fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(PIECES).prop_map(str::to_string),
        3 => any::<char>().prop_map(String::from),
        1 => "\\PC{1,6}",
        // Longer than the tokenizer's `max_input_chars_per_word` (100): one [UNK].
        1 => "[a-zé]{99,110}",
    ]
}

/// Text of `pieces` pieces, mostly space-separated.
fn text(pieces: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    let glue = prop::sample::select(&[" ", " ", " ", "", "", "\n", "  "][..]);
    prop::collection::vec((piece(), glue), pieces)
        .prop_map(|parts| parts.into_iter().flat_map(|(piece, glue)| [piece, glue.to_string()]).collect())
}

fn context() -> impl Strategy<Value = String> {
    let seeds: Vec<String> = CORPUS.iter().map(|s| s.context.clone()).collect();
    prop_oneof![
        8 => text(0..60),
        // Dozens of windows with small `max_seq_len`s.
        1 => text(200..400),
        1 => any::<String>(),
        1 => prop::sample::select(seeds),
    ]
}

fn question() -> impl Strategy<Value = String> {
    let seeds: Vec<String> = CORPUS.iter().map(|s| s.question.clone()).collect();
    prop_oneof![
        8 => text(1..8),
        1 => any::<String>(),
        1 => prop::sample::select(seeds),
    ]
}

/// A finite logit: mostly ordinary, often any finite float, sometimes a boundary value.
fn logit() -> impl Strategy<Value = f32> {
    use proptest::num::f32::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    #[rustfmt::skip]
    const EXTREMES: &[f32] = &[
        f32::MAX, f32::MIN, f32::MIN_POSITIVE, -f32::MIN_POSITIVE, 0.0, -0.0, 1e-45, 1e30, -1e30, 1e38,
        -1e38, -10_000.0, 10_000.0, 88.72, 88.73, -87.34, -103.98, 1e4, -1e4,
    ];
    prop_oneof![
        4 => -20.0f32..20.0,
        2 => POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO,
        1 => prop::sample::select(EXTREMES),
    ]
}

/// A logit that is sometimes NaN or infinite.
fn non_finite_logit() -> impl Strategy<Value = f32> {
    prop_oneof![
        2 => logit(),
        1 => prop::sample::select(&[f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY][..]),
    ]
}

fn valid_options() -> impl Strategy<Value = Options> {
    (
        prop_oneof![3 => 1..=5usize, 1 => 1..=MAX_TOP_K],
        prop_oneof![3 => 1..=20usize, 1 => 1..=MAX_ANSWER_LEN],
        // A stride mostly small against the window (the useful case), sometimes too large
        // for the room the question leaves (an `InvalidOption`).
        prop_oneof![3 => 8..=48usize, 1 => 8..=MAX_SEQ_LEN]
            .prop_flat_map(|m| (Just(m), prop_oneof![6 => 0..=m / 4, 1 => 0..=1_000usize, 1 => Just(usize::MAX)])),
        prop_oneof![3 => 1..=80usize, 1 => Just(usize::MAX)],
        any::<bool>(),
        prop_oneof![Just(Decoding::Document), Just(Decoding::Pipeline)],
    )
        .prop_map(|(top_k, max_answer_len, (max_seq_len, doc_stride), max_question_len, handle_impossible, decoding)| Options {
            top_k,
            max_answer_len,
            max_seq_len,
            doc_stride,
            max_question_len,
            handle_impossible,
            max_windows: 0,
            decoding,
        })
}

/// Options with at least one field outside its valid range.
fn invalid_options() -> impl Strategy<Value = Options> {
    let bad_top_k = prop_oneof![Just(0usize), MAX_TOP_K + 1..=usize::MAX];
    let bad_answer_len = prop_oneof![Just(0usize), MAX_ANSWER_LEN + 1..=usize::MAX];
    let bad_seq_len = prop_oneof![0..8usize, MAX_SEQ_LEN + 1..=usize::MAX];
    (valid_options(), 1u8..16, bad_top_k, bad_answer_len, bad_seq_len).prop_map(|(mut options, which, top_k, answer_len, seq_len)| {
        // `which` is a non-empty set of fields to break.
        if which & 1 != 0 {
            options.top_k = top_k;
        }
        if which & 2 != 0 {
            options.max_answer_len = answer_len;
        }
        if which & 4 != 0 {
            options.max_seq_len = seq_len;
        }
        if which & 8 != 0 {
            options.max_question_len = 0;
        }
        options
    })
}

fn profile() -> impl Strategy<Value = ModelProfile> {
    (any::<u32>(), any::<bool>(), prop_oneof![Just(None), (0usize..=600).prop_map(Some)], any::<bool>())
        .prop_map(|(pad_id, token_type_ids, max_positions, f32_inputs)| ModelProfile { pad_id, token_type_ids, max_positions, f32_inputs })
}

// ---------------------------------------------------------------------------------------------
// A model stub.

/// How a stub breaks the shape of its output, on one call.
#[derive(Clone, Copy, Debug)]
enum Fault {
    MoreRows,
    FewerRows,
    LongerSeq,
    ShorterSeq,
    StartShort,
    EndLong,
    Empty,
    Fails,
}

fn fault() -> impl Strategy<Value = Fault> {
    prop::sample::select(
        &[
            Fault::MoreRows,
            Fault::FewerRows,
            Fault::LongerSeq,
            Fault::ShorterSeq,
            Fault::StartShort,
            Fault::EndLong,
            Fault::Empty,
            Fault::Fails,
        ][..],
    )
}

/// Returns logits cycled from generated pools, in the batch's shape unless it is to break it
/// on call number `fault.0`.
#[derive(Clone, Debug)]
struct Stub {
    start: Vec<f32>,
    end: Vec<f32>,
    fault: Option<(usize, Fault)>,
    calls: usize,
    faulted: bool,
    /// Whether any logit returned was NaN or +inf.
    gave_nan: bool,
}

impl Stub {
    fn new(start: Vec<f32>, end: Vec<f32>) -> Self {
        Self { start, end, fault: None, calls: 0, faulted: false, gave_nan: false }
    }
}

impl QaModel for Stub {
    fn infer(&mut self, batch: &Batch) -> Result<Logits, QaError> {
        let call = self.calls;
        self.calls += 1;
        let cells = batch.rows * batch.seq_len;
        // Offsets differ per call so consecutive batches do not repeat each other.
        let cycle = |pool: &[f32]| -> Vec<f32> {
            if pool.is_empty() {
                return vec![0.0; cells];
            }
            (0..cells).map(|i| pool[(i + call * 7) % pool.len()]).collect()
        };
        let mut logits = Logits { rows: batch.rows, seq_len: batch.seq_len, start: cycle(&self.start), end: cycle(&self.end) };
        self.gave_nan |= logits.start.iter().chain(&logits.end).any(|x| x.is_nan() || *x == f32::INFINITY);
        let Some((on, fault)) = self.fault.filter(|(on, _)| *on == call) else {
            return Ok(logits);
        };
        debug_assert_eq!(on, call);
        self.faulted = true;
        let reshape = |logits: &mut Logits, rows: usize, seq_len: usize| {
            logits.rows = rows;
            logits.seq_len = seq_len;
            logits.start.resize(rows * seq_len, 0.5);
            logits.end.resize(rows * seq_len, 0.5);
        };
        match fault {
            Fault::MoreRows => reshape(&mut logits, batch.rows + 1, batch.seq_len),
            Fault::FewerRows => reshape(&mut logits, batch.rows - 1, batch.seq_len),
            Fault::LongerSeq => reshape(&mut logits, batch.rows, batch.seq_len + 1),
            Fault::ShorterSeq => reshape(&mut logits, batch.rows, batch.seq_len - 1),
            Fault::StartShort => {
                logits.start.pop();
            }
            Fault::EndLong => logits.end.push(1.0),
            Fault::Empty => reshape(&mut logits, 0, 0),
            Fault::Fails => return Err(QaError::Inference("stub failed".into())),
        }
        Ok(logits)
    }
}

// ---------------------------------------------------------------------------------------------
// The invariants.

/// What every list of answers must satisfy. `max_score` bounds each score: 1 for
/// probabilities, more where same-text answers of several windows are summed.
fn check_answers(context: &str, answers: &[Answer], top_k: usize, max_score: f64) -> Result<(), TestCaseError> {
    let chars: Vec<char> = context.chars().collect();
    prop_assert!(answers.len() <= top_k, "{} answers for top_k {top_k}", answers.len());
    for a in answers {
        prop_assert!(a.start <= a.end && a.end <= chars.len(), "{a:?} out of 0..={}", chars.len());
        let slice: String = chars[a.start..a.end].iter().collect();
        prop_assert_eq!(&a.text, &slice, "text is not the context's chars {}..{}", a.start, a.end);
        prop_assert!(a.score.is_finite() && a.score >= 0.0 && a.score <= max_score, "score {} not in [0, {max_score}]", a.score);
    }
    prop_assert!(answers.windows(2).all(|w| w[0].score >= w[1].score), "not sorted best first: {answers:?}");
    // Same-text answers are merged, ignoring case.
    let texts: Vec<String> = answers.iter().filter(|a| !a.text.is_empty()).map(|a| a.text.to_lowercase()).collect();
    prop_assert_eq!(texts.iter().collect::<HashSet<_>>().len(), texts.len(), "duplicate texts: {:?}", texts);
    Ok(())
}

/// Runs the pipeline and checks the outcome: answers that satisfy [`check_answers`], an
/// `InvalidInput` or `InvalidOption` error before the model was called, or an `Inference`
/// error if and only if the stub misbehaved.
fn check_pipeline(question: &str, context: &str, options: &Options, profile: &ModelProfile, model: &mut Stub) -> Result<(), TestCaseError> {
    let tok = tiny_tokenizer();
    let result = answer(&tok, profile, model, question, context, options);
    if model.faulted || model.gave_nan {
        prop_assert!(matches!(result, Err(QaError::Inference(_))), "a misbehaving model gave {result:?}");
        return Ok(());
    }
    match result {
        Ok((answers, timings)) => {
            prop_assert!(timings.windows >= 1);
            // The pipeline's calls hold MAX_BATCH_ROWS windows; the document's at most one call
            // a window (short paragraph windows share a call).
            let pipeline_calls = (timings.windows as usize).div_ceil(MAX_BATCH_ROWS);
            match options.decoding {
                Decoding::Pipeline => prop_assert_eq!(model.calls, pipeline_calls),
                Decoding::Document => prop_assert!((1..=timings.windows as usize).contains(&model.calls), "{} calls", model.calls),
            }
            // Within one window the spans' probabilities (and the null score) sum to at most
            // one; the pipeline's same text found in several windows sums one score per
            // window; the document's scores over several windows are each a probability.
            let eps = 1e-5;
            let max_score = match options.decoding {
                Decoding::Document => 1.0 + eps,
                Decoding::Pipeline => f64::from(timings.windows) + eps,
            };
            check_answers(context, &answers, options.top_k, max_score)?;
            if timings.windows == 1 {
                let total: f64 = answers.iter().map(|a| a.score).sum();
                prop_assert!(total <= 1.0 + eps, "one window's answers sum to {total}");
            }
            if !options.handle_impossible {
                prop_assert!(answers.iter().all(|a| !a.text.is_empty()), "empty answer without handle_impossible: {answers:?}");
            }
        }
        Err(QaError::InvalidInput(_) | QaError::InvalidOption(_)) => {
            prop_assert_eq!(model.calls, 0, "refused after inference")
        }
        Err(other) => prop_assert!(false, "unexpected error {other:?}"),
    }
    Ok(())
}

fn windows(question: &str, context: &str, options: &Options) -> Option<Vec<Window>> {
    let tok = tiny_tokenizer();
    encode_windows(&tok, question, context, options).ok().map(|e| e.into_iter().map(Window::new).collect())
}

const BERT: ModelProfile = ModelProfile { pad_id: 0, token_type_ids: true, max_positions: Some(512), f32_inputs: false };

// ---------------------------------------------------------------------------------------------
// The hand-written corpus, on every run.

fn corpus_options() -> [Options; 4] {
    [
        Options::default(),
        Options { top_k: 5, max_seq_len: 16, doc_stride: 4, handle_impossible: true, ..Options::default() },
        Options { top_k: MAX_TOP_K, max_answer_len: 1, max_seq_len: 8, doc_stride: 128, ..Options::default() },
        Options {
            top_k: 20,
            max_answer_len: MAX_ANSWER_LEN,
            max_seq_len: 12,
            doc_stride: 0,
            max_question_len: 1,
            handle_impossible: true,
            max_windows: 0,
            decoding: Decoding::Pipeline,
        },
    ]
}

fn corpus_models() -> Vec<Stub> {
    vec![
        Stub::new(vec![0.0], vec![0.0]),
        Stub::new((0..17).map(|i| i as f32).collect(), (0..13).map(|i| -(i as f32)).collect()),
        Stub::new(vec![f32::MAX, f32::MIN, 0.0], vec![f32::MIN, f32::MAX, -10_000.0, 1e30]),
        Stub::new(vec![f32::MIN_POSITIVE, -1e-45], vec![88.73, -103.98, 5.0]),
    ]
}

fn fail(name: &str, error: TestCaseError) -> ! {
    panic!("corpus case {name:?}: {error}")
}

#[test]
fn corpus_through_the_pipeline() {
    for seed in CORPUS.iter() {
        for options in corpus_options() {
            for mut model in corpus_models() {
                check_pipeline(&seed.question, &seed.context, &options, &BERT, &mut model).unwrap_or_else(|e| fail(&seed.name, e));
            }
        }
    }
}

#[test]
fn corpus_with_misbehaving_models() {
    let options = Options { max_seq_len: 16, doc_stride: 4, ..Options::default() };
    for seed in CORPUS.iter() {
        for fault in [
            Fault::MoreRows,
            Fault::FewerRows,
            Fault::LongerSeq,
            Fault::ShorterSeq,
            Fault::StartShort,
            Fault::EndLong,
            Fault::Empty,
            Fault::Fails,
        ] {
            let mut model = Stub { fault: Some((0, fault)), ..Stub::new(vec![1.0, 2.0], vec![3.0]) };
            check_pipeline(&seed.question, &seed.context, &options, &BERT, &mut model).unwrap_or_else(|e| fail(&seed.name, e));
        }
    }
}

#[test]
fn corpus_every_token_span() {
    // Every (start, end) pair of every window, out-of-range ones included, as one list.
    // Seeds whose question the guest refuses (no tokens, over the limit) make no windows and
    // are skipped; any other refusal fails, and at least 7 seeds in 8 must run.
    let options = Options { max_seq_len: 16, doc_stride: 4, ..Options::default() };
    let mut ran = 0;
    for seed in CORPUS.iter() {
        let ws = match encode_windows(&tiny_tokenizer(), &seed.question, &seed.context, &options) {
            Ok(encodings) => encodings.into_iter().map(Window::new).collect::<Vec<_>>(),
            Err(QaError::InvalidInput(why)) if why.starts_with("question ") => continue,
            Err(other) => fail(&seed.name, TestCaseError::fail(format!("no windows: {other:?}"))),
        };
        ran += 1;
        let spans: Vec<(&Window, TokenSpan)> = ws
            .iter()
            .flat_map(|w| {
                (0..w.len() + 2).flat_map(move |s| (0..w.len() + 2).map(move |e| (w, TokenSpan { start: s, end: e, score: 0.5 })))
            })
            .collect();
        let top_k = spans.len() + 1;
        let answers = collect_answers(&seed.context, spans, Some(0.25), top_k);
        check_answers(&seed.context, &answers, top_k, f64::MAX).unwrap_or_else(|e| fail(&seed.name, e));
    }
    assert!(ran * 8 >= CORPUS.len() * 7, "only {ran} of {} seeds made windows", CORPUS.len());
}

// ---------------------------------------------------------------------------------------------
// The properties.

proptest! {
    // A case a test cannot use (`prop_assume!`) is replaced by a new one; the test fails when
    // more than four are thrown away for each one run.
    #![proptest_config(ProptestConfig { max_global_rejects: ProptestConfig::default().cases.saturating_mul(4), ..ProptestConfig::default() })]

    /// The whole pipeline with a model of the right shape and valid options.
    #[test]
    fn pipeline_answers_are_exact_slices(
        question in question(),
        context in context(),
        options in valid_options(),
        profile in profile(),
        start in prop::collection::vec(logit(), 1..64),
        end in prop::collection::vec(logit(), 1..64),
    ) {
        check_pipeline(&question, &context, &options, &profile, &mut Stub::new(start, end))?;
    }

    /// Logits of the wrong shape (or a failing model) on any one call are an `Inference`
    /// error, never a panic or a silent answer.
    #[test]
    fn misshapen_logits_are_inference_errors(
        question in question(),
        context in context(),
        options in valid_options(),
        start in prop::collection::vec(logit(), 1..16),
        end in prop::collection::vec(logit(), 1..16),
        call in prop_oneof![3 => Just(0usize), 1 => 0usize..4],
        fault in fault(),
    ) {
        let mut model = Stub { fault: Some((call, fault)), ..Stub::new(start, end) };
        check_pipeline(&question, &context, &options, &BERT, &mut model)?;
    }

    /// NaN or +inf logits (a broken or overflowing model) are an `Inference` error, never
    /// answers scored NaN; -inf logits are a probability of zero.
    #[test]
    fn non_finite_logits_are_inference_errors(
        question in question(),
        context in context(),
        options in valid_options(),
        start in prop::collection::vec(non_finite_logit(), 1..8),
        end in prop::collection::vec(non_finite_logit(), 1..8),
    ) {
        check_pipeline(&question, &context, &options, &BERT, &mut Stub::new(start, end))?;
    }

    /// Options out of range are refused before anything else happens.
    #[test]
    fn invalid_options_are_invalid_options(
        question in question(),
        context in context(),
        options in invalid_options(),
    ) {
        let mut model = Stub::new(vec![0.0], vec![0.0]);
        let tok = tiny_tokenizer();
        let result = answer(&tok, &BERT, &mut model, &question, &context, &options);
        prop_assert!(matches!(result, Err(QaError::InvalidOption(_))), "{options:?} gave {result:?}");
        prop_assert_eq!(model.calls, 0);
    }

    /// One window's scoring on its own: arbitrary lengths (logits longer or shorter than the
    /// mask), masks, classifier positions (also past the end), `top_k` and `max_answer_len`.
    #[test]
    fn score_window_spans_are_valid_probabilities(
        (start, end, in_context) in (0usize..40).prop_flat_map(|n| (
            prop::collection::vec(logit(), n..=n + 2),
            prop::collection::vec(logit(), n..=n + 2),
            prop::collection::vec(any::<bool>(), n..=n + 2),
        )),
        cls_index in prop::option::of(0usize..44),
        top_k in 0usize..80,
        max_answer_len in 0usize..20,
    ) {
        let scored = score_window(&start, &end, &in_context, cls_index, top_k, max_answer_len);
        let n = in_context.len().min(start.len()).min(end.len());
        let valid = |s: usize, e: usize| s <= e && e < n && in_context[s] && in_context[e] && e - s < max_answer_len;
        let candidates = (0..n).flat_map(|s| (s..n).map(move |e| (s, e))).filter(|&(s, e)| valid(s, e)).count();
        prop_assert_eq!(scored.spans.len(), candidates.min(top_k));
        for span in &scored.spans {
            prop_assert!(valid(span.start, span.end), "{span:?} is not a valid span of {n} tokens");
            prop_assert!(span.score.is_finite() && (0.0..=1.0).contains(&span.score), "{span:?}");
        }
        prop_assert!(scored.spans.windows(2).all(|w| w[0].score >= w[1].score));
        let total: f64 = scored.spans.iter().map(|s| s.score).sum();
        prop_assert!(total <= 1.0 + 1e-4, "spans sum to {total}");
        prop_assert_eq!(scored.null_score.is_some(), cls_index.is_some_and(|c| c < n));
        if let Some(null) = scored.null_score {
            prop_assert!(null.is_finite() && (0.0..=1.0).contains(&null), "null score {null}");
            prop_assert!(total + f64::from(null) <= 1.0 + 1e-4, "spans and null sum to {}", total + f64::from(null));
        }
    }

    /// Offset mapping on its own: arbitrary token spans (out of range, reversed, on special
    /// tokens) of real windows, arbitrary finite scores and null scores.
    #[test]
    fn collect_answers_are_exact_slices(
        question in question(),
        context in context(),
        options in valid_options(),
        picks in prop::collection::vec((any::<prop::sample::Index>(), 0usize..72, 0usize..72, logit()), 0..40),
        null_score in prop::option::of(prop_oneof![0.0f64..=1.0, logit().prop_map(f64::from)]),
        top_k in 0usize..50,
    ) {
        // Options that refuse this question make no windows: proptest draws another case
        // instead, and fails the test when too many are refused (`max_global_rejects`).
        let ws = windows(&question, &context, &options);
        prop_assume!(ws.is_some(), "no windows for these options");
        let ws = ws.unwrap_or_default();
        let spans = picks.iter().map(|(w, start, end, score)| (&ws[w.index(ws.len())], TokenSpan { start: *start, end: *end, score: f64::from(*score) }));
        let answers = collect_answers(&context, spans, null_score, top_k);
        // Arbitrary finite scores are summed; any f32 sum of 40 fits an f64.
        let chars: Vec<char> = context.chars().collect();
        prop_assert!(answers.len() <= top_k);
        for a in &answers {
            prop_assert!(a.start <= a.end && a.end <= chars.len(), "{a:?} out of 0..={}", chars.len());
            prop_assert_eq!(&a.text, &chars[a.start..a.end].iter().collect::<String>());
            prop_assert!(a.score.is_finite());
        }
        prop_assert!(answers.windows(2).all(|w| w[0].score >= w[1].score), "not sorted: {answers:?}");
    }
}
