//! `cleanse triggers`: one clean image and its poisoned versions under all six attacks, with the
//! magnified residuals (the supplement's Figure 1).

use crate::{DatasetArg, DeviceArgs, describe_device};
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use clap::Args;
use cleanse_core::attack::iab::IabNets;
use cleanse_core::attack::lc::{Pgd, pgd_untargeted};
use cleanse_core::attack::{Attack, AttackConfig, AttackKind, Backdoor};
use cleanse_core::data::{DataSpec, DatasetKind, ImageSet};
use cleanse_core::defend::suspect::load_attack;
use cleanse_core::engine::run_files::load_run_model;
use cleanse_core::output::{check_output, write_output};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub(crate) struct TriggersArgs {
    #[arg(long, value_enum)]
    dataset: DatasetArg,
    #[arg(long)]
    data: Option<PathBuf>,
    /// Test image to show.
    #[arg(long, default_value_t = 0)]
    index: usize,
    /// Residuals are |x' - x| times this.
    #[arg(long, default_value_t = 5.0)]
    magnify: f32,
    /// Each pixel becomes a square of this side.
    #[arg(long, default_value_t = 4)]
    scale: u32,
    /// A trained IAB attack (run directory) for its generator; without it, freshly initialised
    /// networks show the kind of pattern only.
    #[arg(long)]
    iab: Option<PathBuf>,
    /// A clean model for LC's adversarial perturbation; without it, LC shows the trigger only.
    #[arg(long)]
    clean_model: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
    /// PNG file to write.
    #[arg(long)]
    out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

/// The largest `--scale`: a 32x32 gallery at 64 is already a 15,000-pixel-wide picture.
const MAX_SCALE: u32 = 64;

pub(crate) fn run(args: &TriggersArgs) -> Result<()> {
    if !(1..=MAX_SCALE).contains(&args.scale) {
        bail!("--scale: expected 1 to {MAX_SCALE}; got {}", args.scale);
    }
    if !(args.magnify.is_finite() && args.magnify > 0.0) {
        bail!(
            "--magnify: expected a positive number; got {}",
            args.magnify
        );
    }
    check_output(&args.out, "out", args.force)?;
    let selected = args.device.select()?;
    errln!("device: {}", describe_device(&selected));
    let device = selected.device.clone();
    let kind = DatasetKind::from(args.dataset);
    let data = DataSpec::new(kind, args.data.clone()).load()?;
    let test = data.test;
    if args.index >= test.len() {
        bail!(
            "--index {}: the test set has {} images",
            args.index,
            test.len()
        );
    }
    let one = test.subset(&[args.index]);
    let [c, h, w] = [one.channels, one.height, one.width];
    let clean: Vec<f32> = one.pixels.iter().map(|&v| v as f32 / 255.0).collect();
    let x = || Tensor::<4>::from_data(TensorData::new(clean.clone(), [1, c, h, w]), &device);
    let mut panels: Vec<(&str, Vec<f32>)> = Vec::new();
    for attack_kind in AttackKind::ALL {
        let config = AttackConfig::supplement(attack_kind, kind);
        let attack = Attack::new(config.clone(), &test)?;
        let poisoned = match attack_kind {
            AttackKind::Iab => {
                let backdoor = match &args.iab {
                    Some(dir) => match load_attack(dir.as_path(), &device)
                        .with_context(|| format!("--iab {}", dir.display()))?
                    {
                        Some((a, b)) if a.config.kind == AttackKind::Iab => b,
                        _ => bail!("--iab {}: not an IAB attack's run directory", dir.display()),
                    },
                    None => Backdoor::Iab(Box::new(
                        IabNets::new(c, config.iab_width, 0, &device).valid(),
                    )),
                };
                backdoor.apply(x())
            }
            AttackKind::Lc => {
                let base = match &args.clean_model {
                    Some(dir) => {
                        let model = load_run_model(dir, &device)
                            .with_context(|| format!("--clean-model {}", dir.display()))?
                            .model;
                        let adv = pgd_untargeted(
                            &model,
                            &one,
                            &Pgd {
                                eps: config.lc_eps,
                                step: config.lc_step,
                                steps: config.lc_steps,
                                batch_size: 1,
                            },
                            &device,
                        );
                        adv.iter().map(|&v| v as f32 / 255.0).collect()
                    }
                    None => clean.clone(),
                };
                let t = attack.trigger.as_ref().context("LC trigger")?;
                t.apply(Tensor::from_data(
                    TensorData::new(base, [1, c, h, w]),
                    &device,
                ))
            }
            _ => attack.trigger.as_ref().context("trigger")?.apply(x()),
        };
        let v: Vec<f32> = poisoned
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        panels.push((attack_kind.name(), v));
    }
    let img = compose(&one, &clean, &panels, args.magnify, args.scale);
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("{}", parent.display()))?;
    }
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .context("encoding the PNG")?;
    write_output(&args.out, &png, "out", args.force)?;
    outln!(
        "wrote {} (top: clean, then {}; bottom: residuals x{})",
        args.out.display(),
        panels.iter().map(|p| p.0).collect::<Vec<_>>().join(", "),
        args.magnify
    );
    Ok(())
}

/// Two rows: the clean image then each poisoned one; below each poisoned image its residual.
fn compose(
    one: &ImageSet,
    clean: &[f32],
    panels: &[(&str, Vec<f32>)],
    magnify: f32,
    scale: u32,
) -> image::RgbImage {
    let (c, h, w) = (one.channels, one.height as u32, one.width as u32);
    let gap = 2 * scale;
    let cols = panels.len() as u32 + 1;
    let width = cols * w * scale + (cols + 1) * gap;
    let height = 2 * h * scale + 3 * gap;
    let mut img = image::RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    let mut draw = |col: u32, row: u32, v: &dyn Fn(usize, usize) -> [f32; 3]| {
        let x0 = gap + col * (w * scale + gap);
        let y0 = gap + row * (h * scale + gap);
        for i in 0..h {
            for j in 0..w {
                let rgb = v(i as usize, j as usize);
                let px = image::Rgb(rgb.map(|q| (q.clamp(0.0, 1.0) * 255.0).round() as u8));
                for dy in 0..scale {
                    for dx in 0..scale {
                        img.put_pixel(x0 + j * scale + dx, y0 + i * scale + dy, px);
                    }
                }
            }
        }
    };
    let plane = (h * w) as usize;
    let at =
        |v: &[f32], ch: usize, i: usize, j: usize| v[ch.min(c - 1) * plane + i * w as usize + j];
    draw(0, 0, &|i, j| [0, 1, 2].map(|ch| at(clean, ch, i, j)));
    for (k, (_, p)) in panels.iter().enumerate() {
        let col = k as u32 + 1;
        draw(col, 0, &|i, j| [0, 1, 2].map(|ch| at(p, ch, i, j)));
        draw(col, 1, &|i, j| {
            [0, 1, 2].map(|ch| (at(p, ch, i, j) - at(clean, ch, i, j)).abs() * magnify)
        });
    }
    img
}
