//! `cleanse tsne`: a t-SNE map of a model's penultimate features on clean and triggered test
//! images (the supplement's Figure 2). bhtsne computes the embedding, plotters draws it.

use crate::attack::load_suspect;
use crate::{DeviceArgs, describe_device};
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use clap::Args;
use cleanse_core::data::ImageSet;
use cleanse_core::engine::eval::images_tensor;
use cleanse_core::io::create_dir_all;
use cleanse_core::output::{check_output, write_output, write_output_json};
use cleanse_core::rng::Rng;
use plotters::prelude::*;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub(crate) struct TsneArgs {
    /// The model's run directory.
    #[arg(long)]
    model: PathBuf,
    /// The attack whose trigger is applied (default: the one saved with --model).
    #[arg(long)]
    attack: Option<PathBuf>,
    /// Clean test images per class.
    #[arg(long, default_value_t = 100)]
    per_class: usize,
    /// Triggered test images (drawn from the images the attack changes).
    #[arg(long, default_value_t = 500)]
    triggered: usize,
    #[arg(long, default_value_t = 30.0)]
    perplexity: f32,
    /// t-SNE iterations.
    #[arg(long, default_value_t = 1000)]
    iterations: usize,
    /// Barnes-Hut accuracy (0 < theta; smaller is more exact).
    #[arg(long, default_value_t = 0.5)]
    theta: f32,
    /// Side of the square image in pixels.
    #[arg(long, default_value_t = 900)]
    size: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    device: DeviceArgs,
    /// PNG to write; the points go beside it as JSON (same name, `.json`).
    #[arg(long)]
    out: PathBuf,
    /// Replace --out and its JSON if they exist.
    #[arg(long)]
    force: bool,
}

/// The largest `--size`: 8192 pixels square is 192 MiB of pixels, beyond any figure.
const MAX_SIZE: u32 = 8192;

#[derive(Serialize)]
struct Point {
    x: f32,
    y: f32,
    /// The image's true class.
    label: u16,
    /// The model's prediction.
    predicted: u16,
    triggered: bool,
}

#[derive(Serialize)]
struct TsneFile {
    model: PathBuf,
    attack: Option<PathBuf>,
    target: Option<usize>,
    all_to_all: bool,
    perplexity: f32,
    iterations: usize,
    theta: f32,
    seed: u64,
    class_names: Vec<String>,
    /// Fraction of the triggered points predicted as the attack's target.
    triggered_to_target: Option<f64>,
    points: Vec<Point>,
}

/// Up to `per_class` indices of each class, in a seeded random order.
fn pick_per_class(set: &ImageSet, per_class: usize, rng: &mut Rng) -> Vec<usize> {
    let mut order = rng.permutation(set.len());
    let mut taken = vec![0usize; set.num_classes];
    order.retain(|&i| {
        let c = set.labels[i] as usize;
        taken[c] += 1;
        taken[c] <= per_class
    });
    order.sort_unstable();
    order
}

/// Penultimate features and predictions of `set[indices]`, with `stamp` applied.
fn features(
    model: &cleanse_core::model::Classifier,
    set: &ImageSet,
    indices: &[usize],
    stamp: &dyn Fn(Tensor<4>) -> Tensor<4>,
    device: &Device,
) -> Result<(Vec<Vec<f32>>, Vec<u16>)> {
    let (c, h, w) = (set.channels, set.height, set.width);
    let mut feats = Vec::with_capacity(indices.len());
    let mut preds = Vec::with_capacity(indices.len());
    for chunk in indices.chunks(250) {
        let pixels: Vec<f32> = chunk
            .iter()
            .flat_map(|&i| set.image(i).iter().map(|&v| v as f32 / 255.0))
            .collect();
        let x = stamp(images_tensor(pixels, [chunk.len(), c, h, w], device));
        let f = model.features(x);
        let dim = f.penultimate.dims()[1];
        let p: Vec<f32> = f
            .penultimate
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading features: {e:?}"))?;
        feats.extend(p.chunks(dim).map(<[f32]>::to_vec));
        let pred: Vec<i64> = f
            .logits
            .argmax(1)
            .into_data()
            .try_to_vec_as::<i64>()
            .map_err(|e| anyhow::anyhow!("reading predictions: {e:?}"))?;
        preds.extend(pred.into_iter().map(|v| v as u16));
    }
    Ok((feats, preds))
}

pub(crate) fn run(args: &TsneArgs) -> Result<()> {
    if !(args.theta.is_finite() && args.theta > 0.0) {
        bail!("--theta: expected a value > 0, got {}", args.theta);
    }
    if args.out.extension().and_then(|e| e.to_str()) != Some("png") {
        bail!("--out {}: expected a .png file", args.out.display());
    }
    if !(64..=MAX_SIZE).contains(&args.size) {
        bail!(
            "--size: expected 64 to {MAX_SIZE} pixels; got {}",
            args.size
        );
    }
    if !(args.perplexity.is_finite() && args.perplexity > 0.0) {
        bail!(
            "--perplexity: expected a positive number; got {}",
            args.perplexity
        );
    }
    let json_out = args.out.with_extension("json");
    check_output(&args.out, "out", args.force)?;
    check_output(&json_out, "out", args.force)?;
    let selected = args.device.select()?;
    errln!("device: {}", describe_device(&selected));
    let device = selected.device.clone();
    let suspect = load_suspect(&args.model, args.attack.as_deref(), &device)?;
    let test = suspect.test.as_ref();
    let mut rng = Rng::from_parts(&[args.seed, 0x75e5]);
    let clean_idx = pick_per_class(test, args.per_class, &mut rng);
    let (mut feats, mut preds) = features(&suspect.model, test, &clean_idx, &|x| x, &device)?;
    let mut labels: Vec<u16> = clean_idx.iter().map(|&i| test.labels[i]).collect();
    let n_clean = feats.len();
    let mut triggered_to_target = None;
    if let (Some(a), Some(backdoor)) = (&suspect.attack, &suspect.backdoor) {
        let c = &a.config;
        let mut changed: Vec<usize> = (0..test.len())
            .filter(|&i| c.all_to_all || test.labels[i] as usize != c.target)
            .collect();
        rng.shuffle(&mut changed);
        changed.truncate(args.triggered);
        changed.sort_unstable();
        let (f, p) = features(
            &suspect.model,
            test,
            &changed,
            &|x| backdoor.apply(x),
            &device,
        )?;
        let hits = changed
            .iter()
            .zip(&p)
            .filter(|&(&i, &pred)| {
                pred as usize == c.target_of(test.labels[i] as usize, test.num_classes)
            })
            .count();
        triggered_to_target = Some(hits as f64 / changed.len().max(1) as f64);
        feats.extend(f);
        preds.extend(p);
        labels.extend(changed.iter().map(|&i| test.labels[i]));
    }
    let n = feats.len();
    if n < 3 * args.perplexity as usize + 2 {
        bail!(
            "{n} points are too few for perplexity {} (need more than 3 x perplexity)",
            args.perplexity
        );
    }
    errln!(
        "t-SNE of {n} points ({n_clean} clean, {} triggered), {} dimensions",
        n - n_clean,
        feats[0].len()
    );
    // A seeded initial embedding makes the map reproducible.
    let init: Vec<f32> = (0..2 * n).map(|_| (rng.next_f32() - 0.5) * 1e-3).collect();
    let mut tsne: bhtsne::tSNE<f32, Vec<f32>> = bhtsne::tSNE::new(&feats);
    tsne.embedding_dim(2)
        .perplexity(args.perplexity)
        .epochs(args.iterations)
        .initial_embedding(init)
        .barnes_hut(args.theta, |a, b| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y) * (x - y))
                .sum::<f32>()
                .sqrt()
        });
    let y = tsne.embedding();
    let points: Vec<Point> = (0..n)
        .map(|i| Point {
            x: y[2 * i],
            y: y[2 * i + 1],
            label: labels[i],
            predicted: preds[i],
            triggered: i >= n_clean,
        })
        .collect();
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    let title = format!(
        "{} ({}): o clean, x triggered{}",
        args.model.display(),
        suspect
            .attack
            .as_ref()
            .map(|a| a.config.kind.name())
            .unwrap_or("no attack"),
        match (&suspect.attack, triggered_to_target) {
            (Some(a), Some(r)) if !a.config.all_to_all => format!(
                ", target {}, {:.0}% of x to target",
                a.config.target,
                100.0 * r
            ),
            (Some(_), Some(r)) => format!(", all-to-all, {:.0}% of x to target", 100.0 * r),
            _ => String::new(),
        }
    );
    let png = draw(args.size, &points, test.num_classes, &title)?;
    write_output(&args.out, &png, "out", args.force)?;
    write_output_json(
        &json_out,
        &TsneFile {
            model: args.model.clone(),
            attack: suspect.attack_dir.clone(),
            target: suspect.attack.as_ref().map(|a| a.config.target),
            all_to_all: suspect.attack.as_ref().is_some_and(|a| a.config.all_to_all),
            perplexity: args.perplexity,
            iterations: args.iterations,
            theta: args.theta,
            seed: args.seed,
            class_names: test.class_names.clone(),
            triggered_to_target,
            points,
        },
        "out",
        args.force,
    )?;
    errln!("wrote {}", args.out.display());
    Ok(())
}

/// Distinct colours: a fixed palette for up to 10 classes, evenly spaced hues beyond.
fn class_colour(c: usize, k: usize) -> RGBColor {
    const TEN: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    if k <= 10 {
        let (r, g, b) = TEN[c];
        RGBColor(r, g, b)
    } else {
        let HSLColor(h, s, l) = HSLColor(c as f64 / k as f64, 0.7, 0.45);
        let rgb = HSLColor(h, s, l).to_rgba();
        RGBColor(rgb.0, rgb.1, rgb.2)
    }
}

/// Registers a system sans-serif font for the caption, if one is installed; without it the
/// map is drawn without text.
fn register_font() -> bool {
    const CANDIDATES: [&str; 3] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ];
    for p in CANDIDATES {
        if let Ok(bytes) = std::fs::read(p) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

/// The map as PNG bytes.
fn draw(size: u32, points: &[Point], k: usize, title: &str) -> Result<Vec<u8>> {
    let (w, h) = (size as usize, size as usize);
    let mut buf = vec![0u8; w * h * 3];
    let with_text = register_font();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (size, size)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let (x0, x1) = bounds(points.iter().map(|p| p.x));
        let (y0, y1) = bounds(points.iter().map(|p| p.y));
        let mut builder = ChartBuilder::on(&root);
        builder.margin(12);
        if with_text {
            builder.caption(title, ("sans-serif", 16));
        }
        let mut chart = builder
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .draw_series(points.iter().filter(|p| !p.triggered).map(|p| {
                Circle::new(
                    (p.x, p.y),
                    3,
                    class_colour(p.label as usize, k).mix(0.8).filled(),
                )
            }))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .draw_series(points.iter().filter(|p| p.triggered).map(|p| {
                Cross::new(
                    (p.x, p.y),
                    4,
                    class_colour(p.label as usize, k).stroke_width(2),
                )
            }))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let img = image::RgbImage::from_raw(size, size, buf).context("image buffer")?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .context("encoding the PNG")?;
    Ok(png)
}

/// The range of `v` with a 3% margin.
fn bounds(v: impl Iterator<Item = f32>) -> (f32, f32) {
    let (lo, hi) = v.fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let pad = ((hi - lo) * 0.03).max(1e-3);
    (lo - pad, hi + pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_per_class_caps_each_class() {
        let set = ImageSet {
            pixels: vec![0; 30 * 3],
            labels: (0..30).map(|i| (i % 3) as u16).collect(),
            channels: 3,
            height: 1,
            width: 1,
            num_classes: 3,
            class_names: vec!["a".into(), "b".into(), "c".into()],
        };
        let picked = pick_per_class(&set, 4, &mut Rng::new(1));
        assert_eq!(picked.len(), 12);
        for c in 0..3 {
            assert_eq!(picked.iter().filter(|&&i| set.labels[i] == c).count(), 4);
        }
        assert!(picked.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn bounds_pad_the_range() {
        let (lo, hi) = bounds([1.0f32, 3.0, 2.0].into_iter());
        assert!(lo < 1.0 && hi > 3.0);
    }
}
