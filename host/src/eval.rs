//! `qa-host eval`: exact match and F1 on a SQuAD v1.1 file, with the official script's
//! answer normalization (lower case, ASCII punctuation removed, the articles a/an/the
//! removed at word boundaries, white space collapsed); each question's score is its best
//! over the gold answers.

use crate::api::QaRequest;
use crate::guest::Decoding;
use crate::service::QaService;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

#[derive(Deserialize)]
struct SquadFile {
    data: Vec<Article>,
}
#[derive(Deserialize)]
struct Article {
    paragraphs: Vec<Paragraph>,
}
#[derive(Deserialize)]
struct Paragraph {
    context: String,
    qas: Vec<Qa>,
}
#[derive(Deserialize)]
struct Qa {
    id: String,
    question: String,
    answers: Vec<Gold>,
}
#[derive(Deserialize)]
struct Gold {
    text: String,
}

/// One question to evaluate.
#[derive(Clone)]
pub struct Question {
    pub id: String,
    pub question: String,
    pub context: Arc<str>,
    pub gold: Vec<String>,
    /// Index of the question's article in the file: a haystack takes other articles only.
    pub article: usize,
}

pub fn load_squad(json: &[u8]) -> Result<Vec<Question>, serde_json::Error> {
    let file: SquadFile = serde_json::from_slice(json)?;
    let mut questions = Vec::new();
    for (article, paragraph) in file.data.into_iter().enumerate().flat_map(|(i, a)| a.paragraphs.into_iter().map(move |p| (i, p))) {
        let context: Arc<str> = paragraph.context.into();
        for qa in paragraph.qas {
            questions.push(Question {
                id: qa.id,
                question: qa.question,
                context: context.clone(),
                gold: qa.answers.into_iter().map(|g| g.text).collect(),
                article,
            });
        }
    }
    Ok(questions)
}

/// `n` questions drawn at random (without replacement, in file order), the same for the same
/// `seed`: a sample that spans articles, unlike the file's first `n`.
pub fn sample(questions: &[Question], n: usize, seed: u64) -> Vec<Question> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut picked = rng.choose_multiple(0..questions.len(), n);
    picked.sort_unstable();
    picked.into_iter().map(|i| questions[i].clone()).collect()
}

/// Each question's paragraph hidden among paragraphs of other articles until the context has
/// at least `bytes` bytes, at a random place: the long-document case, where answers from
/// different windows compete. The distractors come from `pool` (all questions' paragraphs)
/// and are the same for the same `seed`; paragraphs are joined by a blank line.
pub fn in_haystack(questions: &[Question], pool: &[Question], bytes: usize, seed: u64) -> Vec<Question> {
    let mut paragraphs: Vec<(usize, Arc<str>)> = Vec::new();
    for q in pool {
        if paragraphs.last().is_none_or(|(_, p)| !Arc::ptr_eq(p, &q.context)) {
            paragraphs.push((q.article, q.context.clone()));
        }
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    questions
        .iter()
        .map(|q| {
            let mut parts: Vec<&str> = Vec::new();
            let mut len = q.context.len();
            // A pool of one article has no distractors: the question keeps its paragraph.
            let others = paragraphs.iter().filter(|(article, _)| *article != q.article).count();
            while len < bytes && others > 0 {
                let (article, paragraph) = &paragraphs[rng.usize(..paragraphs.len())];
                if *article != q.article {
                    parts.push(paragraph);
                    len += paragraph.len() + 2;
                }
            }
            parts.insert(rng.usize(..=parts.len()), &q.context);
            Question { context: parts.join("\n\n").into(), ..q.clone() }
        })
        .collect()
}

#[derive(Debug, serde::Serialize)]
pub struct EvalReport {
    pub exact_match: f64,
    pub f1: f64,
    /// Standard errors of the two means (sample standard deviation over the square root of the
    /// questions asked): how far a sample's figure may stray from the whole set's by chance.
    pub exact_match_stderr: f64,
    pub f1_stderr: f64,
    pub total: usize,
    pub failed: usize,
    pub seconds: f64,
    pub median_ms: f64,
    pub model: String,
    /// The least context length asked for (`--haystack`; 0: each paragraph alone).
    pub haystack_bytes: usize,
    pub decoding: Decoding,
}

/// Asks every question and scores the answers. `predictions` receives id → answer text, the
/// official script's prediction format.
pub async fn evaluate(
    service: &Arc<QaService>,
    questions: &[Question],
    model: Option<String>,
    decoding: Option<Decoding>,
    predictions: &mut BTreeMap<String, String>,
) -> EvalReport {
    let progress = indicatif::ProgressBar::new(questions.len() as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let (mut em, mut f1, mut failed) = (Vec::with_capacity(questions.len()), Vec::with_capacity(questions.len()), 0);
    let mut latencies = Vec::with_capacity(questions.len());
    let mut model_used = model.clone().unwrap_or_default();
    for q in questions {
        let request = QaRequest { model_type: model.clone(), decoding, ..QaRequest::new(q.question.clone(), q.context.to_string()) };
        let asked = Instant::now();
        let prediction = match service.answer(request).await {
            Ok(response) => {
                model_used = response.model_type;
                response.body.answer
            }
            Err(error) => {
                failed += 1;
                progress.set_message(format!("{}: {}", q.id, error.code()));
                String::new()
            }
        };
        latencies.push(asked.elapsed().as_secs_f64() * 1e3);
        em.push(100.0 * best_over(&q.gold, |g| exact_match(&prediction, g)));
        f1.push(100.0 * best_over(&q.gold, |g| f1_score(&prediction, g)));
        predictions.insert(q.id.clone(), prediction);
        progress.inc(1);
    }
    progress.finish_and_clear();
    latencies.sort_by(f64::total_cmp);
    let ((exact_match, exact_match_stderr), (f1, f1_stderr)) = (mean_and_standard_error(&em), mean_and_standard_error(&f1));
    EvalReport {
        exact_match,
        f1,
        exact_match_stderr,
        f1_stderr,
        total: questions.len(),
        failed,
        seconds: started.elapsed().as_secs_f64(),
        median_ms: latencies.get(latencies.len() / 2).copied().unwrap_or(0.0),
        model: model_used,
        haystack_bytes: 0,
        decoding: decoding.unwrap_or_default(),
    }
}

/// The mean of `scores` and its standard error (sample standard deviation, n - 1, over √n);
/// 0 and 0 for no scores, a standard error of 0 for one.
pub fn mean_and_standard_error(scores: &[f64]) -> (f64, f64) {
    let n = scores.len() as f64;
    if scores.is_empty() {
        return (0.0, 0.0);
    }
    let mean = scores.iter().sum::<f64>() / n;
    if scores.len() == 1 {
        return (mean, 0.0);
    }
    let variance = scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (variance / n).sqrt())
}

fn best_over(gold: &[String], score: impl Fn(&str) -> f64) -> f64 {
    gold.iter().map(|g| score(g)).fold(0.0, f64::max)
}

/// The official SQuAD v1.1 normalization.
pub fn normalize_answer(text: &str) -> String {
    let lowered = text.to_lowercase();
    let no_punct: String = lowered.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    remove_articles(&no_punct).split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `re.sub(r'\b(a|an|the)\b', ' ', text)` with Python's Unicode word characters.
fn remove_articles(text: &str) -> String {
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let boundary_before = !is_word(i.checked_sub(1).map(|j| chars[j])) && is_word(Some(chars[i]));
        let article = ["the", "an", "a"].into_iter().find(|a| {
            let len = a.chars().count();
            boundary_before
                && chars.len() >= i + len
                && chars[i..i + len].iter().copied().eq(a.chars())
                && !is_word(chars.get(i + len).copied())
        });
        match article {
            Some(a) => {
                out.push(' ');
                i += a.len();
            }
            None => {
                out.push(chars[i]);
                i += 1;
            }
        }
    }
    out
}

pub fn exact_match(prediction: &str, gold: &str) -> f64 {
    f64::from(u8::from(normalize_answer(prediction) == normalize_answer(gold)))
}

pub fn f1_score(prediction: &str, gold: &str) -> f64 {
    let predicted = normalize_answer(prediction);
    let expected = normalize_answer(gold);
    let p: Vec<&str> = predicted.split_whitespace().collect();
    let g: Vec<&str> = expected.split_whitespace().collect();
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for t in &g {
        *counts.entry(t).or_default() += 1;
    }
    let mut common = 0;
    for t in &p {
        if let Some(c) = counts.get_mut(t).filter(|c| **c > 0) {
            *c -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / p.len() as f64;
    let recall = common as f64 / g.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_matches_the_official_script() {
        assert_eq!(normalize_answer("The  Eiffel Tower!"), "eiffel tower");
        assert_eq!(normalize_answer("an apple, a pear"), "apple pear");
        assert_eq!(normalize_answer("Theater"), "theater");
        assert_eq!(normalize_answer("“the” end"), "“ ” end");
        assert_eq!(normalize_answer("Ångström_a a_b"), "ångströma ab");
    }

    #[test]
    fn the_standard_error_is_the_sample_deviation_over_the_root_of_n() {
        assert_eq!(mean_and_standard_error(&[]), (0.0, 0.0));
        assert_eq!(mean_and_standard_error(&[40.0]), (40.0, 0.0));
        // Half right: mean 50, sample deviation sqrt(4 * 2500 / 3), over sqrt(4).
        let (mean, se) = mean_and_standard_error(&[100.0, 0.0, 100.0, 0.0]);
        assert_eq!(mean, 50.0);
        assert!((se - (10_000.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-9, "{se}");
        assert_eq!(mean_and_standard_error(&[70.0; 5]), (70.0, 0.0));
    }

    #[test]
    fn f1_counts_token_overlap() {
        assert_eq!(f1_score("the year 1886", "1886"), 2.0 * 0.5 * 1.0 / 1.5);
        assert_eq!(f1_score("1886", "1886"), 1.0);
        assert_eq!(f1_score("", "1886"), 0.0);
        assert_eq!(exact_match("The 1886.", "1886"), 1.0);
    }

    fn two_articles() -> Vec<Question> {
        let json = br#"{"data":[
            {"paragraphs":[{"context":"Benz built the car in 1886.","qas":[{"id":"a","question":"When?","answers":[{"text":"1886"}]}]},
                           {"context":"It had three wheels.","qas":[{"id":"b","question":"Wheels?","answers":[{"text":"three"}]}]}]},
            {"paragraphs":[{"context":"Paris is the capital of France.","qas":[{"id":"c","question":"Capital?","answers":[{"text":"Paris"}]}]}]}]}"#;
        load_squad(json).unwrap()
    }

    #[test]
    fn a_haystack_hides_the_paragraph_among_other_articles_only() {
        let questions = two_articles();
        let long = in_haystack(&questions, &questions, 200, 7);
        assert_eq!(long.len(), 3);
        for (q, hidden) in questions.iter().zip(&long) {
            assert!(hidden.context.len() >= 200, "{}", hidden.context);
            assert_eq!(hidden.context.matches(&*q.context).count(), 1, "own paragraph once: {}", hidden.context);
            let others = if q.article == 0 { "Paris is the capital of France." } else { "Benz built the car in 1886." };
            assert!(hidden.context.contains(others));
            if q.article == 0 {
                assert!(!hidden.context.contains(if q.id == "a" { "three wheels" } else { "1886" }), "same article: {}", hidden.context);
            }
            assert_eq!((hidden.id.as_str(), &hidden.gold), (q.id.as_str(), &q.gold));
        }
        assert_eq!(in_haystack(&questions, &questions, 200, 7)[1].context, long[1].context, "same seed, same haystack");
        assert_eq!(&*in_haystack(&questions, &questions, 0, 7)[2].context, "Paris is the capital of France.");
    }

    #[test]
    fn a_sample_is_reproducible_and_in_file_order() {
        let questions = two_articles();
        let ids = |qs: Vec<Question>| qs.into_iter().map(|q| q.id).collect::<Vec<_>>();
        let picked = ids(sample(&questions, 2, 3));
        assert_eq!(picked.len(), 2);
        assert!(picked.windows(2).all(|w| w[0] < w[1]), "{picked:?}");
        assert_eq!(picked, ids(sample(&questions, 2, 3)));
        assert_eq!(ids(sample(&questions, 9, 3)), ["a", "b", "c"]);
    }

    #[test]
    fn squad_file_flattens_to_questions() {
        let json = br#"{"data":[{"title":"t","paragraphs":[{"context":"c1","qas":[{"id":"1","question":"q","answers":[{"text":"a","answer_start":0}]}]}]}]}"#;
        let questions = load_squad(json).unwrap();
        assert_eq!(questions.len(), 1);
        assert_eq!(&*questions[0].context, "c1");
        assert_eq!(questions[0].gold, ["a"]);
    }
}
