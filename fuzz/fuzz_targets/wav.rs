//! WAV files (`tolk translate`, file sources, training corpora).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tolk_models::audio::wav::read_wav_from;

fuzz_target!(|data: &[u8]| {
    if let Ok(w) = read_wav_from(std::io::Cursor::new(data), "fuzz.wav") {
        assert!(w.sample_rate > 0 && w.channels > 0);
        assert_eq!(w.samples.len() % w.channels as usize, 0);
    }
});
