//! Speech synthesis with two command-line engines whose voices may train a shipped model:
//! `espeak-ng` (Debian package `espeak-ng`, GPL-3 engine and voice data) and SVOX Pico's
//! `pico2wave` (Debian `libttspico-utils`, Apache-2.0). A voice is an espeak-ng voice name
//! (`en-gb`, `fr-fr+f3`) or `pico:LANG` (`pico:en-US`, `pico:fr-FR`).
//!
//! Each utterance is one `espeak-ng -v VOICE -s SPEED -p PITCH -w TMP.wav TEXT` run, or one
//! `pico2wave -l LANG -w TMP.wav MARKUP` run with the speed and pitch as Pico's `<speed>` and
//! `<pitch>` markup (percent of its defaults: 175 wpm and espeak-ng's pitch 50 map to 100), then
//! conditioned to 16 kHz mono with `tolk_models::audio::condition::to_mono_16k` (the
//! band-limited FFT resampler) and written as 16-bit PCM WAV. Jobs run on a bounded pool of
//! worker threads, each waiting on one synthesizer process at a time.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use tolk_models::audio::{self, wav};

/// One utterance to synthesize.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthJob {
    pub text: String,
    /// espeak-ng voice, optionally with a variant (`en-gb`, `fr-fr+f3`), or `pico:LANG`.
    pub voice: String,
    /// Words per minute (`-s`).
    pub speed: u32,
    /// Pitch 0..=99 (`-p`).
    pub pitch: u32,
    /// Output WAV (16 kHz mono 16-bit).
    pub out: PathBuf,
}

impl SynthJob {
    /// `en-gb+f3 s160 p45`: the settings as one manifest field.
    pub fn settings(&self) -> String {
        format!("{} s{} p{}", self.voice, self.speed, self.pitch)
    }
}

/// Synthesis errors; each names the command that failed.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("cannot run `{command}`: {source} (install the Debian package {package})")]
    Spawn {
        command: String,
        package: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error(
        "espeak-ng voice {voice:?} is not installed (see `{command}` and `{command}=variant`)"
    )]
    UnknownVoice { voice: String, command: String },
    #[error("SVOX Pico has no voice {voice:?} (it speaks {})", PICO_LANGUAGES.map(|l| format!("pico:{l}")).join(", "))]
    UnknownPicoVoice { voice: String },
    #[error("`{command}` produced no audio")]
    Empty { command: String },
    #[error("`{command}`: {source}")]
    Audio {
        command: String,
        #[source]
        source: audio::AudioError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The languages of Debian's `libttspico-data`.
pub const PICO_LANGUAGES: [&str; 6] = ["en-US", "en-GB", "fr-FR", "de-DE", "es-ES", "it-IT"];

/// The engine of a voice name and the name within that engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Voice<'a> {
    Espeak(&'a str),
    Pico(&'a str),
}

impl<'a> Voice<'a> {
    pub fn parse(name: &'a str) -> Self {
        match name.strip_prefix("pico:") {
            Some(lang) => Self::Pico(lang),
            None => Self::Espeak(name),
        }
    }
}

/// The synthesizer programs and how to call them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synthesizers {
    /// The espeak-ng program.
    pub espeak: PathBuf,
    /// SVOX Pico's `pico2wave`.
    pub pico: PathBuf,
}

impl Default for Synthesizers {
    fn default() -> Self {
        Self {
            espeak: PathBuf::from("espeak-ng"),
            pico: PathBuf::from("pico2wave"),
        }
    }
}

/// Pico's markup for `text` at espeak-ng's `speed` (wpm) and `pitch` (0..=99).
fn pico_markup(text: &str, speed: u32, pitch: u32) -> String {
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let speed = (100.0 * speed as f64 / 175.0).round() as u32;
    let pitch = 50 + pitch;
    format!("<speed level='{speed}'><pitch level='{pitch}'>{escaped}</pitch></speed>")
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_+./=:".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

impl Synthesizers {
    fn command_line(program: &Path, args: &[String]) -> String {
        std::iter::once(program.display().to_string())
            .chain(args.iter().cloned())
            .map(|a| quote(&a))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs `program`; returns its standard output.
    fn run_program(
        program: &Path,
        package: &'static str,
        args: &[String],
    ) -> Result<String, SynthError> {
        let command = Self::command_line(program, args);
        let out = Command::new(program)
            .args(args)
            .output()
            .map_err(|source| SynthError::Spawn {
                command: command.clone(),
                package,
                source,
            })?;
        if !out.status.success() {
            return Err(SynthError::Failed {
                command,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs espeak-ng.
    fn run(&self, args: &[String]) -> Result<String, SynthError> {
        Self::run_program(&self.espeak, "espeak-ng", args)
    }

    /// Voice names (language tags and file names, lower case) and variant names that
    /// `espeak-ng --voices` lists. espeak-ng silently falls back to a near voice for a
    /// misspelled one (`en-gb-scotlnd` speaks `en`), so names are checked against these lists.
    pub fn list_voices(&self) -> Result<(BTreeSet<String>, BTreeSet<String>), SynthError> {
        let parse = |listing: String| -> BTreeSet<String> {
            listing
                .lines()
                .skip(1)
                .flat_map(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    let lang = cols.get(1).map(|s| s.to_lowercase());
                    // Columns: Pty, Language, Age/Gender, VoiceName, File, Other languages.
                    let file = cols
                        .get(4)
                        .and_then(|f| f.rsplit('/').next())
                        .map(|s| s.to_lowercase());
                    lang.into_iter().chain(file)
                })
                .collect()
        };
        let voices = parse(self.run(&["--voices".to_string()])?);
        let variants = parse(self.run(&["--voices=variant".to_string()])?);
        Ok((voices, variants))
    }

    /// Synthesizes one job; returns its duration in seconds (16 kHz samples / 16000).
    pub fn synthesize(&self, job: &SynthJob) -> Result<f64, SynthError> {
        let (program, package, tmp, args) = match Voice::parse(&job.voice) {
            Voice::Espeak(voice) => {
                let tmp = job.out.with_extension("espeak.wav");
                let args = vec![
                    "-v".to_string(),
                    voice.to_string(),
                    "-s".to_string(),
                    job.speed.to_string(),
                    "-p".to_string(),
                    job.pitch.to_string(),
                    "-w".to_string(),
                    tmp.display().to_string(),
                    "--".to_string(),
                    job.text.clone(),
                ];
                (&self.espeak, "espeak-ng", tmp, args)
            }
            Voice::Pico(lang) => {
                if !PICO_LANGUAGES.contains(&lang) {
                    return Err(SynthError::UnknownPicoVoice {
                        voice: job.voice.clone(),
                    });
                }
                // pico2wave wants a name ending in .wav.
                let tmp = job.out.with_extension("pico.wav");
                let args = vec![
                    "-l".to_string(),
                    lang.to_string(),
                    "-w".to_string(),
                    tmp.display().to_string(),
                    "--".to_string(),
                    pico_markup(&job.text, job.speed, job.pitch),
                ];
                (&self.pico, "libttspico-utils", tmp, args)
            }
        };
        let command = Self::command_line(program, &args);
        Self::run_program(program, package, &args)?;
        let audio_err = |source| SynthError::Audio {
            command: command.clone(),
            source,
        };
        let raw = wav::read_wav(&tmp).map_err(audio_err)?;
        std::fs::remove_file(&tmp).map_err(|source| SynthError::Io {
            path: tmp.clone(),
            source,
        })?;
        if raw.samples.is_empty() {
            return Err(SynthError::Empty { command });
        }
        let (mono, _) = audio::condition::to_mono_16k(&raw.samples, raw.sample_rate, raw.channels)
            .map_err(audio_err)?;
        wav::write_wav(
            &job.out,
            &mono,
            audio::SAMPLE_RATE,
            1,
            wav::WavFormat::Pcm16,
        )
        .map_err(audio_err)?;
        Ok(mono.len() as f64 / audio::SAMPLE_RATE as f64)
    }

    /// Checks that the program runs and that every voice exists, by synthesizing a short word
    /// with each into `scratch` (a folder).
    pub fn check_voices(&self, voices: &[String], scratch: &Path) -> Result<(), SynthError> {
        self.run(&["--version".to_string()])?;
        let (known, variants) = self.list_voices()?;
        for v in voices {
            let v = match Voice::parse(v) {
                Voice::Espeak(name) => name,
                Voice::Pico(lang) if PICO_LANGUAGES.contains(&lang) => continue,
                Voice::Pico(_) => return Err(SynthError::UnknownPicoVoice { voice: v.clone() }),
            };
            let (base, variant) = match v.split_once('+') {
                Some((b, var)) => (b, Some(var)),
                None => (v, None),
            };
            let listed = known.contains(&base.to_lowercase())
                && variant.is_none_or(|var| variants.contains(&var.to_lowercase()));
            if !listed {
                return Err(SynthError::UnknownVoice {
                    voice: v.to_string(),
                    command: Self::command_line(&self.espeak, &["--voices".to_string()]),
                });
            }
        }
        for (i, v) in voices.iter().enumerate() {
            let job = SynthJob {
                text: "ok".into(),
                voice: v.clone(),
                speed: 175,
                pitch: 50,
                out: scratch.join(format!("voice-check-{i}.wav")),
            };
            self.synthesize(&job)?;
            std::fs::remove_file(&job.out).map_err(|source| SynthError::Io {
                path: job.out.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Runs `jobs` on at most `workers` threads (each with one synthesizer process at a time) and
    /// returns the durations in job order. Stops at the first failure and returns it.
    pub fn synthesize_all(
        &self,
        jobs: &[SynthJob],
        workers: usize,
    ) -> Result<Vec<f64>, SynthError> {
        let workers = workers.clamp(1, jobs.len().max(1));
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let done = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<f64>>> = Mutex::new(vec![None; jobs.len()]);
        let first_error: Mutex<Option<SynthError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { return };
                    match self.synthesize(job) {
                        Ok(d) => {
                            results.lock().expect("results lock")[i] = Some(d);
                            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                            if n.is_multiple_of(500) || n == jobs.len() {
                                tracing::info!(done = n, total = jobs.len(), "synthesized");
                            }
                        }
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            first_error.lock().expect("error lock").get_or_insert(e);
                            return;
                        }
                    }
                });
            }
        });
        if let Some(e) = first_error.into_inner().expect("error lock") {
            return Err(e);
        }
        Ok(results
            .into_inner()
            .expect("results lock")
            .into_iter()
            .map(|d| d.expect("every job ran"))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voices_name_their_engine_and_pico_markup_is_escaped() {
        assert_eq!(Voice::parse("fr-fr+f3"), Voice::Espeak("fr-fr+f3"));
        assert_eq!(Voice::parse("pico:fr-FR"), Voice::Pico("fr-FR"));
        assert_eq!(
            pico_markup("Fish & <chips>", 175, 50),
            "<speed level='100'><pitch level='100'>Fish &amp; &lt;chips&gt;</pitch></speed>"
        );
        assert_eq!(
            pico_markup("x", 140, 30),
            "<speed level='80'><pitch level='80'>x</pitch></speed>"
        );
    }
}
