//! The shared sequence format on the real SmolLM2 vocabulary: extension, reload, round trip.

use tch::Tensor;
use tolk_models::llama::{Llama, LoadOptions};
use tolk_models::prompt::{Lang, PromptFormat, SpecialToken, Task};
use tolk_models::tokenizer::Tokenizer;
use tolk_tests::reference_dir;

#[test]
fn extended_smollm2_vocabulary_round_trips() {
    let dir = reference_dir("smollm2").join("model");
    let mut model = Llama::load(&dir, LoadOptions::default()).unwrap();
    let mut tok = Tokenizer::for_model(&dir, model.config().vocab_size).unwrap();
    let f = PromptFormat::extend(&mut model, &mut tok, 1000).unwrap();
    assert_eq!(f.text_vocab, 49152);
    assert_eq!(f.unit_base, 49152);
    assert_eq!(f.vocab_size() as i64, model.config().vocab_size);
    assert_eq!(model.config().vocab_size, 49152 + 1000 + 9);

    // A saved tokenizer gives back the same format.
    let tmp = tempfile::tempdir().unwrap();
    tok.save(&tmp.path().join("tokenizer.json")).unwrap();
    let again = Tokenizer::from_file(&tmp.path().join("tokenizer.json")).unwrap();
    assert_eq!(PromptFormat::from_tokenizer(&again, 1000).unwrap(), f);
    // A tokenizer that was never extended is a clear error.
    let plain = Tokenizer::for_model(&dir, 49152).unwrap();
    let e = PromptFormat::from_tokenizer(&plain, 1000)
        .unwrap_err()
        .to_string();
    assert!(e.contains("<unit_0>") && e.contains("not extended"), "{e}");

    // Prompt + target of a chain-of-modality example, and the text back from the output.
    let text = "Le train pour Lyon part du quai 3 à 14 h 20.";
    let text_ids = tok.encode(text, false).unwrap();
    let prompt = f
        .prompt(Task::ChainOfModality, Lang::En, Lang::Fr, &[5, 5, 999])
        .unwrap();
    let target = f
        .target(Task::ChainOfModality, &text_ids, &[1, 2, 3])
        .unwrap();
    assert_eq!(*target.last().unwrap(), f.id(SpecialToken::End));
    let parsed = f.parse_output(&target);
    assert_eq!(tok.decode(&parsed.text_ids, true).unwrap(), text);
    assert_eq!(parsed.units, vec![1, 2, 3]);
    // The special tokens render as their names, so logs of sequences stay readable.
    assert_eq!(tok.decode(&prompt[..2], false).unwrap(), "<|com|><|en|>");

    // The extended model scores the whole sequence.
    let seq: Vec<i64> = prompt.iter().chain(&target).map(|&t| t as i64).collect();
    let logits = model
        .forward(&Tensor::from_slice(&seq).view([1, -1]), None)
        .unwrap();
    assert_eq!(logits.size(), [1, seq.len() as i64, 49152 + 1009]);
}
