//! Stage 1: question + context → overlapping windows, byte offsets into the context kept.
//!
//! Guards the two tokenizer traps seen with `tokenizers` 0.22: truncation panics when the
//! stride is not smaller than the room left for the context, and `OnlySecond` fails when the
//! question leaves no room at all. Both are checked here before encoding.

use crate::{Options, QaError};
use tokenizers::{EncodeInput, Encoding, PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// Parses a `tokenizer.json`, switching off padding and truncation the file may carry
/// (windows are cut here, padding happens per batch).
pub fn load_tokenizer(json: &[u8]) -> Result<Tokenizer, QaError> {
    let mut tokenizer = Tokenizer::from_bytes(json).map_err(|e| QaError::ModelInvalid(format!("tokenizer.json does not parse: {e}")))?;
    tokenizer.with_padding(None);
    tokenizer.with_truncation(None).map_err(|e| QaError::ModelInvalid(format!("tokenizer.json: {e}")))?;
    Ok(tokenizer)
}

/// Encodes the pair into windows of at most `options.max_seq_len` tokens that together cover
/// the whole context, consecutive windows sharing up to `options.doc_stride` context tokens.
pub fn encode_windows(tokenizer: &mut Tokenizer, question: &str, context: &str, options: &Options) -> Result<Vec<Encoding>, QaError> {
    let question_tokens =
        tokenizer.encode(question, false).map_err(|e| QaError::InvalidInput(format!("question does not tokenize: {e}")))?.len();
    if question_tokens == 0 {
        return Err(QaError::InvalidInput("question has no tokens".into()));
    }
    if question_tokens > options.max_question_len {
        return Err(QaError::InvalidInput(format!("question is {question_tokens} tokens, the limit is {}", options.max_question_len)));
    }
    let special = tokenizer.get_post_processor().map(|p| p.added_tokens(true)).unwrap_or(0);
    let room = options.max_seq_len.checked_sub(question_tokens + special).filter(|room| *room >= 2).ok_or_else(|| {
        QaError::InvalidInput(format!(
            "max_seq_len {} leaves no room for the context after a {question_tokens}-token question",
            options.max_seq_len
        ))
    })?;
    let stride = options.doc_stride.min(room - 1);
    tokenizer
        .with_truncation(Some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length: options.max_seq_len,
            strategy: TruncationStrategy::OnlySecond,
            stride,
        }))
        .map_err(|e| QaError::InvalidInput(format!("truncation settings: {e}")))?;
    let mut first = tokenizer
        .encode(EncodeInput::Dual(question.into(), context.into()), true)
        .map_err(|e| QaError::InvalidInput(format!("context does not tokenize: {e}")))?;
    let overflowing = first.take_overflowing();
    let mut windows = Vec::with_capacity(1 + overflowing.len());
    windows.push(first);
    windows.extend(overflowing);
    Ok(windows)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny uncased BERT-style tokenizer.json: enough to exercise windows and offsets
    /// without shipping a vocabulary in the unit tests.
    pub(crate) fn tiny_tokenizer() -> Tokenizer {
        let words = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "when", "was", "the", "car", "invented", "?", "in", "1886", "benz", "patented", "it", ".",
            "cafe", "is", "open", "a", "b", "c", "d", "e", "f", "g", "h", "where", "answer", "here", "##s", "東", "京", "😀",
        ];
        let vocab: serde_json::Map<String, serde_json::Value> = words.iter().enumerate().map(|(i, w)| (w.to_string(), i.into())).collect();
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": {"max_length": 128, "strategy": "LongestFirst", "stride": 0},
            "padding": {"strategy": {"Fixed": 128}, "direction": "Right", "pad_to_multiple_of": null,
                        "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
            "added_tokens": [],
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                           "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
            "decoder": null,
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 100, "vocab": vocab}
        });
        // Padding and truncation in the file (as in many published tokenizers) are switched off.
        load_tokenizer(json.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn long_context_is_covered_by_overlapping_windows() {
        let mut tok = tiny_tokenizer();
        let context = "a b c d e f g h ".repeat(10);
        let options = Options { max_seq_len: 16, doc_stride: 4, ..Options::default() };
        let windows = encode_windows(&mut tok, "where", &context, &options).unwrap();
        assert!(windows.len() > 1);
        assert!(windows.iter().all(|w| w.len() <= 16));
        // The last context token of the input is in the last window.
        let last = windows.last().unwrap();
        let last_ctx = (0..last.len()).rev().find(|&i| last.token_to_sequence(i) == Some(1)).unwrap();
        assert_eq!(last.get_offsets()[last_ctx].1, context.trim_end().len());
    }

    #[test]
    fn stride_larger_than_room_is_clamped_not_a_panic() {
        let mut tok = tiny_tokenizer();
        let options = Options { max_seq_len: 8, doc_stride: 128, ..Options::default() };
        let windows = encode_windows(&mut tok, "when was", "a b c d e f g h", &options).unwrap();
        assert!(windows.len() >= 2);
    }

    #[test]
    fn question_that_fills_the_window_is_refused() {
        let mut tok = tiny_tokenizer();
        let options = Options { max_seq_len: 8, ..Options::default() };
        let err = encode_windows(&mut tok, "a b c d e f", "g h", &options).unwrap_err();
        assert!(matches!(err, QaError::InvalidInput(m) if m.contains("no room")));
    }

    #[test]
    fn overlong_question_is_refused_with_its_length() {
        let mut tok = tiny_tokenizer();
        let options = Options { max_question_len: 3, ..Options::default() };
        let err = encode_windows(&mut tok, "a b c d", "e", &options).unwrap_err();
        assert_eq!(err, QaError::InvalidInput("question is 4 tokens, the limit is 3".into()));
    }

    #[test]
    fn broken_tokenizer_json_is_a_model_error() {
        let err = load_tokenizer(b"{not json").unwrap_err();
        assert!(matches!(err, QaError::ModelInvalid(_)));
    }
}
