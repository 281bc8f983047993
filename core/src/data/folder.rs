//! Image folders (ImageNet-10 style): `train/<class>/*.png|jpg|ppm` and `val/<class>/...`
//! (or `test/<class>/...`); classes are the sub-folder names in sorted order, and every image is
//! resized to `size`x`size` with a bilinear filter.

use super::{ImageSet, TrainTest};
use crate::{Error, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

const EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "ppm", "pnm", "JPEG"];

/// Decodes an image file to planar RGB bytes at `size`x`size`.
pub fn decode_resized(path: &Path, size: usize) -> Result<Vec<u8>> {
    let img = image::open(path).map_err(|e| Error::Decode {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let rgb = img
        .resize_exact(
            size as u32,
            size as u32,
            image::imageops::FilterType::Triangle,
        )
        .to_rgb8();
    let plane = size * size;
    let mut out = vec![0u8; 3 * plane];
    for (i, px) in rgb.pixels().enumerate() {
        out[i] = px[0];
        out[plane + i] = px[1];
        out[2 * plane + i] = px[2];
    }
    Ok(out)
}

fn class_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut classes = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        if e.path().is_dir() {
            classes.push((e.file_name().to_string_lossy().into_owned(), e.path()));
        }
    }
    classes.sort();
    Ok(classes)
}

fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        let ext = p.extension().and_then(|x| x.to_str()).unwrap_or("");
        if p.is_file() && EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(ext)) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads one split directory whose sub-folders are the classes in `classes`.
fn read_split(dir: &Path, classes: &[String], size: usize) -> Result<ImageSet> {
    let mut items = Vec::new();
    for (c, name) in classes.iter().enumerate() {
        let cdir = dir.join(name);
        if !cdir.is_dir() {
            return Err(Error::NoData {
                path: cdir,
                reason: format!("class folder missing (the training split has class `{name}`)"),
            });
        }
        let files = list_images(&cdir)?;
        if files.is_empty() {
            return Err(Error::NoData {
                path: cdir,
                reason: format!(
                    "class folder `{name}` holds no PNG, JPEG or PPM image (a class of 0 images \
                     would silently change the data set; remove the folder or add images)"
                ),
            });
        }
        items.extend(files.into_iter().map(|f| (f, c)));
    }
    if let Some((extra, path)) = class_dirs(dir)?
        .into_iter()
        .find(|(n, _)| !classes.contains(n))
    {
        return Err(Error::NoData {
            path,
            reason: format!(
                "class folder `{extra}` is not a class of the training split (its images would be \
                 dropped)"
            ),
        });
    }
    decode_set(&items, size, classes)
}

/// Reads a folder of labelled images whose sub-folders are named by class index (`DIR/0/*.png`,
/// `DIR/7/*.png`, ...; classes without images may be absent), at `size`x`size`, for a model of
/// `num_classes` classes: how already-triggered test images come with the labels an attack wants.
pub fn load_indexed(dir: &Path, size: usize, num_classes: usize) -> Result<ImageSet> {
    super::check_side("image-size", size)?;
    let mut items = Vec::new();
    for (name, path) in class_dirs(dir)? {
        let class = name
            .parse::<usize>()
            .ok()
            .filter(|c| *c < num_classes)
            .ok_or_else(|| Error::NoData {
                path: path.clone(),
                reason: format!(
                    "class folders must be named by class index 0..{}; got `{name}`",
                    num_classes.saturating_sub(1)
                ),
            })?;
        items.extend(list_images(&path)?.into_iter().map(|f| (f, class)));
    }
    if items.is_empty() {
        return Err(Error::NoData {
            path: dir.into(),
            reason:
                "no PNG, JPEG or PPM image in a class-index folder (expected DIR/<class>/*.png)"
                    .into(),
        });
    }
    let names: Vec<String> = (0..num_classes).map(|c| c.to_string()).collect();
    decode_set(&items, size, &names)
}

/// Decodes `(file, class)` pairs in parallel into one set at `size`x`size`.
///
/// The set keeps every image as bytes at `size` (3 per pixel: ImageNet-10's 13,500 images at
/// 224x224 are 2.0 GB; floats are made per batch only), each decoded straight into its place.
/// A set larger than the memory this process can get is refused before anything is decoded.
pub fn decode_set(
    items: &[(PathBuf, usize)],
    size: usize,
    class_names: &[String],
) -> Result<ImageSet> {
    let per_image = 3 * size * size;
    let bytes = items.len().saturating_mul(per_image) as u64;
    if let Some(limit) = crate::memory::Limit::now()
        && bytes > limit.bytes
    {
        let dir = items
            .first()
            .and_then(|(p, _)| p.parent().and_then(Path::parent))
            .unwrap_or(Path::new("."));
        return Err(Error::config(
            "image-size",
            format!(
                "{}: {} images at {size}x{size} are {} as bytes and this process can get {} ({}); \
                 lower --image-size or read fewer images",
                dir.display(),
                items.len(),
                crate::memory::gib(bytes),
                crate::memory::gib(limit.bytes),
                limit.source
            ),
        ));
    }
    let mut pixels = vec![0u8; items.len() * per_image];
    pixels
        .par_chunks_mut(per_image.max(1))
        .zip(items.par_iter())
        .try_for_each(|(out, (p, _))| {
            out.copy_from_slice(&decode_resized(p, size)?);
            Ok::<(), Error>(())
        })?;
    Ok(ImageSet {
        pixels,
        labels: items.iter().map(|(_, c)| *c as u16).collect(),
        channels: 3,
        height: size,
        width: size,
        num_classes: class_names.len(),
        class_names: class_names.to_vec(),
    })
}

/// Reads `dir/train` and `dir/val` (or `dir/test`).
pub fn load_dir(dir: &Path, size: usize) -> Result<TrainTest> {
    super::check_side("image-size", size)?;
    let train_dir = dir.join("train");
    let test_dir = ["val", "test"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_dir());
    let (true, Some(test_dir)) = (train_dir.is_dir(), test_dir) else {
        return Err(Error::NoData {
            path: dir.into(),
            reason: "expected sub-folders `train/` and `val/` (or `test/`), each with one folder per class".into(),
        });
    };
    let classes: Vec<String> = class_dirs(&train_dir)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    if classes.len() < 2 {
        return Err(Error::NoData {
            path: train_dir,
            reason: format!("found {} class folders; need at least 2", classes.len()),
        });
    }
    if classes.len() > crate::model::MAX_CLASSES {
        return Err(Error::NoData {
            path: train_dir,
            reason: format!(
                "{} class folders; at most {} classes",
                classes.len(),
                crate::model::MAX_CLASSES
            ),
        });
    }
    Ok(TrainTest {
        train: read_split(&train_dir, &classes, size)?,
        test: read_split(&test_dir, &classes, size)?,
        defender: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_image(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
        img.save(path).expect("save image");
    }

    #[test]
    fn reads_classes_resizes_and_keeps_colour_planes() {
        let dir = tempfile::tempdir().expect("tmp");
        for split in ["train", "val"] {
            for (name, rgb) in [("cat", [200u8, 10, 10]), ("dog", [10u8, 10, 200])] {
                let d = dir.path().join(split).join(name);
                std::fs::create_dir_all(&d).expect("mkdir");
                write_image(&d.join("a.png"), 40, 30, rgb);
                write_image(&d.join("b.ppm"), 8, 8, rgb);
            }
        }
        std::fs::write(dir.path().join("train/cat/notes.txt"), "ignored").expect("write");
        let data = load_dir(dir.path(), 16).expect("load");
        assert_eq!(data.train.len(), 4);
        assert_eq!(data.train.class_names, vec!["cat", "dog"]);
        assert_eq!(data.train.labels, vec![0, 0, 1, 1]);
        assert_eq!((data.test.height, data.test.width), (16, 16));
        let img = data.train.image(0);
        assert_eq!(
            (img[0], img[256], img[512]),
            (200, 10, 10),
            "planar R, G, B"
        );
        let img = data.train.image(3);
        assert_eq!((img[0], img[256], img[512]), (10, 10, 200));
    }

    #[test]
    fn layout_and_decode_errors_name_the_path() {
        let dir = tempfile::tempdir().expect("tmp");
        let err = load_dir(dir.path(), 32).unwrap_err().to_string();
        assert!(
            err.contains("train/") && err.contains(&dir.path().display().to_string()),
            "{err}"
        );
        for split in ["train", "test"] {
            for class in ["a", "b"] {
                let d = dir.path().join(split).join(class);
                std::fs::create_dir_all(&d).expect("mkdir");
                write_image(&d.join("ok.png"), 4, 4, [1, 2, 3]);
            }
        }
        std::fs::write(dir.path().join("train/a/broken.png"), b"not a png").expect("write");
        let err = load_dir(dir.path(), 32).unwrap_err().to_string();
        assert!(
            err.contains("broken.png") && err.contains("cannot decode"),
            "{err}"
        );
    }

    #[test]
    fn empty_or_unmatched_class_folders_are_errors_naming_the_folder() {
        let dir = tempfile::tempdir().expect("tmp");
        for split in ["train", "val"] {
            for name in ["a", "b"] {
                let d = dir.path().join(split).join(name);
                std::fs::create_dir_all(&d).expect("mkdir");
                write_image(&d.join("x.png"), 4, 4, [1, 2, 3]);
            }
        }
        assert!(load_dir(dir.path(), 8).is_ok());
        let extra = dir.path().join("val/c");
        std::fs::create_dir_all(&extra).expect("mkdir");
        write_image(&extra.join("x.png"), 4, 4, [1, 2, 3]);
        let err = load_dir(dir.path(), 8).unwrap_err().to_string();
        assert!(
            err.contains(&extra.display().to_string()) && err.contains("not a class"),
            "{err}"
        );
        std::fs::remove_dir_all(&extra).expect("rm");
        let empty = dir.path().join("train/b");
        std::fs::remove_file(empty.join("x.png")).expect("rm");
        let err = load_dir(dir.path(), 8).unwrap_err().to_string();
        assert!(
            err.contains(&empty.display().to_string()) && err.contains("no PNG"),
            "{err}"
        );
    }
}
