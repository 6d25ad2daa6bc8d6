//! `framesift synth`: export a labelled dataset from the synthetic scene source, in the
//! Ultralytics/YOLO layout, for training and evaluating detectors.
//!
//! ```text
//! OUT/images/000000.jpg        frames (JPEG q95)
//! OUT/labels/000000.txt        "class cx cy w h" normalised, known product types only
//! OUT/classes.txt              the known class names, one per line (label ids)
//! OUT/data.yaml                Ultralytics dataset file
//! OUT/objects.csv              every object, including never-seen product types
//! OUT/perturbations.csv        each frame's perturbation tags
//! ```
//! The same arguments give byte-identical output.

use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use crate::{
    capture::synthetic::{KNOWN_PRODUCTS, PRODUCT_NAMES, Split, SyntheticConfig, SyntheticSource},
    codec,
    frame::{GroundTruth, Perturbations},
};

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub out: PathBuf,
    pub frames: u64,
    pub split: Split,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub frames_per_scene: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0} already holds files; choose an empty or new directory")]
    NotEmpty(PathBuf),
    #[error("JPEG encode: {0}")]
    Encode(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |error| ExportError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// What an export wrote.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ExportStats {
    pub frames: u64,
    pub labelled_objects: u64,
    pub unseen_objects: u64,
    pub perturbed_frames: u64,
}

/// Write the dataset; `progress(done, total)` is called after every frame.
pub fn export(
    opts: &ExportOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<ExportStats, ExportError> {
    if opts.out.is_dir()
        && fs::read_dir(&opts.out)
            .map_err(io(&opts.out))?
            .next()
            .is_some()
    {
        return Err(ExportError::NotEmpty(opts.out.clone()));
    }
    let images = opts.out.join("images");
    let labels = opts.out.join("labels");
    fs::create_dir_all(&images).map_err(io(&images))?;
    fs::create_dir_all(&labels).map_err(io(&labels))?;

    let known = &PRODUCT_NAMES[..KNOWN_PRODUCTS];
    write(&opts.out.join("classes.txt"), known.join("\n") + "\n")?;
    let mut yaml = String::from(
        "# framesift synthetic dataset\npath: .\ntrain: images\nval: images\nnames:\n",
    );
    for (i, n) in known.iter().enumerate() {
        let _ = writeln!(yaml, "  {i}: {n}");
    }
    write(&opts.out.join("data.yaml"), yaml)?;

    let mut source = SyntheticSource::new(SyntheticConfig {
        width: opts.width,
        height: opts.height,
        fps: 0.0,
        seed: opts.seed,
        split: opts.split,
        frames_per_scene: opts.frames_per_scene,
        prerendered: 0,
    });
    let mut rgb = vec![0u8; opts.width as usize * opts.height as usize * 3];
    let mut truth = GroundTruth::default();
    let mut jpeg = Vec::new();
    let mut objects = String::from("image,class,class_id,known,x1,y1,x2,y2,occluded\n");
    let mut tags = String::from("image,");
    tags.push_str(
        &Perturbations::ALL
            .iter()
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(","),
    );
    tags.push('\n');
    let mut stats = ExportStats::default();
    let (w, h) = (opts.width as f32, opts.height as f32);

    for i in 0..opts.frames {
        source.render(i, &mut rgb, &mut truth);
        let stem = format!("{i:06}");
        codec::encode_jpeg(&rgb, opts.width, opts.height, 95, &mut jpeg)
            .map_err(|e| ExportError::Encode(e.to_string()))?;
        write(&images.join(format!("{stem}.jpg")), &jpeg)?;

        let mut label = String::new();
        for b in &truth.boxes {
            let id = b.class_id as usize;
            let name = PRODUCT_NAMES.get(id).copied().unwrap_or("unknown");
            let is_known = id < KNOWN_PRODUCTS;
            let _ = writeln!(
                objects,
                "{stem}.jpg,{name},{id},{},{:.1},{:.1},{:.1},{:.1},{}",
                u8::from(is_known),
                b.x1,
                b.y1,
                b.x2,
                b.y2,
                u8::from(b.occluded)
            );
            if is_known {
                stats.labelled_objects += 1;
                let _ = writeln!(
                    label,
                    "{id} {:.6} {:.6} {:.6} {:.6}",
                    (b.x1 + b.x2) / 2.0 / w,
                    (b.y1 + b.y2) / 2.0 / h,
                    (b.x2 - b.x1) / w,
                    (b.y2 - b.y1) / h
                );
            } else {
                stats.unseen_objects += 1;
            }
        }
        write(&labels.join(format!("{stem}.txt")), label)?;

        let _ = write!(tags, "{stem}.jpg");
        for (tag, _) in Perturbations::ALL {
            let _ = write!(tags, ",{}", u8::from(truth.perturbations.contains(tag)));
        }
        tags.push('\n');
        if !truth.perturbations.is_empty() {
            stats.perturbed_frames += 1;
        }
        stats.frames += 1;
        progress(i + 1, opts.frames);
    }
    write(&opts.out.join("objects.csv"), objects)?;
    write(&opts.out.join("perturbations.csv"), tags)?;
    Ok(stats)
}

fn write(path: &Path, bytes: impl AsRef<[u8]>) -> Result<(), ExportError> {
    let mut f = fs::File::create(path).map_err(io(path))?;
    f.write_all(bytes.as_ref()).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(out: PathBuf, split: Split, seed: u64) -> ExportOptions {
        ExportOptions {
            out,
            frames: 6,
            split,
            seed,
            width: 160,
            height: 96,
            frames_per_scene: 2,
        }
    }

    fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for sub in ["", "images", "labels"] {
            let d = dir.join(sub);
            for e in fs::read_dir(&d).expect("dir").flatten() {
                if e.path().is_file() {
                    out.push((
                        format!("{sub}/{}", e.file_name().to_string_lossy()),
                        fs::read(e.path()).expect("read"),
                    ));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn same_seed_gives_identical_files_and_labels_are_valid() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let a = export(&opts(tmp.path().join("a"), Split::Store, 3), |_, _| {}).expect("export a");
        export(&opts(tmp.path().join("b"), Split::Store, 3), |_, _| {}).expect("export b");
        export(&opts(tmp.path().join("c"), Split::Store, 4), |_, _| {}).expect("export c");
        let (ta, tb, tc) = (
            tree(&tmp.path().join("a")),
            tree(&tmp.path().join("b")),
            tree(&tmp.path().join("c")),
        );
        assert_eq!(
            ta.len(),
            4 + 12,
            "4 top-level files, 6 images, 6 label files"
        );
        assert_eq!(ta, tb, "byte-identical for the same seed");
        assert_ne!(ta, tc, "a different seed differs");
        assert_eq!(a.frames, 6);
        for (name, bytes) in ta.iter().filter(|(n, _)| n.starts_with("labels/")) {
            for line in String::from_utf8_lossy(bytes).lines() {
                let v: Vec<f32> = line
                    .split(' ')
                    .map(|x| x.parse().expect("number"))
                    .collect();
                assert_eq!(v.len(), 5, "{name}: {line}");
                assert!((v[0] as usize) < KNOWN_PRODUCTS);
                assert!(
                    v[1..].iter().all(|x| (0.0..=1.0).contains(x)),
                    "{name}: {line}"
                );
            }
        }
    }

    #[test]
    fn studio_has_no_perturbations_and_refuses_non_empty_dirs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = export(&opts(tmp.path().join("s"), Split::Studio, 1), |_, _| {}).expect("studio");
        assert_eq!((s.perturbed_frames, s.unseen_objects), (0, 0));
        let csv = fs::read_to_string(tmp.path().join("s/perturbations.csv")).expect("csv");
        assert_eq!(csv.lines().count(), 7);
        assert!(
            csv.lines().skip(1).all(|l| l.ends_with(",0,0,0,0,0,0")),
            "{csv}"
        );
        let again = export(&opts(tmp.path().join("s"), Split::Studio, 1), |_, _| {});
        assert!(matches!(again, Err(ExportError::NotEmpty(_))));
    }
}
