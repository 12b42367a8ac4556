//! A training run's progress: a bar on a terminal, plain lines on stderr otherwise (logs, CI),
//! nothing when asked to be quiet.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Where the progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// A progress bar on the terminal.
    Bar,
    /// `step i/n ...` lines and evaluation lines on stderr.
    Lines,
    /// Nothing.
    Quiet,
}

/// The progress of a run of optimizer steps.
pub struct StepProgress {
    bar: ProgressBar,
    output: Output,
}

impl StepProgress {
    /// `total` optimizer steps, `done` of them already (a resumed run).
    pub fn new(total: u64, done: u64) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self::hidden(Output::Lines);
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} {msg} (eta {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_position(done);
        Self {
            bar,
            output: Output::Bar,
        }
    }

    /// Shows nothing at all.
    pub fn quiet() -> Self {
        Self::hidden(Output::Quiet)
    }

    fn hidden(output: Output) -> Self {
        Self {
            bar: ProgressBar::hidden(),
            output,
        }
    }

    pub fn set_step(&self, step: u64) {
        self.bar.set_position(step);
    }

    /// The running figures: the bar's message, or a `step i/n ...` line without a terminal.
    pub fn figures(&self, step: u64, total: u64, msg: String) {
        if self.output == Output::Lines {
            eprintln!("step {step}/{total} {msg}");
        }
        self.bar.set_message(msg);
    }

    /// The bar's message only (figures updated at every step, too many for lines).
    pub fn message(&self, msg: String) {
        self.bar.set_message(msg);
    }

    /// A line that stays (evaluations), above the bar.
    pub fn line(&self, line: String) {
        match self.output {
            Output::Bar => self.bar.println(line),
            Output::Lines => eprintln!("{line}"),
            Output::Quiet => {}
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
