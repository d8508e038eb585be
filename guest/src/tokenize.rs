//! Stage 1: question + context → overlapping windows, byte offsets into the context kept.
//!
//! The context is tokenized once ([`encode_context`]) and every question's windows are cut
//! from it ([`cut_windows`]): exactly what `tokenizers` does for a pair with `only_second`
//! truncation and a stride (the two encodings, the second truncated to the room the question
//! leaves, each piece post-processed with the question), without tokenizing the context
//! again for each question.
//!
//! Guards the two tokenizer traps seen with `tokenizers` 0.22: truncation panics when the
//! stride is not smaller than the room left for the context, and `OnlySecond` fails when the
//! question leaves no room at all. Both are refused here before anything is cut.

use crate::decode::strategy;
use crate::{Options, QaError};
use std::ops::Range;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{Encoding, PostProcessor, Tokenizer};

/// A model's tokenizer, split where windows are cut: `sequences` turns one text into tokens
/// (normalizer, pre-tokenizer, model), `joiner` builds a window from a question and a piece of
/// the context (special tokens, type ids, and, for byte-level BPE, offsets trimmed of the
/// leading space a token carries).
///
/// Kept apart because the post-processor must run exactly once on each token, as it does when
/// `tokenizers` encodes a pair: `Tokenizer::encode` of one sequence already post-processes it,
/// and RoBERTa's post-processor trims offsets each time it runs, so running it again on the
/// window moved every answer's start one character to the right.
#[derive(Clone, Debug)]
pub struct QaTokenizer {
    sequences: Tokenizer,
    joiner: Option<PostProcessorWrapper>,
}

impl QaTokenizer {
    /// Splits `tokenizer`, switching off padding and truncation the file may carry (windows
    /// are cut here, padding happens per batch).
    pub fn new(mut tokenizer: Tokenizer) -> Result<Self, QaError> {
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| QaError::ModelInvalid(format!("tokenizer.json: {e}")))?;
        let joiner = tokenizer.get_post_processor().cloned();
        tokenizer.with_post_processor(None::<PostProcessorWrapper>);
        Ok(Self { sequences: tokenizer, joiner })
    }

    /// One text's tokens with byte offsets into it, before any post-processing.
    pub fn encode_sequence(&self, text: &str) -> tokenizers::Result<Encoding> {
        self.sequences.encode(text, false)
    }

    /// The window `[special] question [special] context [special]`, as the post-processor
    /// builds a pair.
    pub fn join(&self, question: Encoding, context: Encoding) -> tokenizers::Result<Encoding> {
        match &self.joiner {
            Some(joiner) => joiner.process(question, Some(context), true),
            None => <dyn PostProcessor>::default_process(vec![question, context], true)?
                .pop()
                .ok_or_else(|| "the pair joined into no encoding".into()),
        }
    }

    /// Special tokens a window of a pair holds.
    pub fn pair_special_tokens(&self) -> usize {
        self.joiner.as_ref().map_or(0, |joiner| joiner.added_tokens(true))
    }
}

/// Parses a `tokenizer.json` into a [`QaTokenizer`].
pub fn load_tokenizer(json: &[u8]) -> Result<QaTokenizer, QaError> {
    let tokenizer = Tokenizer::from_bytes(json).map_err(|e| QaError::ModelInvalid(format!("tokenizer.json does not parse: {e}")))?;
    QaTokenizer::new(tokenizer)
}

/// The context's tokens, as the second sequence of a pair (type id 1), before windows.
///
/// Rebuilt as the second sequence (type id 1) without sequence ids of its own: left in, each
/// window would mark its context as sequence 0 and 1 at once, and which one a token reports
/// would depend on hash-map order.
pub fn encode_context(tokenizer: &QaTokenizer, context: &str) -> Result<Context, QaError> {
    let encoding = tokenizer.encode_sequence(context).map_err(|e| QaError::InvalidInput(format!("context does not tokenize: {e}")))?;
    let offsets = encoding.get_offsets();
    // The text between each token and the one before it.
    let gaps: Vec<&str> = (1..offsets.len())
        .map(|i| if offsets[i - 1].1 < offsets[i].0 { context.get(offsets[i - 1].1..offsets[i].0).unwrap_or("") } else { "" })
        .collect();
    let blank_line = |gap: &str| gap.matches('\n').nth(1).is_some();
    let has_blank_lines = gaps.iter().any(|gap| blank_line(gap));
    let breaks = |gap: &str| if has_blank_lines { blank_line(gap) } else { gap.contains('\n') };
    let starts = std::iter::once(0).chain((1..offsets.len()).filter(|&i| breaks(gaps[i - 1])));
    let paragraphs = paragraphs(starts.collect(), offsets.len());
    Ok(Context { encoding: slice(&encoding, 0..encoding.len()), paragraphs })
}

/// Paragraphs shorter than this many tokens (headings, short lines) are joined to the next
/// one, so that no window holds only a fragment.
pub const MIN_PARAGRAPH_TOKENS: usize = 64;

/// Token ranges of the paragraphs that start at `starts` (ascending, the first 0) in a context
/// of `n` tokens, short ones joined to the next (the last to the one before).
fn paragraphs(starts: Vec<usize>, n: usize) -> Vec<Range<usize>> {
    let mut joined: Vec<Range<usize>> = Vec::new();
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(n);
        match joined.last_mut() {
            Some(last) if last.len() < MIN_PARAGRAPH_TOKENS => last.end = end,
            _ => joined.push(start..end),
        }
    }
    if joined.len() > 1 && joined.last().is_some_and(|p| p.len() < MIN_PARAGRAPH_TOKENS) {
        let tail = joined.pop().map_or(n, |p| p.end);
        if let Some(last) = joined.last_mut() {
            last.end = tail;
        }
    }
    if joined.is_empty() {
        joined.push(0..n);
    }
    joined
}

/// The context's tokens, as the second sequence of a pair, and its paragraphs.
#[derive(Clone, Debug)]
pub struct Context {
    pub encoding: Encoding,
    /// Token ranges of the paragraphs, in order, together covering every token: split at
    /// blank lines (at line breaks in a text without blank lines), paragraphs under
    /// [`MIN_PARAGRAPH_TOKENS`] tokens joined to the next.
    pub paragraphs: Vec<Range<usize>>,
}

impl Context {
    pub fn len(&self) -> usize {
        self.encoding.len()
    }

    pub fn is_empty(&self) -> bool {
        self.encoding.is_empty()
    }
}

/// Tokens `range` of a context encoding as a sequence of its own (type id 1, no sequence ids).
fn slice(encoding: &Encoding, range: Range<usize>) -> Encoding {
    Encoding::new(
        encoding.get_ids()[range.clone()].to_vec(),
        vec![1; range.len()],
        encoding.get_tokens()[range.clone()].to_vec(),
        encoding.get_word_ids()[range.clone()].to_vec(),
        encoding.get_offsets()[range.clone()].to_vec(),
        encoding.get_special_tokens_mask()[range.clone()].to_vec(),
        encoding.get_attention_mask()[range].to_vec(),
        Vec::new(),
        ahash::AHashMap::new(),
    )
}

/// A question's tokens, and the room its windows leave for the context.
#[derive(Clone, Debug)]
pub struct Question {
    pub encoding: Encoding,
    /// Context tokens per window.
    pub room: usize,
}

/// Tokenizes `question` and checks it against `options`: not empty, within the question
/// limit, leaving room for the context and for `doc_stride`.
pub fn encode_question(tokenizer: &QaTokenizer, question: &str, options: &Options) -> Result<Question, QaError> {
    if question.trim().is_empty() {
        return Err(QaError::InvalidInput("question is empty".into()));
    }
    let encoding = tokenizer.encode_sequence(question).map_err(|e| QaError::InvalidInput(format!("question does not tokenize: {e}")))?;
    let tokens = encoding.len();
    if tokens == 0 {
        return Err(QaError::InvalidInput("question has no tokens".into()));
    }
    if tokens > options.max_question_len {
        return Err(QaError::InvalidInput(format!("question is {tokens} tokens, the limit is {}", options.max_question_len)));
    }
    let special = tokenizer.pair_special_tokens();
    let room = options.max_seq_len.checked_sub(tokens + special).filter(|room| *room >= 2).ok_or_else(|| {
        QaError::InvalidOption(format!(
            "max_seq_len {} leaves no room for the context after a {tokens}-token question",
            options.max_seq_len
        ))
    })?;
    if options.doc_stride >= room {
        return Err(QaError::InvalidOption(format!(
            "doc_stride {} must be smaller than the {room} tokens each window has for the context (max_seq_len {} less a \
             {tokens}-token question and {special} special tokens)",
            options.doc_stride, options.max_seq_len
        )));
    }
    Ok(Question { encoding, room })
}

/// How many windows a context of `tokens` tokens needs at `room` tokens per window, each
/// sharing `stride` tokens with the previous one (as `Encoding::truncate` cuts them).
pub fn window_count(tokens: usize, room: usize, stride: usize) -> usize {
    let step = room.saturating_sub(stride).max(1);
    if tokens <= room { 1 } else { 1 + (tokens - room).div_ceil(step) }
}

/// A lower bound on the tokens a tokenizer makes of `context`, cheap to compute before
/// tokenizing: every run of non-white-space characters holding a letter or digit becomes at
/// least one token (a word, its pieces, or the unknown token).
pub fn min_tokens(context: &str) -> usize {
    context.split_whitespace().filter(|word| word.chars().any(char::is_alphanumeric)).count()
}

/// The question's windows over the context: each is `[special] question [special] piece
/// [special]` as the tokenizer's post-processor builds it, the pieces those of
/// the decoding's [`Strategy::window_ranges`](crate::decode::Strategy::window_ranges).
pub fn cut_windows(tokenizer: &QaTokenizer, question: &Question, context: &Context, options: &Options) -> Result<Vec<Encoding>, QaError> {
    strategy(options.decoding)
        .window_ranges(context, question.room, options)
        .into_iter()
        .map(|range| {
            tokenizer
                .join(question.encoding.clone(), slice(&context.encoding, range))
                .map_err(|e| QaError::InvalidInput(format!("windows cannot be built: {e}")))
        })
        .collect()
}

/// Encodes the pair into windows of at most `options.max_seq_len` tokens that together cover
/// the whole context, consecutive windows sharing `options.doc_stride` context tokens.
pub fn encode_windows(tokenizer: &QaTokenizer, question: &str, context: &str, options: &Options) -> Result<Vec<Encoding>, QaError> {
    let question = encode_question(tokenizer, question, options)?;
    let context = encode_context(tokenizer, context)?;
    cut_windows(tokenizer, &question, &context, options)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::Decoding;

    /// A tiny uncased BERT-style tokenizer.json: enough to exercise windows and offsets
    /// without shipping a vocabulary in the unit tests.
    pub(crate) fn tiny_tokenizer() -> QaTokenizer {
        QaTokenizer::new(tiny_bert()).unwrap()
    }

    /// [`tiny_tokenizer`] as `tokenizers` loads it, the reference for windows.
    fn tiny_bert() -> Tokenizer {
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
        Tokenizer::from_bytes(json.to_string()).unwrap()
    }

    #[test]
    fn long_context_is_covered_by_overlapping_windows() {
        let tok = tiny_tokenizer();
        let context = "a b c d e f g h ".repeat(10);
        let options = Options { max_seq_len: 16, doc_stride: 4, ..Options::default() };
        let windows = encode_windows(&tok, "where", &context, &options).unwrap();
        assert!(windows.len() > 1);
        assert!(windows.iter().all(|w| w.len() <= 16));
        // The last context token of the input is in the last window.
        let last = windows.last().unwrap();
        let last_ctx = (0..last.len()).rev().find(|&i| last.token_to_sequence(i) == Some(1)).unwrap();
        assert_eq!(last.get_offsets()[last_ctx].1, context.trim_end().len());
    }

    #[test]
    fn a_stride_that_leaves_no_room_is_an_invalid_option_not_a_panic() {
        let tok = tiny_tokenizer();
        // 8 tokens less "when was" and 3 special tokens: 3 for the context.
        let options = Options { max_seq_len: 8, doc_stride: 3, ..Options::default() };
        let err = encode_windows(&tok, "when was", "a b c d e f g h", &options).unwrap_err();
        assert!(matches!(&err, QaError::InvalidOption(m) if m.contains("doc_stride 3 must be smaller than the 3 tokens")), "{err:?}");
        let options = Options { doc_stride: 2, ..options };
        assert_eq!(encode_windows(&tok, "when was", "a b c d e f g h", &options).unwrap().len(), 6);
    }

    /// The tiny tokenizer with a template post-processor, as published BERT tokenizers have.
    fn tiny_template_bert() -> Tokenizer {
        let mut json: serde_json::Value = serde_json::from_str(&tiny_bert().to_string(false).unwrap()).unwrap();
        json["post_processor"] = serde_json::json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                               "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}
        });
        Tokenizer::from_bytes(json.to_string()).unwrap()
    }

    /// Cutting windows from the context tokenized once gives exactly what `tokenizers` gives
    /// for the pair with `only_second` truncation and a stride (the reference pipeline's way),
    /// with both kinds of BERT post-processor. Repeated: a bug here once depended on hash-map
    /// order, which changes from map to map.
    #[test]
    fn windows_cut_from_the_context_equal_the_tokenizers_pair_encoding() {
        for tok in (0..12).flat_map(|_| [tiny_bert(), tiny_template_bert()]) {
            // A context without line breaks: both decodings cut the reference's windows.
            windows_equal_pair_encoding(&tok, Decoding::Pipeline);
            windows_equal_pair_encoding(&tok, Decoding::Document);
        }
    }

    /// Every tokenizer family the Hub's QA models use cuts the same windows as `tokenizers`
    /// encoding the pair: the same ids, type ids and, above all, offsets, which the
    /// post-processor of byte-level BPE trims (RoBERTa lost each answer's first character when
    /// it ran twice).
    #[test]
    fn every_tokenizer_family_cuts_the_windows_tokenizers_gives_the_pair() {
        for (name, tok) in families() {
            for decoding in [Decoding::Pipeline, Decoding::Document] {
                eprintln!("{name} {decoding:?}");
                windows_equal_pair_encoding(&tok, decoding);
            }
        }
    }

    /// The shipped model's tokenizer, on a real paragraph, cuts the windows `tokenizers` gives
    /// the pair.
    #[test]
    fn the_shipped_tokenizer_cuts_the_windows_tokenizers_gives_the_pair() {
        let json = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/nlp1/tokenizer.json")).unwrap();
        let shipped = Tokenizer::from_bytes(json).unwrap();
        for decoding in [Decoding::Pipeline, Decoding::Document] {
            windows_equal_pair_encoding(&shipped, decoding);
        }
    }

    /// Words the tiny BPE and Unigram vocabularies hold whole (with and without the
    /// word-start marker), so their tokens carry a leading space as real vocabularies' do.
    const WORDS: [&str; 16] =
        ["when", "was", "the", "car", "invented", "in", "1886", "benz", "patented", "it", "cafe", "is", "open", "where", "answer", "here"];

    /// One tokenizer of each family: WordPiece uncased and cased (BERT, DistilBERT), byte-level
    /// BPE without and with a prefix space (RoBERTa), byte-level BPE with a byte-level
    /// post-processor (GPT-2 style), and Unigram with Metaspace, with the XLM-RoBERTa template
    /// and with the `[CLS]`/`[SEP]` template and type ids (ALBERT, DeBERTa-v3).
    pub(crate) fn families() -> Vec<(&'static str, Tokenizer)> {
        let mut cased: serde_json::Value = serde_json::from_str(&tiny_template_bert().to_string(false).unwrap()).unwrap();
        cased["normalizer"]["lowercase"] = false.into();
        vec![
            ("wordpiece uncased", tiny_bert()),
            ("wordpiece uncased, template", tiny_template_bert()),
            ("wordpiece cased", Tokenizer::from_bytes(cased.to_string()).unwrap()),
            ("byte-level bpe (roberta)", tiny_byte_level_bpe(false, roberta_processing(false))),
            ("byte-level bpe, prefix space (roberta)", tiny_byte_level_bpe(true, roberta_processing(true))),
            (
                "byte-level bpe, byte-level post-processor",
                tiny_byte_level_bpe(
                    false,
                    serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
                ),
            ),
            ("unigram, whitespace split + metaspace, xlm-roberta template", tiny_unigram(["<s>", "</s>"], true)),
            ("unigram, metaspace only, [CLS]/[SEP] template (albert, deberta-v3)", tiny_unigram(["[CLS]", "[SEP]"], false)),
        ]
    }

    fn roberta_processing(add_prefix_space: bool) -> serde_json::Value {
        serde_json::json!({"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0], "trim_offsets": true,
                           "add_prefix_space": add_prefix_space})
    }

    fn special_tokens(tokens: &[&str]) -> serde_json::Value {
        tokens
            .iter()
            .enumerate()
            .map(|(id, token)| {
                serde_json::json!({"id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                                   "normalized": false, "special": true})
            })
            .collect()
    }

    /// Byte-level BPE as RoBERTa's: every byte a token, and merges that make each of [`WORDS`]
    /// one token, with its leading space ("Ġcar") and without.
    fn tiny_byte_level_bpe(add_prefix_space: bool, post_processor: serde_json::Value) -> Tokenizer {
        let specials = ["<s>", "<pad>", "</s>", "<unk>"];
        let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect();
        alphabet.sort_unstable();
        let mut vocab: Vec<String> = specials.iter().map(|s| s.to_string()).chain(alphabet.iter().map(char::to_string)).collect();
        let mut merges: Vec<String> = Vec::new();
        // The words with their leading space first: merges apply in rank order, so "Ġthe" is one
        // token only if its merges rank above those of "the".
        for word in WORDS.iter().map(|w| format!("Ġ{w}")).chain(WORDS.iter().map(|w| w.to_string())) {
            let mut chars = word.chars();
            let mut piece = chars.next().unwrap().to_string();
            for c in chars {
                let merge = format!("{piece} {c}");
                piece.push(c);
                if !merges.contains(&merge) {
                    merges.push(merge);
                    vocab.push(piece.clone());
                }
            }
        }
        let vocab: serde_json::Map<String, serde_json::Value> = vocab.into_iter().enumerate().map(|(i, t)| (t, i.into())).collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": special_tokens(&specials),
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": true, "use_regex": true},
            "post_processor": post_processor,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "", "end_of_word_suffix": "",
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges}
        });
        Tokenizer::from_bytes(json.to_string()).unwrap()
    }

    /// Unigram with Metaspace (SentencePiece) as XLM-RoBERTa's on the Hub (white space split
    /// first, `<s> A </s></s> B </s>`, no type ids) or as ALBERT's and DeBERTa-v3's converted
    /// tokenizers (Metaspace alone, `[CLS] A [SEP] B [SEP]`, type ids 0 and 1).
    fn tiny_unigram([cls, sep]: [&str; 2], xlm_roberta: bool) -> Tokenizer {
        let specials = [cls, "<pad>", sep, "<unk>"];
        let mut vocab: Vec<(String, f64)> = specials.iter().map(|s| (s.to_string(), 0.0)).collect();
        vocab.push(("▁".into(), -3.0));
        vocab.extend(WORDS.iter().flat_map(|w| [(format!("▁{w}"), -1.0), (w.to_string(), -2.0)]));
        vocab.extend("abcdefghijklmnopqrstuvwxyz0123456789.?".chars().map(|c| (c.to_string(), -5.0)));
        let special = |token: &str, type_id: u32| serde_json::json!({"SpecialToken": {"id": token, "type_id": type_id}});
        let sequence = |id: &str, type_id: u32| serde_json::json!({"Sequence": {"id": id, "type_id": type_id}});
        let second = u32::from(!xlm_roberta);
        let mut pair = vec![special(cls, 0), sequence("A", 0), special(sep, 0)];
        if xlm_roberta {
            pair.push(special(sep, 0));
        }
        pair.extend([sequence("B", second), special(sep, second)]);
        let metaspace = serde_json::json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true});
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": special_tokens(&specials),
            "normalizer": null,
            "pre_tokenizer": if xlm_roberta {
                serde_json::json!({"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, metaspace]})
            } else {
                metaspace.clone()
            },
            "post_processor": {"type": "TemplateProcessing",
                "single": [special(cls, 0), sequence("A", 0), special(sep, 0)],
                "pair": pair,
                "special_tokens": {cls: {"id": cls, "ids": [0], "tokens": [cls]}, sep: {"id": sep, "ids": [2], "tokens": [sep]}}},
            "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true},
            "model": {"type": "Unigram", "unk_id": 3, "vocab": vocab, "byte_fallback": false}
        });
        Tokenizer::from_bytes(json.to_string()).unwrap()
    }

    fn windows_equal_pair_encoding(reference: &Tokenizer, decoding: Decoding) {
        use tokenizers::{EncodeInput, TruncationDirection, TruncationParams, TruncationStrategy};
        let tok = &QaTokenizer::new(reference.clone()).unwrap();
        let type_ids_only_on_the_first_window = reference.to_string(false).unwrap().contains(r#""B","type_id":0"#);
        let context = "benz patented it in 1886 . the car was invented in 1886 . a b c d e f g h cafe is open 東京 😀 ".repeat(5);
        // Windows with room for this many context tokens, whatever the family makes of the question.
        let question_tokens = tok.encode_sequence("when was the car invented ?").unwrap().len() + tok.pair_special_tokens();
        for (room, doc_stride) in [(7, 4), (7, 6), (7, 0), (15, 1), (15, 14), (3, 2), (375, 128)] {
            let max_seq_len = question_tokens + room;
            let options = Options { max_seq_len, doc_stride, decoding, ..Options::default() };
            let ours = encode_windows(tok, "when was the car invented ?", &context, &options).unwrap();
            let mut reference = reference.clone();
            reference
                .with_padding(None)
                .with_truncation(Some(TruncationParams {
                    direction: TruncationDirection::Right,
                    max_length: max_seq_len,
                    strategy: TruncationStrategy::OnlySecond,
                    stride: doc_stride,
                }))
                .unwrap();
            let mut first =
                reference.encode(EncodeInput::Dual("when was the car invented ?".into(), context.as_str().into()), true).unwrap();
            let expected: Vec<Encoding> = std::iter::once(first.clone()).chain(first.take_overflowing()).collect();
            assert_eq!(ours.len(), expected.len(), "{max_seq_len}/{doc_stride}");
            for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
                assert_eq!(a.get_ids(), b.get_ids());
                // A template that gives the second sequence type id 0 (XLM-RoBERTa's) sets it on
                // the first window only: `tokenizers` leaves the overflowing windows' context at
                // the type id it was encoded with (1). Such models take no type ids
                // (`type_vocab_size` 1), so only the windows the template reaches are compared.
                if i == 0 || !type_ids_only_on_the_first_window {
                    assert_eq!(a.get_type_ids(), b.get_type_ids(), "window {i}");
                }
                assert_eq!(a.get_offsets(), b.get_offsets());
                assert_eq!(a.get_special_tokens_mask(), b.get_special_tokens_mask());
                assert_eq!(a.get_attention_mask(), b.get_attention_mask());
                assert_eq!(
                    (0..a.len()).map(|i| a.token_to_sequence(i)).collect::<Vec<_>>(),
                    (0..b.len()).map(|i| b.token_to_sequence(i)).collect::<Vec<_>>()
                );
                assert_eq!(
                    (0..a.len()).map(|i| a.token_to_word(i)).collect::<Vec<_>>(),
                    (0..b.len()).map(|i| b.token_to_word(i)).collect::<Vec<_>>()
                );
            }
            let question = encode_question(tok, "when was the car invented ?", &options).unwrap();
            let tokens = encode_context(tok, &context).unwrap().len();
            assert_eq!(window_count(tokens, question.room, doc_stride), expected.len(), "{max_seq_len}/{doc_stride}");
            assert!(min_tokens(&context) <= tokens);
        }
    }

    #[test]
    fn short_paragraphs_join_the_next_and_a_short_tail_the_one_before() {
        assert_eq!(paragraphs(vec![0, 10, 100, 130, 300], 310), [0..100, 100..310]);
        assert_eq!(paragraphs(vec![0, 64, 128], 200), [0..64, 64..128, 128..200]);
        assert_eq!(paragraphs(vec![0], 5), vec![Range { start: 0, end: 5 }]);
        assert_eq!(paragraphs(vec![0], 0), vec![Range { start: 0, end: 0 }]);
    }

    #[test]
    fn paragraphs_split_at_blank_lines_or_else_at_line_breaks() {
        let tok = tiny_tokenizer();
        let line = "a b c d e f g h ".repeat(9); // 72 tokens
        let lengths = |text: &str| encode_context(&tok, text).unwrap().paragraphs.iter().map(Range::len).collect::<Vec<_>>();
        assert_eq!(lengths(&format!("{line}\n{line}\n\n{line}")), [144, 72]);
        assert_eq!(lengths(&format!("{line}\n{line}\n  \n {line}")), [144, 72], "a blank line may hold spaces");
        assert_eq!(lengths(&format!("{line}\n{line}\n{line}")), [72, 72, 72]);
        assert_eq!(lengths(&format!("{line}{line}")), [144]);
        assert_eq!(lengths(&format!("when\n\n{line}\n\ncafe is open")), [76], "a heading and a short tail join their neighbour");
    }

    #[test]
    fn document_windows_hold_one_paragraph_each() {
        let tok = tiny_tokenizer();
        let first = "a b c d e f g h ".repeat(10); // 80 tokens
        let second = "b c ".repeat(100); // 200 tokens
        let context = encode_context(&tok, &format!("{first}\n\n{second}")).unwrap();
        assert_eq!(context.paragraphs, [0..80, 80..280]);
        let options = Options { max_seq_len: 128, doc_stride: 32, ..Options::default() };
        // 128 less "where" and 3 special tokens: 123 context tokens a window.
        assert_eq!(strategy(options.decoding).window_ranges(&context, 123, &options), [0..80, 80..203, 171..280]);
        let pipeline = Options { decoding: Decoding::Pipeline, ..options };
        assert_eq!(strategy(pipeline.decoding).window_ranges(&context, 123, &pipeline), [0..123, 91..214, 182..280]);
        let windows = encode_windows(&tok, "where", &format!("{first}\n\n{second}"), &options).unwrap();
        assert_eq!(windows.len(), 3);
        assert!(windows.iter().all(|w| w.len() <= 128));
    }

    #[test]
    fn windows_cover_every_token_within_the_room() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |below: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % below as u64) as usize
        };
        for _ in 0..5_000 {
            let n = next(300);
            let room = next(100) + 2;
            let stride = next(room);
            let mut starts = vec![0];
            while let Some(&last) = starts.last().filter(|&&s| s < n) {
                starts.push(last + 1 + next(120));
            }
            starts.retain(|&s| s < n.max(1));
            let encoding = Encoding::new(
                vec![0; n],
                vec![1; n],
                vec![String::new(); n],
                vec![None; n],
                vec![(0, 0); n],
                vec![0; n],
                vec![1; n],
                Vec::new(),
                ahash::AHashMap::new(),
            );
            let context = Context { encoding, paragraphs: paragraphs(starts, n) };
            for decoding in [Decoding::Document, Decoding::Pipeline] {
                let options = Options { doc_stride: stride, decoding, ..Options::default() };
                let ranges = strategy(options.decoding).window_ranges(&context, room, &options);
                let case = format!("n {n} room {room} stride {stride} {decoding:?} {:?}: {ranges:?}", context.paragraphs);
                assert_eq!(ranges.first().map(|r| r.start), Some(0), "{case}");
                assert_eq!(ranges.last().map(|r| r.end), Some(n), "{case}");
                assert!(ranges.iter().all(|r| r.len() <= room && (n == 0 || !r.is_empty())), "{case}");
                assert!(ranges.windows(2).all(|w| w[0].start < w[1].start && w[1].start <= w[0].end), "{case}");
                if decoding == Decoding::Pipeline {
                    assert_eq!(ranges.len(), window_count(n, room, stride), "{case}");
                } else {
                    let paragraph_of = |t: usize| context.paragraphs.iter().position(|p| p.contains(&t));
                    assert!(ranges.iter().filter(|r| !r.is_empty()).all(|r| paragraph_of(r.start) == paragraph_of(r.end - 1)), "{case}");
                }
            }
        }
    }

    #[test]
    fn question_that_fills_the_window_is_refused() {
        let tok = tiny_tokenizer();
        let options = Options { max_seq_len: 8, ..Options::default() };
        let err = encode_windows(&tok, "a b c d e f", "g h", &options).unwrap_err();
        assert!(matches!(err, QaError::InvalidOption(m) if m.contains("no room")));
    }

    #[test]
    fn overlong_question_is_refused_with_its_length() {
        let tok = tiny_tokenizer();
        let options = Options { max_question_len: 3, ..Options::default() };
        let err = encode_windows(&tok, "a b c d", "e", &options).unwrap_err();
        assert_eq!(err, QaError::InvalidInput("question is 4 tokens, the limit is 3".into()));
    }

    #[test]
    fn broken_tokenizer_json_is_a_model_error() {
        let err = load_tokenizer(b"{not json").unwrap_err();
        assert!(matches!(err, QaError::ModelInvalid(_)));
    }
}
