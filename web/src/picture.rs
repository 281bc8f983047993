//! Pictures for the page: planar `u8` images as PNG data URLs, and the magnified residual of a
//! trigger (the supplement's Figure 1).

use base64::Engine;

/// `|poisoned - clean| * factor` per pixel, clamped to 255.
pub fn residual(clean: &[u8], poisoned: &[u8], factor: f32) -> Vec<u8> {
    clean
        .iter()
        .zip(poisoned)
        .map(|(&c, &p)| ((c as f32 - p as f32).abs() * factor).round().min(255.0) as u8)
        .collect()
}

/// PNG bytes of a planar `[C, H, W]` image (1 or 3 channels), each pixel drawn as a
/// `scale` x `scale` block.
pub fn png(planar: &[u8], [c, h, w]: [usize; 3], scale: usize) -> Result<Vec<u8>, String> {
    if planar.len() != c * h * w || !(c == 1 || c == 3) || scale == 0 {
        return Err(format!(
            "cannot draw {} bytes as a {c}x{h}x{w} image at scale {scale}",
            planar.len()
        ));
    }
    let (sw, sh) = (w * scale, h * scale);
    let mut rgb = vec![0u8; sw * sh * 3];
    for y in 0..sh {
        for x in 0..sw {
            for k in 0..3 {
                let ch = if c == 1 { 0 } else { k };
                rgb[(y * sw + x) * 3 + k] = planar[ch * h * w + (y / scale) * w + x / scale];
            }
        }
    }
    let img = image::RgbImage::from_raw(sw as u32, sh as u32, rgb)
        .ok_or("image buffer has the wrong size")?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| format!("PNG encoding failed: {e}"))?;
    Ok(out.into_inner())
}

/// A `data:` URL for PNG bytes.
pub fn data_url(png: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residual_is_the_magnified_absolute_difference() {
        assert_eq!(
            residual(&[10, 200, 0], &[12, 100, 0], 10.0),
            vec![20, 255, 0]
        );
    }

    #[test]
    fn png_round_trips_through_a_decoder() {
        // 2x2 RGB image, planar: R plane, G plane, B plane.
        let planar = [255, 0, 0, 0, 0, 255, 0, 0, 0, 0, 255, 0];
        let bytes = png(&planar, [3, 2, 2], 2).unwrap();
        let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (4, 4));
        assert_eq!(img.get_pixel(0, 0).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(3, 0).0, [0, 255, 0]);
        assert_eq!(img.get_pixel(0, 3).0, [0, 0, 255]);
        assert_eq!(img.get_pixel(3, 3).0, [0, 0, 0]);
        assert!(data_url(&bytes).starts_with("data:image/png;base64,iVBOR"));
        assert!(png(&planar, [3, 2, 3], 1).is_err());
    }
}
