//! Stage 2: encoded windows → what scoring needs per window, and padded int64 batches for
//! the model.

use tokenizers::Encoding;

/// One window of the question/context pair, as the scorer sees it.
#[derive(Clone, Debug)]
pub struct Window {
    pub encoding: Encoding,
    /// `true` where a token may be part of an answer: context tokens only.
    pub in_context: Vec<bool>,
    /// Position of the classifier token whose start/end probability means "no answer"
    /// (kept out of the mask, as the reference pipeline does), when the window has one.
    pub cls_index: Option<usize>,
}

impl Window {
    pub fn new(encoding: Encoding) -> Self {
        let in_context =
            (0..encoding.len()).map(|i| encoding.token_to_sequence(i) == Some(1) && encoding.get_special_tokens_mask()[i] == 0).collect();
        let cls_index = (encoding.get_special_tokens_mask().first() == Some(&1)).then_some(0);
        Self { encoding, in_context, cls_index }
    }

    pub fn len(&self) -> usize {
        self.encoding.len()
    }

    pub fn is_empty(&self) -> bool {
        self.encoding.is_empty()
    }
}

/// Windows padded to a common length, row-major `[rows, seq_len]`, ready to be tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub rows: usize,
    pub seq_len: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub token_type_ids: Vec<i64>,
}

impl Batch {
    /// Pads with id `pad_id`, attention 0 and type 0: padded positions never reach an answer
    /// because the scorer only looks at the first `window.len()` logits of each row.
    pub fn from_windows(windows: &[&Window], pad_id: u32) -> Self {
        let seq_len = windows.iter().map(|w| w.len()).max().unwrap_or(0);
        let cells = windows.len() * seq_len;
        let mut batch = Batch {
            rows: windows.len(),
            seq_len,
            input_ids: vec![i64::from(pad_id); cells],
            attention_mask: vec![0; cells],
            token_type_ids: vec![0; cells],
        };
        for (row, window) in windows.iter().enumerate() {
            let base = row * seq_len;
            let enc = &window.encoding;
            for (i, ((&id, &ty), &att)) in enc.get_ids().iter().zip(enc.get_type_ids()).zip(enc.get_attention_mask()).enumerate() {
                batch.input_ids[base + i] = i64::from(id);
                batch.token_type_ids[base + i] = i64::from(ty);
                batch.attention_mask[base + i] = i64::from(att);
            }
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Options;
    use crate::tokenize::{encode_windows, tests::tiny_tokenizer};

    #[test]
    fn context_mask_excludes_question_and_special_tokens() {
        let tok = tiny_tokenizer();
        let enc = encode_windows(&tok, "when was", "benz patented it", &Options::default()).unwrap();
        let w = Window::new(enc.into_iter().next().unwrap());
        // [CLS] when was [SEP] benz patented it [SEP]
        assert_eq!(w.in_context, vec![false, false, false, false, true, true, true, false]);
        assert_eq!(w.cls_index, Some(0));
    }

    #[test]
    fn batch_pads_shorter_windows() {
        let tok = tiny_tokenizer();
        let options = Options { max_seq_len: 10, doc_stride: 2, ..Options::default() };
        let windows: Vec<Window> =
            encode_windows(&tok, "when", "a b c d e f g h a b", &options).unwrap().into_iter().map(Window::new).collect();
        let batch = Batch::from_windows(&windows.iter().collect::<Vec<_>>(), 0);
        assert_eq!(batch.rows, windows.len());
        assert_eq!(batch.seq_len, 10);
        let last = windows.last().unwrap().len();
        let row = batch.rows - 1;
        let mask = &batch.attention_mask[row * 10..(row + 1) * 10];
        assert!(mask[..last].iter().all(|&m| m == 1));
        assert!(mask[last..].iter().all(|&m| m == 0));
        assert_eq!(batch.input_ids[row * 10], 2, "rows start with [CLS]");
    }
}
