//! The stages in order: tokenize → window → infer → score → extract.

use crate::decode::{Placed, Ranked, strategy};
use crate::extract::collect_answers;
use crate::infer::QaModel;
use crate::score::{WindowScores, score_window};
use crate::tokenize::QaTokenizer;
use crate::tokenize::{Question, cut_windows, encode_context, encode_question, min_tokens};
use crate::window::{Batch, Window};
use crate::{Answered, Options, QaError, Timings};
use std::time::Instant;

/// Windows per inference call: all windows of a short context go in one batch, long contexts
/// in several, so activation memory stays bounded (attention alone is
/// rows × heads × seq² floats per layer).
pub const MAX_BATCH_ROWS: usize = 2;

/// Padded tokens per inference call under the `document` decoding. ONNX Runtime's arena grows
/// to the largest call (attention alone is rows × heads × seq² floats a layer): 512 tokens
/// against 768 (two full windows) took the peak RSS at 100 KB from 166 to 137 MiB at the same
/// speed (`bench/guest_ab.py`, 12 rounds); 384 saved 25 MiB but was 1.5× slower.
pub const DOCUMENT_BATCH_TOKENS: usize = 512;

/// Largest values the guest accepts; the host enforces its own (smaller) request limits.
pub const MAX_TOP_K: usize = 100;
pub const MAX_ANSWER_LEN: usize = 512;
pub const MAX_SEQ_LEN: usize = 4096;

impl Options {
    pub fn validate(&self) -> Result<(), QaError> {
        let bad = |what: &str| Err(QaError::InvalidOption(what.to_string()));
        if !(1..=MAX_TOP_K).contains(&self.top_k) {
            return bad(&format!("top_k must be between 1 and {MAX_TOP_K}"));
        }
        if !(1..=MAX_ANSWER_LEN).contains(&self.max_answer_len) {
            return bad(&format!("max_answer_len must be between 1 and {MAX_ANSWER_LEN}"));
        }
        if !(8..=MAX_SEQ_LEN).contains(&self.max_seq_len) {
            return bad(&format!("max_seq_len must be between 8 and {MAX_SEQ_LEN}"));
        }
        if self.max_question_len == 0 {
            return bad("max_question_len must be at least 1");
        }
        Ok(())
    }
}

/// What the pipeline needs to know about a model beyond its tokenizer, read from its
/// `config.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelProfile {
    pub pad_id: u32,
    /// Whether the graph takes `token_type_ids` (BERT does; DistilBERT and RoBERTa do not).
    pub token_type_ids: bool,
    /// Longest sequence the position embeddings cover.
    pub max_positions: Option<usize>,
    /// Whether the graph takes its ids as float32 (`"qa_input_dtype": "float32"` in
    /// config.json, written by `tools/train-qa/f32_inputs.py` for runtimes whose ONNX backend
    /// only accepts f32 tensors, such as the stock wasmtime CLI's).
    pub f32_inputs: bool,
}

impl ModelProfile {
    pub fn from_config_json(json: &[u8]) -> Result<Self, QaError> {
        let config: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| QaError::ModelInvalid(format!("config.json does not parse: {e}")))?;
        let number = |key: &str| config.get(key).and_then(serde_json::Value::as_u64);
        Ok(Self {
            pad_id: number("pad_token_id").and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
            token_type_ids: number("type_vocab_size").is_some_and(|n| n >= 2),
            max_positions: number("max_position_embeddings").and_then(|v| usize::try_from(v).ok()),
            f32_inputs: config.get("qa_input_dtype").and_then(serde_json::Value::as_str) == Some("float32"),
        })
    }
}

/// Answers `question` from `context`: up to `options.top_k` answers, best first.
pub fn answer(
    tokenizer: &QaTokenizer,
    profile: &ModelProfile,
    model: &mut dyn QaModel,
    question: &str,
    context: &str,
    options: &Options,
) -> Result<Answered, QaError> {
    let mut results = answer_many(tokenizer, profile, model, &[question], context, options)?;
    results.pop().unwrap_or_else(|| Err(QaError::Inference("no result for the question".into())))
}

/// Answers each of `questions` from the one `context`, in order: the context is tokenized
/// once, and the model runs in one instance for all. Each question's windows are batched on
/// their own, exactly as when it is asked alone: with a dynamically quantized (int8) model,
/// activations are quantized with ranges taken over the whole batch, so windows of other
/// questions in the same call would change this question's scores (measured on the shipped
/// model: 0.273 against 0.203 alone for the same span). A question's own problem
/// (empty, too long, no room for the stride) fails only its entry; what fails them all (the
/// options, the context, the window budget, inference) is the outer error.
pub fn answer_many(
    tokenizer: &QaTokenizer,
    profile: &ModelProfile,
    model: &mut dyn QaModel,
    questions: &[&str],
    context: &str,
    options: &Options,
) -> Result<Vec<Result<Answered, QaError>>, QaError> {
    let started = Instant::now();
    let (options, prepared) = windows_many(tokenizer, profile, questions, context, options)?;
    let tokenize_us = micros(started);

    // Each question's windows cut into its own inference batches; a window is known by its
    // question and its place in the context.
    let batches: Vec<Vec<Placed>> = prepared
        .iter()
        .enumerate()
        .flat_map(|(q, windows)| {
            let windows: Vec<Placed> = windows.iter().flatten().enumerate().map(|(i, w)| (q, i, w)).collect();
            strategy(options.decoding).batches(windows, &options)
        })
        .collect();
    // The reference keeps more candidates per window than it returns, since merging and
    // word alignment can fold several spans into one answer.
    let per_window = options.top_k * 2 + 10;
    // Each window's scores in its place in the context, whatever order the calls took: ties
    // between equal scores go to the earlier window, as in the reference.
    let mut scored_windows: Vec<Vec<Option<(&Window, WindowScores)>>> =
        prepared.iter().map(|windows| windows.as_ref().map_or_else(|_| Vec::new(), |w| w.iter().map(|_| None).collect())).collect();
    let (mut inference_us, mut decode_us) = (vec![0u64; questions.len()], vec![0u64; questions.len()]);
    for chunk in &batches {
        let started = Instant::now();
        let windows: Vec<&Window> = chunk.iter().map(|&(_, _, w)| w).collect();
        let batch = Batch::from_windows(&windows, profile.pad_id);
        let logits = model.infer(&batch)?;
        logits.check(&batch)?;
        let share = micros(started) / chunk.len() as u64;
        for (row, &(q, place, window)) in chunk.iter().enumerate() {
            let started = Instant::now();
            inference_us[q] += share;
            let (start, end) = logits.row(row);
            let scored = score_window(start, end, &window.in_context, window.cls_index, per_window, options.max_answer_len);
            scored_windows[q][place] = Some((window, scored));
            decode_us[q] += micros(started);
        }
    }

    let results = prepared
        .iter()
        .enumerate()
        .map(|(q, windows)| {
            let windows = windows.as_ref().map_err(Clone::clone)?;
            let started = Instant::now();
            let scored = std::mem::take(&mut scored_windows[q]).into_iter().flatten().collect();
            let Ranked { spans, null_score, shares_of } = strategy(options.decoding).rank(scored);
            let null_score = null_score.filter(|_| options.handle_impossible);
            let mut answers = collect_answers(context, spans, null_score, options.top_k);
            if let Some(total) = shares_of {
                for answer in &mut answers {
                    answer.score /= total;
                }
            }
            let timings = Timings {
                tokenize_us,
                inference_us: inference_us[q],
                decode_us: decode_us[q] + micros(started),
                windows: u32::try_from(windows.len()).unwrap_or(u32::MAX),
            };
            Ok((answers, timings))
        })
        .collect();
    Ok(results)
}

/// Stages 1 and 2 for one question: checks the request, fits `options` to the model, and
/// cuts the pair into windows. The benchmark's bare-inference row starts here.
pub fn windows(
    tokenizer: &QaTokenizer,
    profile: &ModelProfile,
    question: &str,
    context: &str,
    options: &Options,
) -> Result<(Options, Vec<Window>), QaError> {
    let (options, mut prepared) = windows_many(tokenizer, profile, &[question], context, options)?;
    let windows = prepared.pop().unwrap_or_else(|| Err(QaError::InvalidInput("no question".into())))?;
    Ok((options, windows))
}

/// Stages 1 and 2 for several questions over one context, tokenized once. The window budget
/// (`options.max_windows`) counts the windows of all questions; it is checked first against
/// a lower bound from the context's words (a hopeless request is refused before the context
/// is tokenized), then exactly, before any window is built.
#[allow(clippy::type_complexity)]
pub fn windows_many(
    tokenizer: &QaTokenizer,
    profile: &ModelProfile,
    questions: &[&str],
    context: &str,
    options: &Options,
) -> Result<(Options, Vec<Result<Vec<Window>, QaError>>), QaError> {
    options.validate()?;
    if context.trim().is_empty() {
        return Err(QaError::InvalidInput("context is empty".into()));
    }
    let mut options = *options;
    if let Some(max) = profile.max_positions {
        options.max_seq_len = options.max_seq_len.min(max);
    }
    let encoded: Vec<Result<Question, QaError>> = questions.iter().map(|q| encode_question(tokenizer, q, &options)).collect();
    // The budget counts windows of `max_seq_len` tokens; shorter windows (a paragraph each)
    // count for their share, since inference time follows the tokens. At least this much for
    // a context of at least `tokens` tokens: the pipeline's windows are full but for the
    // last, and every context token is in some window with the question.
    let full = options.max_seq_len.max(1);
    let decoding = strategy(options.decoding);
    let at_least = |tokens: usize| -> usize { encoded.iter().flatten().map(|q| decoding.min_windows(tokens, q.room, &options)).sum() };
    let over_budget = |windows: usize, how: &str| {
        (options.max_windows > 0 && windows > options.max_windows).then(|| {
            QaError::TooManyWindows(format!(
                "the context needs {how}{windows} windows of {full} tokens for {} question(s); the limit is {}",
                encoded.iter().flatten().count(),
                options.max_windows
            ))
        })
    };
    if let Some(refused) = over_budget(at_least(min_tokens(context)), "at least ") {
        return Err(refused);
    }
    let context = encode_context(tokenizer, context)?;
    let window_tokens: usize = encoded
        .iter()
        .flatten()
        .flat_map(|q| decoding.window_ranges(&context, q.room, &options).into_iter().map(|r| r.len() + full - q.room))
        .sum();
    if let Some(refused) = over_budget(window_tokens.div_ceil(full), "") {
        return Err(refused);
    }
    let windows = encoded
        .into_iter()
        .map(|question| Ok(cut_windows(tokenizer, &question?, &context, &options)?.into_iter().map(Window::new).collect()))
        .collect();
    Ok((options, windows))
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Decoding;
    use crate::infer::Logits;
    use crate::tokenize::tests::tiny_tokenizer;

    /// A model that puts high start and end logits on one token id, wherever it appears.
    struct Spotlight {
        token: i64,
        calls: usize,
        rows_seen: Vec<usize>,
    }

    impl QaModel for Spotlight {
        fn infer(&mut self, batch: &Batch) -> Result<Logits, QaError> {
            self.calls += 1;
            self.rows_seen.push(batch.rows);
            let logits: Vec<f32> = batch.input_ids.iter().map(|&id| if id == self.token { 10.0 } else { 0.0 }).collect();
            Ok(Logits { rows: batch.rows, seq_len: batch.seq_len, start: logits.clone(), end: logits })
        }
    }

    const BERT_PROFILE: ModelProfile = ModelProfile { pad_id: 0, token_type_ids: true, max_positions: Some(512), f32_inputs: false };

    #[test]
    fn answer_only_in_the_last_window_of_a_long_context_is_found() {
        let tok = tiny_tokenizer();
        let context = format!("{} 1886", "a b c d e f g h ".repeat(40));
        let mut model = Spotlight { token: 11, calls: 0, rows_seen: vec![] }; // "1886"
        let options = Options { max_seq_len: 24, doc_stride: 4, ..Options::default() };
        let (answers, timings) = answer(&tok, &BERT_PROFILE, &mut model, "when", &context, &options).unwrap();
        assert_eq!(answers[0].text, "1886");
        assert_eq!(answers[0].end, context.chars().count());
        assert!(timings.windows > MAX_BATCH_ROWS as u32, "context spans several batches");
        assert!(model.rows_seen.iter().all(|&r| r <= MAX_BATCH_ROWS));
        assert_eq!(model.calls, (timings.windows as usize).div_ceil(MAX_BATCH_ROWS));
    }

    /// A model with a logit for each of a few token ids, the classifier token's logit, and
    /// -100 everywhere else (so that spans of other tokens weigh nothing).
    struct Logit(Vec<(i64, f32)>, f32);

    impl QaModel for Logit {
        fn infer(&mut self, batch: &Batch) -> Result<Logits, QaError> {
            let logit = |(i, &id): (usize, &i64)| match self.0.iter().find(|(wanted, _)| *wanted == id) {
                Some(&(_, logit)) => logit,
                None if i % batch.seq_len == 0 => self.1,
                None => -100.0,
            };
            let logits: Vec<f32> = batch.input_ids.iter().enumerate().map(logit).collect();
            Ok(Logits { rows: batch.rows, seq_len: batch.seq_len, start: logits.clone(), end: logits })
        }
    }

    /// Over a long document, confident answers in different paragraphs keep distinct scores in
    /// the order of their log-odds: each is its share of all the odds ("no answer" included).
    /// As `odds / (1 + odds)`, all three scored 1.0: their windows' "no answer" probability
    /// underflows.
    #[test]
    fn distinct_answers_of_a_long_document_get_distinct_scores_in_order() {
        let tok = tiny_tokenizer();
        let filler = "a b c d e f g h ".repeat(9);
        let context = format!("{filler}1886\n\n{filler}benz\n\n{filler}cafe");
        // "1886" (id 11) 30, "benz" (12) 25, "cafe" (16) 20, the classifier token -60.
        let mut model = Logit(vec![(11, 30.0), (12, 25.0), (16, 20.0)], -60.0);
        let options = Options { top_k: 3, ..Options::default() };
        let (answers, timings) = answer(&tok, &BERT_PROFILE, &mut model, "when", &context, &options).unwrap();
        assert_eq!(timings.windows, 3);
        let texts: Vec<&str> = answers.iter().map(|a| a.text.as_str()).collect();
        assert_eq!(texts, ["1886", "benz", "cafe"]);
        // Log-odds 30 + 30 + 120 = 180, 170, 160 and "no answer" 0: shares of e^180 + e^170 + e^160.
        let total = 1.0 + (-10f64).exp() + (-20f64).exp();
        for (answer, log_odds) in answers.iter().zip([0.0, -10.0, -20.0]) {
            let share = f64::exp(log_odds) / total;
            assert!((answer.score - share).abs() <= 1e-9 * share, "{answer:?}: want {share}");
        }
        assert!(answers[0].score < 1.0 && answers[0].score > answers[1].score && answers[1].score > answers[2].score);
    }

    /// "No answer" is a candidate at log-odds 0: offered (`handle_impossible`) it wins a document
    /// whose every span is less likely than its own window's "no answer", with its share.
    #[test]
    fn no_answer_wins_a_document_whose_spans_are_all_unlikely() {
        let tok = tiny_tokenizer();
        let filler = "a b c d e f g h ".repeat(9);
        let context = format!("{filler}1886\n\n{filler}benz");
        // Log-odds of "1886": 2 - 2 * 3 = -4; of "benz": -6; "no answer": 0.
        let mut model = Logit(vec![(11, 1.0), (12, 0.0)], 3.0);
        let options = Options { top_k: 3, handle_impossible: true, ..Options::default() };
        let (answers, _) = answer(&tok, &BERT_PROFILE, &mut model, "when", &context, &options).unwrap();
        let texts: Vec<&str> = answers.iter().map(|a| a.text.as_str()).collect();
        assert_eq!(texts, ["", "1886", "benz"]);
        let total = 1.0 + (-4f64).exp() + (-6f64).exp();
        assert!((answers[0].score - 1.0 / total).abs() < 1e-9, "{answers:?}");
    }

    #[test]
    fn short_paragraph_windows_share_an_inference_call() {
        let tok = tiny_tokenizer();
        // Six paragraphs of 72 tokens: each its own window (64 tokens or more does not join the next).
        let paragraph = "a b c d e f g h ".repeat(9);
        let context = [paragraph.trim(); 6].join("\n\n") + " 1886";
        let mut model = Spotlight { token: 11, calls: 0, rows_seen: vec![] };
        let (answers, timings) = answer(&tok, &BERT_PROFILE, &mut model, "when", &context, &Options::default()).unwrap();
        assert_eq!(answers[0].text, "1886");
        assert_eq!(timings.windows, 6);
        assert_eq!(model.rows_seen, [6], "six short windows fit the tokens of two full ones: one call");
    }

    /// Every family's answer is the whole word its token covers, in both decodings and over
    /// windows of several lengths: byte-level BPE carries the word's leading space inside the
    /// token ("Ġ1886"), and an offset trimmed twice once cut the answer to "886".
    #[test]
    fn every_tokenizer_family_answers_the_whole_word() {
        let context = format!("{} benz patented it in 1886 .", "a b c d e f g h ".repeat(40));
        for (name, tokenizer) in crate::tokenize::tests::families() {
            let tok = crate::tokenize::QaTokenizer::new(tokenizer).unwrap();
            let ids = tok.encode_sequence(" 1886").unwrap().get_ids().to_vec();
            let token = i64::from(*ids.last().unwrap());
            for (decoding, max_seq_len) in
                [(Decoding::Pipeline, 384), (Decoding::Document, 384), (Decoding::Pipeline, 48), (Decoding::Pipeline, 4096)]
            {
                let mut model = Spotlight { token, calls: 0, rows_seen: vec![] };
                let options = Options { decoding, max_seq_len, doc_stride: 16, ..Options::default() };
                let (answers, timings) = answer(&tok, &BERT_PROFILE, &mut model, "when", &context, &options).unwrap();
                let case = format!("{name}, {decoding:?}, {} window(s)", timings.windows);
                // Metaspace without a whitespace split leaves the space inside the token's
                // offsets (as `tokenizers` gives them, and so the reference pipeline's answer).
                let word = if name.contains("metaspace only") { " 1886" } else { "1886" };
                assert_eq!(answers[0].text, word, "{case}");
                let start = context.find(word).unwrap();
                assert_eq!((answers[0].start, answers[0].end), (start, start + word.len()), "{case}");
            }
        }
    }

    /// A model that records each call's shape, answering as [`Spotlight`].
    struct Shapes(Spotlight, Vec<(usize, usize)>);

    impl QaModel for Shapes {
        fn infer(&mut self, batch: &Batch) -> Result<Logits, QaError> {
            self.1.push((batch.rows, batch.seq_len));
            self.0.infer(batch)
        }
    }

    #[test]
    fn document_windows_are_batched_shortest_first_and_ranked_in_context_order() {
        let tok = tiny_tokenizer();
        let long = "a b c d e f g h ".repeat(35);
        let short = "a b c d e f g h ".repeat(9);
        // Long and short paragraphs alternate; "1886" ends the first long one and the second
        // short one, and scores the same in both.
        let paragraphs = [
            format!("{long}1886"),
            short.trim().into(),
            long.trim().into(),
            format!("{short}1886"),
            long.trim().into(),
            short.trim().into(),
        ];
        let context = paragraphs.join("\n\n");
        let mut model = Shapes(Spotlight { token: 11, calls: 0, rows_seen: vec![] }, vec![]);
        let (answers, timings) = answer(&tok, &BERT_PROFILE, &mut model, "when", &context, &Options::default()).unwrap();
        assert_eq!(timings.windows, 6);
        // "when" and three special tokens: 76 and 77 tokens short, 284 and 285 long. In context
        // order each long window would pad a short one to its length: 3 calls of 2 rows.
        assert_eq!(model.1, [(3, 77), (1, 284), (1, 284), (1, 285)], "the three short windows together, then each long one");
        assert_eq!(answers[0].text, "1886");
        assert_eq!(answers[0].start, context.find("1886").unwrap(), "a tie goes to the earlier window in the context");
    }
    #[test]
    fn windows_are_capped_by_the_model_s_position_embeddings() {
        let tok = tiny_tokenizer();
        let context = format!("{} 1886", "a b c d e f g h ".repeat(40));
        let short_model = ModelProfile { max_positions: Some(20), ..BERT_PROFILE };
        let options = Options { max_seq_len: 64, doc_stride: 4, ..Options::default() };
        for decoding in Decoding::ALL {
            let options = Options { decoding, ..options };
            let (fitted, cut) = windows(&tok, &short_model, "when", &context, &options).unwrap();
            assert_eq!(fitted.max_seq_len, 20, "{decoding:?}");
            assert!(cut.len() > 1, "{decoding:?}");
            assert!(cut.iter().all(|w| w.encoding.len() <= 20), "{decoding:?}: a window longer than the model's positions");
            // A model without the limit keeps the request's window length.
            let (kept, _) = windows(&tok, &BERT_PROFILE, "when", &context, &options).unwrap();
            assert_eq!(kept.max_seq_len, 64, "{decoding:?}");
        }
    }

    #[test]
    fn both_decodings_answer_a_one_window_context_alike() {
        let tok = tiny_tokenizer();
        let context = "benz patented it in 1886. a b c d e f g h";
        let answer_with = |decoding| {
            let mut model = Spotlight { token: 11, calls: 0, rows_seen: vec![] };
            let options = Options { top_k: 3, decoding, ..Options::default() };
            let (answers, timings) = answer(&tok, &BERT_PROFILE, &mut model, "when was it?", context, &options).unwrap();
            assert_eq!(timings.windows, 1);
            answers
        };
        let (document, pipeline) = (answer_with(Decoding::Document), answer_with(Decoding::Pipeline));
        assert_eq!(document[0].text, "1886");
        assert_eq!(document, pipeline, "same texts, spans and scores");
    }

    #[test]
    fn short_context_is_one_inference_call() {
        let tok = tiny_tokenizer();
        let mut model = Spotlight { token: 11, calls: 0, rows_seen: vec![] };
        let (answers, _) =
            answer(&tok, &BERT_PROFILE, &mut model, "when was the car invented?", "benz patented it in 1886.", &Options::default())
                .unwrap();
        assert_eq!(answers[0].text, "1886");
        assert_eq!(model.calls, 1);
    }

    #[test]
    fn a_context_over_the_window_budget_is_refused_before_inference() {
        let tok = tiny_tokenizer();
        let mut model = Spotlight { token: 11, calls: 0, rows_seen: vec![] };
        let context = format!("{} 1886", "a b c d e f g h ".repeat(40));
        let options = Options { max_seq_len: 24, doc_stride: 4, ..Options::default() };
        let (_, timings) = answer(&tok, &BERT_PROFILE, &mut model, "when", &context, &options).unwrap();
        let needed = timings.windows as usize;
        // Words alone show it is hopeless: refused before the context is tokenized.
        let tight = Options { max_windows: needed / 2, ..options };
        let err = answer(&tok, &BERT_PROFILE, &mut model, "when", &context, &tight).unwrap_err();
        assert!(matches!(&err, QaError::TooManyWindows(m) if m.contains("at least")), "{err:?}");
        // Words allow it, tokens do not ("東京" is one word and two tokens).
        let cjk = "東京 ".repeat(40);
        let (_, timings) = answer(&tok, &BERT_PROFILE, &mut model, "when", &cjk, &options).unwrap();
        let just_under = Options { max_windows: timings.windows as usize - 1, ..options };
        let err = answer(&tok, &BERT_PROFILE, &mut model, "when", &cjk, &just_under).unwrap_err();
        assert!(matches!(&err, QaError::TooManyWindows(m) if !m.contains("at least")), "{err:?}");
        let calls = model.calls;
        let exact = Options { max_windows: needed, ..options };
        answer(&tok, &BERT_PROFILE, &mut model, "when", &context, &exact).unwrap();
        assert!(model.calls > calls, "at the budget it runs");
    }

    #[test]
    fn the_window_budget_counts_short_paragraph_windows_by_their_tokens() {
        let tok = tiny_tokenizer();
        let paragraph = "a b c d e f g h ".repeat(9); // 72 tokens
        let context = vec![paragraph; 10].join("\n\n");
        let options = Options { max_seq_len: 128, doc_stride: 32, ..Options::default() };
        let (_, windows) = windows(&tok, &BERT_PROFILE, "when", &context, &options).unwrap();
        assert_eq!(windows.len(), 10, "one window a paragraph");
        // Ten windows of 72 + 4 tokens are 760 tokens: 6 windows' worth of 128.
        let budget = |max_windows| Options { max_windows, ..options };
        assert!(windows_many(&tok, &BERT_PROFILE, &["when"], &context, &budget(6)).is_ok());
        let err = windows_many(&tok, &BERT_PROFILE, &["when"], &context, &budget(5)).unwrap_err();
        assert!(matches!(&err, QaError::TooManyWindows(m) if m.contains("6 windows of 128 tokens")), "{err:?}");
        // The pipeline's overlapping full windows over the same tokens need more.
        let pipeline = Options { decoding: Decoding::Pipeline, ..budget(6) };
        assert!(matches!(windows_many(&tok, &BERT_PROFILE, &["when"], &context, &pipeline), Err(QaError::TooManyWindows(_))));
    }

    #[test]
    fn several_questions_share_one_tokenized_context_and_are_batched_as_alone() {
        let tok = tiny_tokenizer();
        let context = format!("{} 1886", "a b c d e f g h ".repeat(40));
        let options = Options { max_seq_len: 24, doc_stride: 4, ..Options::default() };
        let mut alone = Spotlight { token: 11, calls: 0, rows_seen: vec![] };
        let single = answer(&tok, &BERT_PROFILE, &mut alone, "when", &context, &options).unwrap();
        let mut model = Spotlight { token: 11, calls: 0, rows_seen: vec![] };
        let results = answer_many(&tok, &BERT_PROFILE, &mut model, &["when", " ", "when was", "when"], &context, &options).unwrap();
        assert_eq!(results.len(), 4);
        assert!(matches!(&results[1], Err(QaError::InvalidInput(m)) if m.contains("empty")), "a bad question fails only itself");
        for i in [0, 2, 3] {
            assert_eq!(results[i].as_ref().unwrap().0[0].text, "1886");
        }
        assert_eq!(results[0].as_ref().unwrap().0, single.0, "the same answers as alone");
        let windows: usize = [0, 2, 3].iter().map(|&i| results[i].as_ref().unwrap().1.windows as usize).sum();
        let alone_calls = |i: usize| (results[i].as_ref().unwrap().1.windows as usize).div_ceil(MAX_BATCH_ROWS);
        assert_eq!(model.calls, alone_calls(0) + alone_calls(2) + alone_calls(3), "each question's windows in its own batches");
        // The budget counts the windows of all questions.
        let err =
            answer_many(&tok, &BERT_PROFILE, &mut model, &["when", "when"], &context, &Options { max_windows: windows / 2, ..options });
        assert!(matches!(err, Err(QaError::TooManyWindows(_))));
    }

    #[test]
    fn empty_inputs_and_bad_options_are_refused() {
        let tok = tiny_tokenizer();
        let mut model = Spotlight { token: 11, calls: 0, rows_seen: vec![] };
        let mut ask = |q: &str, c: &str, o: Options| answer(&tok, &BERT_PROFILE, &mut model, q, c, &o).unwrap_err();
        assert!(matches!(ask(" ", "a", Options::default()), QaError::InvalidInput(m) if m.contains("question")));
        assert!(matches!(ask("a", "\n\t", Options::default()), QaError::InvalidInput(m) if m.contains("context")));
        assert!(matches!(ask("a", "b", Options { top_k: 0, ..Options::default() }), QaError::InvalidOption(m) if m.contains("top_k")));
        assert!(matches!(ask("a", "b", Options { max_answer_len: 0, ..Options::default() }), QaError::InvalidOption(_)));
    }

    #[test]
    fn logits_of_the_wrong_shape_are_an_inference_error() {
        struct Truncating;
        impl QaModel for Truncating {
            fn infer(&mut self, batch: &Batch) -> Result<Logits, QaError> {
                Ok(Logits { rows: batch.rows, seq_len: 1, start: vec![0.0; batch.rows], end: vec![0.0; batch.rows] })
            }
        }
        let tok = tiny_tokenizer();
        let err = answer(&tok, &BERT_PROFILE, &mut Truncating, "when", "a b", &Options::default()).unwrap_err();
        assert!(matches!(err, QaError::Inference(m) if m.contains("shape")));
    }

    #[test]
    fn nan_or_infinite_logits_are_an_inference_error() {
        // Found by props::non_finite_logits_are_inference_errors: one NaN (or +inf) logit made
        // every score of its window NaN, answered as a success (JSON `"score": null`).
        struct Poisoned(f32);
        impl QaModel for Poisoned {
            fn infer(&mut self, batch: &Batch) -> Result<Logits, QaError> {
                let mut start = vec![0.0; batch.rows * batch.seq_len];
                start[batch.seq_len - 2] = self.0;
                Ok(Logits { rows: batch.rows, seq_len: batch.seq_len, end: vec![0.0; start.len()], start })
            }
        }
        let tok = tiny_tokenizer();
        for bad in [f32::NAN, f32::INFINITY] {
            let err = answer(&tok, &BERT_PROFILE, &mut Poisoned(bad), "when", "in 1886", &Options::default()).unwrap_err();
            assert!(matches!(err, QaError::Inference(m) if m.contains(&bad.to_string())), "{bad}");
        }
        // -inf is a probability of zero, not an error.
        let (answers, _) = answer(&tok, &BERT_PROFILE, &mut Poisoned(f32::NEG_INFINITY), "when", "in 1886", &Options::default()).unwrap();
        assert!(answers[0].score.is_finite());
    }

    #[test]
    fn profile_reads_type_vocab_and_positions() {
        let bert = ModelProfile::from_config_json(br#"{"type_vocab_size":2,"max_position_embeddings":512,"pad_token_id":0}"#).unwrap();
        assert_eq!(bert, BERT_PROFILE);
        let distil = ModelProfile::from_config_json(br#"{"model_type":"distilbert","max_position_embeddings":512}"#).unwrap();
        assert!(!distil.token_type_ids);
        assert!(matches!(ModelProfile::from_config_json(b"[").unwrap_err(), QaError::ModelInvalid(_)));
        let f32 = ModelProfile::from_config_json(br#"{"type_vocab_size":2,"qa_input_dtype":"float32"}"#).unwrap();
        assert!(f32.f32_inputs);
    }
}
