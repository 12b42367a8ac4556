//! Training curves as a PNG (plotters, bitmap backend): losses, reward margins, accuracies
//! against the optimizer step.
//!
//! Text needs a TrueType font: DejaVu Sans from Debian's `fonts-dejavu-core` (or the file in
//! `TOLK_PLOT_FONT`). Without one the curves are drawn without labels.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

/// A plot that could not be drawn or written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{path}: drawing the plot: {message}")]
    Draw { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One point of a curve (`loss` is the curve's value, whatever it measures).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct LossPoint {
    pub step: u64,
    pub loss: f64,
}

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers the plot font once; false when none was found (plots are then drawn unlabelled).
pub(crate) fn register_font() -> bool {
    use std::sync::OnceLock;
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let candidates = std::env::var("TOLK_PLOT_FONT")
            .ok()
            .into_iter()
            .chain(FONT_PATHS.iter().map(|s| s.to_string()));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                // plotters keeps a `&'static [u8]`; the font lives for the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// One curve of a plot.
pub struct Curve<'a> {
    pub name: &'a str,
    pub points: &'a [LossPoint],
    /// Mark every point (sparse series such as dev evaluations).
    pub markers: bool,
}

const COLORS: [RGBColor; 4] = [BLUE, RED, GREEN, MAGENTA];

/// Draws a training curve and its dev evaluations (marked points) against the optimizer step.
pub fn write_train_dev_plot(
    path: &Path,
    title: &str,
    y_desc: &str,
    train: &[LossPoint],
    dev: &[LossPoint],
) -> Result<(), PlotError> {
    write_curves(
        path,
        title,
        y_desc,
        &[
            Curve {
                name: "train",
                points: train,
                markers: false,
            },
            Curve {
                name: "dev",
                points: dev,
                markers: true,
            },
        ],
    )
}

/// Draws `curves` (y against the optimizer step) into `path` (written to a temporary file and
/// renamed). Non-finite values are left out of the axis range.
pub fn write_curves(
    path: &Path,
    title: &str,
    y_desc: &str,
    curves: &[Curve<'_>],
) -> Result<(), PlotError> {
    if curves.iter().all(|c| c.points.is_empty()) {
        return Ok(());
    }
    let labels = register_font();
    let tmp = path.with_extension("tmp.png");
    let draw = |e: &dyn std::fmt::Display| PlotError::Draw {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    {
        let root = BitMapBackend::new(&tmp, (900, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw(&e))?;
        let all = curves.iter().flat_map(|c| c.points.iter());
        let max_step = all.clone().map(|p| p.step).max().unwrap_or(1).max(1);
        let finite = all.map(|p| p.loss).filter(|l| l.is_finite());
        let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), l| {
            (a.min(l), b.max(l))
        });
        let (lo, hi) = if lo < hi {
            (lo, hi)
        } else {
            (lo - 1.0, lo + 1.0)
        };
        let pad = (hi - lo) * 0.05;
        let mut builder = ChartBuilder::on(&root);
        builder.margin(15);
        if labels {
            builder
                .caption(title, ("sans-serif", 22))
                .x_label_area_size(40)
                .y_label_area_size(60);
        }
        let y_min = if lo >= 0.0 {
            (lo - pad).max(0.0)
        } else {
            lo - pad
        };
        let mut chart = builder
            .build_cartesian_2d(0u64..max_step, y_min..hi + pad)
            .map_err(|e| draw(&e))?;
        if labels {
            chart
                .configure_mesh()
                .x_desc("optimizer step")
                .y_desc(y_desc)
                .draw()
                .map_err(|e| draw(&e))?;
        }
        for (i, c) in curves.iter().enumerate() {
            if c.points.is_empty() {
                continue;
            }
            let color = COLORS[i % COLORS.len()];
            let pts = c.points.iter().filter(|p| p.loss.is_finite());
            if c.markers {
                chart
                    .draw_series(
                        pts.clone()
                            .map(|p| Circle::new((p.step, p.loss), 4, color.filled())),
                    )
                    .map_err(|e| draw(&e))?;
            }
            let s = chart
                .draw_series(LineSeries::new(
                    pts.map(|p| (p.step, p.loss)),
                    color.stroke_width(2),
                ))
                .map_err(|e| draw(&e))?;
            if labels {
                s.label(c.name).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            }
        }
        if labels {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| draw(&e))?;
        }
        root.present().map_err(|e| draw(&e))?;
    }
    tolk_config::fsutil::commit_file(&tmp, path).map_err(|source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    })
}
