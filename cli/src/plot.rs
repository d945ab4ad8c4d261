//! Figures (plotters): line charts and heatmaps, written as SVG and optionally PNG.
//!
//! Output goes through a temporary file and a rename, like every result of ntk.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{CliError, CliResult};

/// One line of a line chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points (x, y); non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
    /// Dashed reference curve (theory) instead of data with markers.
    pub dashed: bool,
}

/// A line chart.
#[derive(Clone, Debug, Default)]
pub struct LineChart {
    /// Title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Logarithmic y axis (non-positive values are skipped).
    pub log_y: bool,
    /// Logarithmic x axis.
    pub log_x: bool,
    /// The lines.
    pub series: Vec<Series>,
}

/// A heatmap on a regular grid with an optional overlay curve.
#[derive(Clone, Debug, Default)]
pub struct Heatmap {
    /// Title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Colour bar label.
    pub z_label: String,
    /// Cell centres along x (increasing).
    pub xs: Vec<f64>,
    /// Cell centres along y (increasing).
    pub ys: Vec<f64>,
    /// Values, `z[iy][ix]`; NaN cells are drawn grey.
    pub z: Vec<Vec<f64>>,
    /// Colour range (min, max); `None` uses the data range.
    pub z_range: Option<(f64, f64)>,
    /// Overlay curves (label, points), drawn dashed.
    pub overlays: Vec<(String, Vec<(f64, f64)>)>,
}

const SIZE: (u32, u32) = (900, 640);

fn draw_err<E: std::fmt::Debug>(path: &Path) -> impl Fn(E) -> CliError + '_ {
    move |e| CliError::Runtime(format!("{}: cannot draw figure: {e:?}", path.display()))
}

/// Writes `svg` to `path` (atomically) and, with `png`, a PNG beside it.
fn save(
    path: &Path,
    png: bool,
    draw: impl Fn(DrawingArea<SVGBackend, Shift>) -> CliResult,
    draw_png: impl Fn(DrawingArea<BitMapBackend, Shift>) -> CliResult,
) -> CliResult {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(root)?;
    }
    crate::io::atomic_write(path, |w| w.write_all(svg.as_bytes()))?;
    if png {
        let png_path = path.with_extension("png");
        let tmp = png_path.with_extension("tmp.png");
        {
            let root = BitMapBackend::new(&tmp, SIZE).into_drawing_area();
            draw_png(root)?;
        }
        std::fs::rename(&tmp, &png_path)
            .map_err(|e| CliError::Runtime(format!("{}: {e}", png_path.display())))?;
    }
    Ok(())
}

impl LineChart {
    /// Writes the chart as SVG to `path` (and PNG beside it with `png`).
    ///
    /// # Errors
    /// A runtime error naming the file.
    pub fn write(&self, path: &Path, png: bool) -> CliResult {
        save(path, png, |a| self.draw(a, path), |a| self.draw(a, path))
    }

    fn finite(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.series.iter().flat_map(|s| s.points.iter().copied()).filter(|&(x, y)| {
            x.is_finite() && y.is_finite() && (!self.log_y || y > 0.0) && (!self.log_x || x > 0.0)
        })
    }

    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>, path: &Path) -> CliResult {
        let err = draw_err(path);
        root.fill(&WHITE).map_err(&err)?;
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for (x, y) in self.finite() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 1.0, 2.0);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        if y1 <= y0 {
            y1 = y0 * 1.1 + 1e-12;
        }
        if !self.log_y {
            let pad = 0.05 * (y1 - y0);
            y0 -= pad;
            y1 += pad;
        }
        let mut b = ChartBuilder::on(&root);
        b.caption(&self.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70);
        macro_rules! body {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc(&self.x_label)
                    .y_desc(&self.y_label)
                    .draw()
                    .map_err(&err)?;
                for (i, s) in self.series.iter().enumerate() {
                    let color = Palette99::pick(i).to_rgba();
                    let pts: Vec<(f64, f64)> = s
                        .points
                        .iter()
                        .copied()
                        .filter(|&(x, y)| {
                            x.is_finite()
                                && y.is_finite()
                                && (!self.log_y || y > 0.0)
                                && (!self.log_x || x > 0.0)
                        })
                        .collect();
                    let style = ShapeStyle::from(&color).stroke_width(2);
                    let anno = if s.dashed {
                        chart
                            .draw_series(DashedLineSeries::new(pts.clone(), 6, 4, style))
                            .map_err(&err)?
                    } else {
                        chart.draw_series(LineSeries::new(pts.clone(), style)).map_err(&err)?
                    };
                    anno.label(s.label.clone()).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                    if !s.dashed {
                        chart
                            .draw_series(pts.iter().map(|&p| Circle::new(p, 2, color.filled())))
                            .map_err(&err)?;
                    }
                }
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .position(SeriesLabelPosition::UpperLeft)
                    .draw()
                    .map_err(&err)?;
            }};
        }
        match (self.log_x, self.log_y) {
            (false, false) => body!(b.build_cartesian_2d(x0..x1, y0..y1).map_err(&err)?),
            (false, true) => {
                body!(b.build_cartesian_2d(x0..x1, (y0..y1).log_scale()).map_err(&err)?)
            }
            (true, false) => {
                body!(b.build_cartesian_2d((x0..x1).log_scale(), y0..y1).map_err(&err)?)
            }
            (true, true) => body!(b
                .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
                .map_err(&err)?),
        }
        root.present().map_err(&err)?;
        Ok(())
    }
}

/// Viridis-like colour map on [0, 1].
pub fn colormap(t: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let x = t * 4.0;
    let i = (x.floor() as usize).min(3);
    let f = x - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let lerp = |p: f64, q: f64| (p + (q - p) * f).round() as u8;
    RGBColor(lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
}

impl Heatmap {
    /// Writes the heatmap as SVG to `path` (and PNG beside it with `png`).
    ///
    /// # Errors
    /// A runtime error naming the file, or a usage error for an empty grid.
    pub fn write(&self, path: &Path, png: bool) -> CliResult {
        if self.xs.is_empty() || self.ys.is_empty() {
            return Err(CliError::Usage(format!("{}: empty grid", path.display())));
        }
        save(path, png, |a| self.draw(a, path), |a| self.draw(a, path))
    }

    fn edges(v: &[f64]) -> Vec<f64> {
        let n = v.len();
        if n == 1 {
            return vec![v[0] - 0.5, v[0] + 0.5];
        }
        let mut e = Vec::with_capacity(n + 1);
        e.push(v[0] - 0.5 * (v[1] - v[0]));
        for i in 0..n - 1 {
            e.push(0.5 * (v[i] + v[i + 1]));
        }
        e.push(v[n - 1] + 0.5 * (v[n - 1] - v[n - 2]));
        e
    }

    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>, path: &Path) -> CliResult {
        let err = draw_err(path);
        root.fill(&WHITE).map_err(&err)?;
        let (main, bar) = root.split_horizontally(SIZE.0 - 110);
        let (ex, ey) = (Self::edges(&self.xs), Self::edges(&self.ys));
        let (zmin, zmax) = self.z_range.unwrap_or_else(|| {
            let it = self.z.iter().flatten().copied().filter(|v| v.is_finite());
            let (lo, hi) = it.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
            if lo > hi {
                (0.0, 1.0)
            } else {
                (lo, hi)
            }
        });
        let span = if zmax > zmin { zmax - zmin } else { 1.0 };
        let mut chart = ChartBuilder::on(&main)
            .caption(&self.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(ex[0]..ex[ex.len() - 1], ey[0]..ey[ey.len() - 1])
            .map_err(&err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .draw()
            .map_err(&err)?;
        for (iy, row) in self.z.iter().enumerate() {
            for (ix, &v) in row.iter().enumerate() {
                let color = if v.is_finite() {
                    colormap((v - zmin) / span).filled()
                } else {
                    RGBColor(200, 200, 200).filled()
                };
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(ex[ix], ey[iy]), (ex[ix + 1], ey[iy + 1])],
                        color,
                    )))
                    .map_err(&err)?;
            }
        }
        for (i, (label, pts)) in self.overlays.iter().enumerate() {
            let color = if i == 0 { RED.to_rgba() } else { Palette99::pick(i).to_rgba() };
            let inside: Vec<(f64, f64)> = pts
                .iter()
                .copied()
                .filter(|&(x, y)| {
                    x >= ex[0] && x <= ex[ex.len() - 1] && y >= ey[0] && y <= ey[ey.len() - 1]
                })
                .collect();
            chart
                .draw_series(DashedLineSeries::new(inside, 8, 5, color.stroke_width(3)))
                .map_err(&err)?
                .label(label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
                });
        }
        if !self.overlays.is_empty() {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(&err)?;
        }
        // Colour bar.
        let mut cb = ChartBuilder::on(&bar)
            .margin_top(50)
            .margin_bottom(50)
            .margin_right(10)
            .y_label_area_size(55)
            .caption(&self.z_label, ("sans-serif", 14))
            .build_cartesian_2d(0.0..1.0, zmin..zmin + span)
            .map_err(&err)?;
        cb.configure_mesh().disable_mesh().disable_x_axis().draw().map_err(&err)?;
        let steps = 64;
        cb.draw_series((0..steps).map(|i| {
            let a = zmin + span * i as f64 / steps as f64;
            let b = zmin + span * (i + 1) as f64 / steps as f64;
            Rectangle::new([(0.0, a), (1.0, b)], colormap((i as f64 + 0.5) / steps as f64).filled())
        }))
        .map_err(&err)?;
        root.present().map_err(&err)?;
        Ok(())
    }
}
