//! GTSRB (German Traffic Sign Recognition Benchmark), 43 classes.
//!
//! Two layouts are read:
//! - the official one: `Final_Training/Images/000cc/*.ppm` with `GT-000cc.csv` per class, and
//!   `Final_Test/Images/*.ppm` with `GT-final_test.csv`; every whole image (no ROI crop, as
//!   BackdoorBench does) is resized to `size`x`size` with a bilinear filter;
//! - 32x32 binary records in the CIFAR-10 layout (`train*.bin`, `test*.bin`), as in the bundled
//!   subset.

use super::{ImageSet, TrainTest, folder, records};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Number of GTSRB classes.
pub const NUM_CLASSES: usize = 43;

/// Reads GTSRB from `dir`, detecting the layout.
pub fn load_dir(dir: &Path, size: usize) -> Result<TrainTest> {
    if !dir.is_dir() {
        return Err(Error::NoData {
            path: dir.into(),
            reason: "not a directory; expected the official GTSRB layout (Final_Training/, Final_Test/) or 32x32 record files (train*.bin, test*.bin)".into(),
        });
    }
    let root = if dir.join("GTSRB").join("Final_Training").is_dir() {
        dir.join("GTSRB")
    } else {
        dir.to_path_buf()
    };
    let names = class_names(dir);
    if root.join("Final_Training").is_dir() {
        let train = load_official_train(&root.join("Final_Training").join("Images"), size, &names)?;
        let test = load_official_test(&root.join("Final_Test"), size, &names)?;
        return Ok(TrainTest {
            train,
            test,
            defender: None,
        });
    }
    if size != records::SIDE {
        return Err(Error::config(
            "image-size",
            format!("GTSRB record files are 32x32; got --image-size {size}"),
        ));
    }
    let (train_files, test_files) = records::split_bin_files(dir)?;
    Ok(TrainTest {
        train: records::read_files(&train_files, NUM_CLASSES, &names)?,
        test: records::read_files(&test_files, NUM_CLASSES, &names)?,
        defender: None,
    })
}

fn class_names(dir: &Path) -> Vec<String> {
    // `classes.txt` lines look like `0,Speed limit (20km/h)` or just the name.
    let parsed = std::fs::read_to_string(dir.join("classes.txt"))
        .ok()
        .map(|s| {
            s.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| match l.split_once(',') {
                    Some((id, name)) if id.trim().parse::<usize>().is_ok() => {
                        name.trim().to_string()
                    }
                    _ => l.trim().to_string(),
                })
                .collect::<Vec<_>>()
        });
    match parsed {
        Some(v) if v.len() == NUM_CLASSES => v,
        _ => (0..NUM_CLASSES).map(|c| format!("class {c}")).collect(),
    }
}

/// One row of a GTSRB ground-truth CSV: file name and class.
#[derive(Debug, Clone, PartialEq)]
pub struct GtRow {
    pub file: String,
    pub class_id: usize,
}

/// Parses a GTSRB ground-truth CSV (`Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId`).
pub fn parse_gt_csv(path: &Path, text: &str) -> Result<Vec<GtRow>> {
    let mut lines = text.lines().enumerate();
    let header = lines.next().map(|(_, h)| h).unwrap_or("");
    let cols: Vec<&str> = header.trim().split(';').collect();
    let file_col = cols.iter().position(|c| *c == "Filename");
    let class_col = cols.iter().position(|c| *c == "ClassId");
    let (Some(file_col), Some(class_col)) = (file_col, class_col) else {
        return Err(Error::BadFile {
            path: path.into(),
            reason: format!(
                "header `{header}` lacks the `Filename` and `ClassId` columns (`;`-separated)"
            ),
        });
    };
    let mut rows = Vec::new();
    for (i, line) in lines {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(';').collect();
        let bad = |reason: String| Error::BadRecord {
            path: path.into(),
            record: i,
            reason,
        };
        let file = fields
            .get(file_col)
            .ok_or_else(|| bad(format!("line `{line}` has no Filename field")))?;
        let class_id: usize = fields
            .get(class_col)
            .and_then(|c| c.trim().parse().ok())
            .ok_or_else(|| bad(format!("line `{line}` has no integer ClassId")))?;
        if class_id >= NUM_CLASSES {
            return Err(bad(format!("ClassId {class_id} out of range 0..42")));
        }
        rows.push(GtRow {
            file: file.trim().to_string(),
            class_id,
        });
    }
    Ok(rows)
}

fn read_gt(path: &Path) -> Result<Vec<GtRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_gt_csv(path, &text)
}

fn load_official_train(images: &Path, size: usize, names: &[String]) -> Result<ImageSet> {
    let mut items = Vec::new();
    for c in 0..NUM_CLASSES {
        let class_dir = images.join(format!("{c:05}"));
        let csv = class_dir.join(format!("GT-{c:05}.csv"));
        if !class_dir.is_dir() {
            return Err(Error::NoData {
                path: class_dir,
                reason: "missing GTSRB class directory".into(),
            });
        }
        for row in read_gt(&csv)? {
            if row.class_id != c {
                return Err(Error::BadFile {
                    path: csv.clone(),
                    reason: format!(
                        "row for `{}` has ClassId {} in class {c}'s file",
                        row.file, row.class_id
                    ),
                });
            }
            items.push((class_dir.join(&row.file), c));
        }
    }
    folder::decode_set(&items, size, names)
}

fn load_official_test(test_root: &Path, size: usize, names: &[String]) -> Result<ImageSet> {
    let images = test_root.join("Images");
    let candidates = [
        images.join("GT-final_test.csv"),
        test_root.join("GT-final_test.csv"),
        test_root
            .parent()
            .map(|p| p.join("GT-final_test.csv"))
            .unwrap_or_default(),
    ];
    let csv = candidates.iter().find(|p| p.is_file()).ok_or_else(|| Error::NoData {
        path: test_root.into(),
        reason: "GT-final_test.csv (the test labels, with a ClassId column) not found in Final_Test/Images, Final_Test or beside Final_Test".into(),
    })?;
    let items: Vec<(PathBuf, usize)> = read_gt(csv)?
        .into_iter()
        .map(|r| (images.join(&r.file), r.class_id))
        .collect();
    folder::decode_set(&items, size, names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gt_csv_parses_and_rejects_bad_rows() {
        let p = Path::new("GT-00001.csv");
        let ok = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n00000_00000.ppm;29;30;5;6;24;25;1\n";
        assert_eq!(
            parse_gt_csv(p, ok).expect("parse"),
            vec![GtRow {
                file: "00000_00000.ppm".into(),
                class_id: 1
            }]
        );
        let bad = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n00000_00000.ppm;29;30;5;6;24;25;77\n";
        let e = parse_gt_csv(p, bad).unwrap_err().to_string();
        assert!(
            e.contains("GT-00001.csv") && e.contains("record 1") && e.contains("77"),
            "{e}"
        );
        let e = parse_gt_csv(p, "a,b,c\n").unwrap_err().to_string();
        assert!(e.contains("ClassId"), "{e}");
    }

    #[test]
    fn official_layout_is_read_and_resized() {
        let dir = tempfile::tempdir().expect("tmp");
        let images = dir.path().join("GTSRB/Final_Training/Images");
        for c in 0..NUM_CLASSES {
            let d = images.join(format!("{c:05}"));
            std::fs::create_dir_all(&d).expect("mkdir");
            let mut csv =
                String::from("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n");
            if c < 2 {
                let img = image::RgbImage::from_pixel(45, 50, image::Rgb([c as u8 * 100, 7, 9]));
                img.save(d.join("00000_00000.ppm")).expect("save");
                csv.push_str(&format!("00000_00000.ppm;45;50;5;5;40;45;{c}\n"));
            }
            std::fs::write(d.join(format!("GT-{c:05}.csv")), csv).expect("csv");
        }
        let test = dir.path().join("GTSRB/Final_Test/Images");
        std::fs::create_dir_all(&test).expect("mkdir");
        image::RgbImage::from_pixel(20, 25, image::Rgb([1, 2, 3]))
            .save(test.join("00000.ppm"))
            .expect("save");
        std::fs::write(
            test.join("GT-final_test.csv"),
            "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n00000.ppm;20;25;1;1;19;24;16\n",
        )
        .expect("csv");
        let data = load_dir(dir.path(), 32).expect("load");
        assert_eq!(data.train.labels, vec![0, 1]);
        assert_eq!(data.test.labels, vec![16]);
        assert_eq!((data.train.height, data.train.width), (32, 32));
        assert_eq!(data.train.image(1)[0], 100);
        assert_eq!(data.test.image(0)[1024], 2);
        // The records layout refuses another size.
        let rec = tempfile::tempdir().expect("tmp");
        let err = load_dir(rec.path(), 48).unwrap_err().to_string();
        assert!(err.contains("image-size"), "{err}");
    }
}
