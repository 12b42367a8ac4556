//! The margin histogram of `tolk-train pairs` (`margins.png`, plotters' bitmap backend, as
//! `crate::toolkit::plot`): one bar per margin bin over every compared utterance, and a red
//! vertical line at delta (pairs right of it are kept).
//!
//! Text needs a TrueType font: DejaVu Sans from Debian's `fonts-dejavu-core` (or the file in
//! `TOLK_PLOT_FONT`). Without one the histogram is drawn without labels.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::toolkit::plot::register_font;

/// Bins of the histogram: `(lower edge, count)` over `0..hi` in `n` equal bins, `hi` covering
/// every margin and twice delta.
pub fn histogram(margins: &[f64], delta: f64, n: usize) -> (f64, Vec<(f64, usize)>) {
    let max = margins
        .iter()
        .copied()
        .filter(|m| m.is_finite())
        .fold(0.0f64, f64::max);
    let hi = max.max(2.0 * delta).max(1e-9) * 1.0001;
    let width = hi / n as f64;
    let mut counts = vec![0usize; n];
    for &m in margins.iter().filter(|m| m.is_finite()) {
        let i = ((m.max(0.0) / width) as usize).min(n - 1);
        counts[i] += 1;
    }
    (
        width,
        counts
            .into_iter()
            .enumerate()
            .map(|(i, c)| (i as f64 * width, c))
            .collect(),
    )
}

/// Why `margins.png` could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("drawing {path}: {message}")]
    Draw { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Rename {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The error of a drawing step on `path` (plotters' errors are generic over the backend).
fn drawing<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> PlotError + '_ {
    move |e| PlotError::Draw {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Draws the histogram of `margins` with the delta line into `path` (through a temporary
/// file, renamed when complete).
pub fn write_margin_plot(
    path: &Path,
    margins: &[f64],
    delta: f64,
    caption: &str,
) -> Result<(), PlotError> {
    let labels = register_font();
    let (width, bins) = histogram(margins, delta, 24);
    let hi = width * bins.len() as f64;
    let top = bins.iter().map(|b| b.1).max().unwrap_or(0).max(1) as f64 * 1.1;
    let tmp = path.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (900, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing(path))?;
        let mut builder = ChartBuilder::on(&root);
        builder.margin(15);
        if labels {
            builder
                .caption(caption, ("sans-serif", 20))
                .x_label_area_size(40)
                .y_label_area_size(50);
        }
        let mut chart = builder
            .build_cartesian_2d(0.0..hi, 0.0..top)
            .map_err(drawing(path))?;
        if labels {
            chart
                .configure_mesh()
                .x_desc("margin (best - worst score, oriented)")
                .y_desc("utterances")
                .draw()
                .map_err(drawing(path))?;
        }
        chart
            .draw_series(bins.iter().map(|&(lo, c)| {
                Rectangle::new([(lo, 0.0), (lo + width, c as f64)], BLUE.mix(0.6).filled())
            }))
            .map_err(drawing(path))?;
        let line = chart
            .draw_series(LineSeries::new(
                [(delta, 0.0), (delta, top)],
                RED.stroke_width(2),
            ))
            .map_err(drawing(path))?;
        if labels {
            line.label(format!("delta = {delta}"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED.stroke_width(2)));
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(drawing(path))?;
        }
        root.present().map_err(drawing(path))?;
    }
    tolk_config::fsutil::commit_file(&tmp, path).map_err(|source| PlotError::Rename {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_cover_every_margin() {
        let (w, bins) = histogram(&[0.0, 0.05, 0.3, 0.3, 1.0], 0.1, 10);
        assert_eq!(bins.len(), 10);
        assert_eq!(bins.iter().map(|b| b.1).sum::<usize>(), 5);
        assert_eq!(bins[0].1, 2);
        assert_eq!(bins[9].1, 1);
        assert!((w * 10.0 - 1.0001).abs() < 1e-9);
        // No margins at all: an empty histogram over 0..2 delta.
        let (w, bins) = histogram(&[], 0.1, 4);
        assert!(bins.iter().all(|b| b.1 == 0) && (w * 4.0 - 0.20002).abs() < 1e-9);
    }
}
